"""What bounds training throughput in `benchmarks/scale.py` (issue 30): floating-point work per item against what one
core can do.

On a planted store (the same generator as `scale.py`), `cmrl train --data STORE --bs 256` (every other setting at its
default, 1 thread) runs a few batches. For one training step (forward, backward, optimiser) `torch.utils.flop_counter`
counts the floating-point operations of the matrix products and convolutions, per item; the steps after it are timed
in this thread's CPU seconds (other processes on the machine do not inflate them). Beside it, the same core's rate on a
dense float32 matrix product of the shapes the model multiplies (`[B*T, d] @ [d, 4d]`, best of several repeats) is the
most a step made of such products could reach. The ceiling on items/s per core is that rate divided by the counted
operations per item: no implementation of this model, at these settings, trains faster than it on this core.

    python benchmarks/scale_ceiling.py [--n 20000] [--work /tmp/ceiling]   # writes benchmarks/scale_ceiling.json
"""
import argparse, json, os, shutil, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
if __package__: from . import scale  # python -m benchmarks.NAME
else: import scale  # python benchmarks/NAME.py (its folder is on the path): the planted generator and packer (one home)

GOAL = 2000  # items/s per core (issue 30)


def matmul_gflops(m: int, k: int, n: int, reps: int = 20) -> float:
    "Best float32 GFLOP/s of `[m, k] @ [k, n]` on this thread (CPU seconds of the thread)"
    import torch
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3): a @ b
    best = float('inf')
    for _ in range(reps):
        t = time.thread_time(); a @ b; best = min(best, time.thread_time() - t)
    return 2 * m * k * n / best / 1e9


def step_profile(store: Path, out: Path, count_at: int = 3, timed: int = 20, profiled: int = 3, **kw) -> dict:
    "FLOPs of one training step (batch `count_at`), CPU seconds per step of the `timed` steps after it, and the share "
    "of the self CPU time of the `profiled` steps after those that each of the 12 costliest operators takes"
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from fastai.callback.core import Callback, CancelFitException
    from cmrl.train import train
    torch.set_num_threads(1)
    class Probe(Callback):
        order = -1000
        def before_fit(self): self.t, self.flops = [], None
        def before_batch(self):
            if not self.training: return
            if self.iter == count_at:
                self.fc = FlopCounterMode(display=False); self.fc.__enter__()
            self.t0 = time.thread_time()
        def after_batch(self):
            if not self.training: return
            if self.iter == count_at:
                self.fc.__exit__(None, None, None); self.flops = self.fc.get_total_flops()
                self.by_op = {str(k): int(v) for k, v in self.fc.get_flop_counts().get('Global', {}).items()}
            elif count_at < self.iter <= count_at + timed: self.t.append(time.thread_time() - self.t0)
            if self.iter == count_at + timed:
                self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]); self.prof.__enter__()
            if self.iter >= count_at + timed + profiled:
                self.prof.__exit__(None, None, None)
                ev = sorted(self.prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
                tot = sum(e.self_cpu_time_total for e in ev)
                self.ops = {e.key: round(e.self_cpu_time_total / tot, 4) for e in ev[:12]}
                raise CancelFitException()
    p = Probe()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train(data=str(store), bs=256, epochs=1, out=str(out), quiet=True, threads=1, cbs=[p], overwrite=True, **kw)
    return {'flops_per_step': int(p.flops), 'flops_by_op': p.by_op, 'step_cpu_s': float(np.median(p.t)),
            'steps_timed': len(p.t), 'op_share': p.ops}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=20000, help='planted items (the step does not depend on it)')
    ap.add_argument('--timed', type=int, default=20, help='steps timed after the counted one')
    ap.add_argument('--profiled', type=int, default=3, help='steps profiled by operator after the timed ones')
    ap.add_argument('--work', default=None, help='folder for the store and the run (default: a temporary folder)')
    ap.add_argument('--json', default='benchmarks/scale_ceiling.json', help="where to write the numbers ('' for nowhere)")
    a = ap.parse_args(argv)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-ceiling-'))
    work.mkdir(parents=True, exist_ok=True)
    store, out = work / f'store-{a.n}', work / 'run'
    if not store.exists(): scale.pack_planted(a.n, store)
    bs = 256
    need = 4 + a.timed + a.profiled
    if a.n - scale.HELD < need * bs: ap.error(f"--n {a.n}: one epoch must have {need} batches of {bs}; give --n {scale.HELD + need * bs} or more")
    r = step_profile(store, out, timed=a.timed, profiled=a.profiled)
    fl_item = r['flops_per_step'] / bs
    from cmrl.train import TrainConfig
    d = TrainConfig().d
    shapes = {'[B*T, d] @ [d, d]': (bs * scale.T, d, d), '[B*T, d] @ [d, 4d]': (bs * scale.T, d, 4 * d),
              '[B*T, D] @ [D, h]': (bs * scale.T, scale.D, 512)}
    gf = {k: matmul_gflops(*v) for k, v in shapes.items()}
    peak = max(gf.values())
    res = {'command': 'python benchmarks/scale_ceiling.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
           'cores': os.cpu_count(), 'threads': 1, 'bs': bs, 'd': d, **r, 'flops_per_item': fl_item,
           'matmul_gflops': gf, 'achieved_gflops': r['flops_per_step'] / r['step_cpu_s'] / 1e9,
           'items_per_cpu_s': bs / r['step_cpu_s'], 'ceiling_items_per_s_per_core': peak * 1e9 / fl_item}
    res['efficiency'] = res['achieved_gflops'] / peak
    res['goal'] = (f"goal: training >= {GOAL:,} items/s/core: the counted work is {fl_item / 1e6:.0f} MFLOP per item; "
                   f"at the best matrix-product rate of this core ({peak:.0f} GFLOP/s) no implementation exceeds "
                   f"{res['ceiling_items_per_s_per_core']:.0f} items/s/core "
                   f"({res['ceiling_items_per_s_per_core'] / GOAL:.2f} x the goal); cmrl's step runs at "
                   f"{res['items_per_cpu_s']:.0f} items per CPU second, {100 * res['efficiency']:.0f} % of that rate")
    print(f"ceiling: flops_per_item={fl_item:.3g} step_cpu_s={r['step_cpu_s']:.3f} "
          f"items_per_cpu_s={res['items_per_cpu_s']:.0f} achieved_gflops={res['achieved_gflops']:.1f} "
          f"peak_gflops={peak:.1f} ceiling_items_per_s_per_core={res['ceiling_items_per_s_per_core']:.0f}")
    print('costliest operators (share of the step):', ', '.join(f"{k} {100 * v:.0f} %" for k, v in r['op_share'].items()))
    print(res['goal'])
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')
    if not a.work: shutil.rmtree(work, ignore_errors=True)
    return res


if __name__ == '__main__': main()
