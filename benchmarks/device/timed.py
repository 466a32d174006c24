"Run `run.py ARGS` in this process and print wall time, peak RSS and peak CUDA memory (the device has no /usr/bin/time -v)"
import os, resource, runpy, sys, time, atexit
t0 = time.time()
def _report():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = ''
    try:
        import torch
        if torch.cuda.is_available(): cuda = f', peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB'
    except Exception: pass
    print(f"[timed] {' '.join(sys.argv[1:])}: wall {time.time() - t0:.1f} s, peak RSS {rss:.0f} MiB{cuda}", flush=True)
atexit.register(_report)
sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'run.py')] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
