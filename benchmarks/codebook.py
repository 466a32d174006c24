"""Speed of cmrl's shared codebook against vector-quantize-pytorch and against one float32 matmul.

Training step = forward + backward + EMA update, one modality, N random vectors of dim 256, K = 1024 codes.
Repetitions are interleaved (cmrl, vq-pytorch, matmul, cmrl, ...) so machine noise hits all three alike.
The summary ratios use the minimum over repetitions (the least disturbed run; on a shared machine the longer
candidates catch more interference, which biases ratios of medians); medians are printed too. Also times the
inference path (eval, no grad) and reports peak memory (CUDA: allocator peak; CPU: growth of the resident set
over 3 steps in a fresh subprocess). cmrl runs with `probs=False` (vq-pytorch computes no code distributions either).
The last line printed is the summary:

    codebook: ratio vq-pytorch/cmrl = X, ratio cmrl/matmul = Y

Run: python benchmarks/codebook.py [--n 16384] [--reps 15] [--threads 2] [--device cpu]
"""
from __future__ import annotations
import argparse, json, os, resource, statistics, subprocess, sys, time, warnings
import torch

D, K = 256, 1024


def make(name: str, n: int, device: str):
    "A step function for `name` (train/infer/matmul) on fresh random inputs"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g).to(device)
    if name.startswith('cmrl'):
        from cmrl.codebook import SharedCodebook
        cb = SharedCodebook(K, D, beta=0.25, decay=0.99, init='data', probs=False).to(device)
        if name == 'cmrl':
            cb.train()
            z = x.clone().requires_grad_()
            def step():
                out = cb(z)
                (out.quantized.sum() + out.loss).backward()
                z.grad = None
        else:
            cb(x)  # initialise, then inference
            cb.eval()
            def step():
                with torch.no_grad(): cb(x)
        return step
    if name.startswith('vq'):
        from vector_quantize_pytorch import VectorQuantize
        vq = VectorQuantize(dim=D, codebook_size=K, decay=0.99, commitment_weight=0.25, rotation_trick=False).to(device)
        xb = x[None]
        if name == 'vq':
            vq.train()
            z = xb.clone().requires_grad_()
            def step():
                q, _, loss = vq(z)
                (q.sum() + loss.sum()).backward()
                z.grad = None
        else:
            vq(xb)
            vq.eval()
            def step():
                with torch.no_grad(): vq(xb)
        return step
    if name == 'matmul':
        e = torch.randn(K, D, generator=g).to(device)
        def step():
            with torch.no_grad(): torch.mm(x, e.t())
        return step
    raise ValueError(name)


def sync(device):
    if device.startswith('cuda'): torch.cuda.synchronize()


def peak_memory(name: str, n: int, device: str, threads: int) -> float:
    "Peak extra memory (MiB) of a few steps of `name`, measured in a fresh process"
    if device.startswith('cuda'):
        step = make(name, n, device); step(); sync(device)
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
        for _ in range(3): step()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': '131072'}  # glibc: big blocks always mmapped, so freed memory leaves the RSS
    r = subprocess.run([sys.executable, __file__, '--child', name, '--n', str(n), '--threads', str(threads)],
                       capture_output=True, text=True, check=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])['mib']


def _status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ':'))


def child(name: str, n: int):
    step = make(name, n, 'cpu')  # inputs and modules are allocated before the baseline
    step()  # lazy allocations, initialisation
    try:  # reset the resident-set high-water mark (Linux), so the imports' peak does not hide the steps'
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        base = _status_kib('VmRSS')
        for _ in range(3): step()
        peak = _status_kib('VmHWM')
    except OSError:  # no /proc: the process-lifetime maximum (may hide the steps' peak under the imports')
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(3): step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'mib': (peak - base) / 1024}))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=16384, help='vectors per step')
    p.add_argument('--reps', type=int, default=15, help='interleaved repetitions')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps per candidate')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--device', default='cpu')
    p.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    warnings.filterwarnings('ignore', category=FutureWarning)
    if a.child: return child(a.child, a.n)
    names = ['cmrl', 'vq', 'matmul', 'cmrl_infer', 'vq_infer']
    steps = {k: make(k, a.n, a.device) for k in names}
    for k, f in steps.items():
        for _ in range(a.warmup): f()
    times = {k: [] for k in names}
    for _ in range(a.reps):
        for k, f in steps.items():
            sync(a.device); t0 = time.perf_counter(); f(); sync(a.device)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device {a.device}, threads {a.threads}, N={a.n}, D={D}, K={K}, {a.reps} interleaved repetitions (median / min ms)")
    labels = {'cmrl': 'cmrl train step', 'vq': 'vq-pytorch train step', 'matmul': f'matmul {a.n}x{D}x{K}',
              'cmrl_infer': 'cmrl inference', 'vq_infer': 'vq-pytorch inference'}
    for k in names: print(f"  {labels[k]:24s} {med[k] * 1e3:8.1f} / {min(times[k]) * 1e3:8.1f}")
    best = {k: min(v) for k, v in times.items()}
    print(f"  medians: train ratio vq-pytorch/cmrl = {med['vq'] / med['cmrl']:.2f}, cmrl/matmul = {med['cmrl'] / med['matmul']:.2f}")
    print(f"  inference (min): ratio vq-pytorch/cmrl = {best['vq_infer'] / best['cmrl_infer']:.2f}, cmrl/matmul = {best['cmrl_infer'] / best['matmul']:.2f}")
    if not a.no_memory:
        for k in ('cmrl', 'vq', 'cmrl_infer', 'vq_infer'):
            print(f"  peak memory {labels[k]:24s} {peak_memory(k, a.n, a.device, a.threads):8.1f} MiB")
    print(f"codebook: ratio vq-pytorch/cmrl = {best['vq'] / best['cmrl']:.2f}, ratio cmrl/matmul = {best['cmrl'] / best['matmul']:.2f}")


if __name__ == '__main__':
    main()
