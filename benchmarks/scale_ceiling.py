"""What bounds training throughput in `benchmarks/scale.py` (issue 30): floating-point work per item against what one
core can do.

On a planted store (the same generator as `scale.py`), `cmrl train --data STORE --bs 256` (every other setting at its
default, 1 thread) runs a few batches. For one training step (forward, backward, optimiser) `torch.utils.flop_counter`
counts the floating-point operations of the matrix products and convolutions, per item; the steps after it are timed
in this thread's CPU seconds (other processes on the machine do not inflate them). Beside it, the same core's rate on a
dense float32 matrix product of the shapes the model multiplies (`[B*T, d] @ [d, 4d]`, best of several repeats) is the
most a step made of such products could reach. The ceiling on items/s per core is that rate divided by the counted
operations per item: no implementation of this model, at these settings, trains faster than it on this core.

That ceiling counts arithmetic only. What the model's small matrices cost in practice is measured part by part: each
encoder's frozen-feature stem and transformer stacks of the trained model, forward and backward on a batch of 256
(training mode, CPU seconds of the thread), as PyTorch runs them and, with `--compile`, after `torch.compile` (its
compile time left out). Their sum beside the step time the goal allows (256 / 2,000 s = 128 ms) says whether the
model's own layers fit in it before anything else of a step (loss, MI estimators, optimiser) is counted.

One fixed cost of every run is measured too: in a fresh process that has imported `cmrl.train`, the seconds the first
`torch.optim` optimiser takes to build (the MI estimators' Adam, made when a fit starts), with whether it imported
`torch._dynamo`; `scale.py`'s whole-fit rate carries it, the steady rate does not.

    python benchmarks/scale_ceiling.py [--n 20000] [--work /tmp/ceiling] [--compile]   # writes benchmarks/scale_ceiling.json
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
        def before_fit(self): self.t, self.flops, self.model = [], None, self.learn.model
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
            'steps_timed': len(p.t), 'op_share': p.ops}, p.model


def thread_ms(fn, reps: int = 7, warm: int = 2) -> float:
    "Median CPU milliseconds of this thread over `reps` calls of `fn` (after `warm` calls)"
    for _ in range(warm): fn()
    t = []
    for _ in range(reps):
        t0 = time.thread_time(); fn(); t.append(time.thread_time() - t0)
    return 1e3 * float(np.median(t))


def parts_ms(model, bs: int = 256, compiled: bool = False) -> dict:
    "Forward + backward CPU ms of each encoder's stem and transformer stacks of `model` on a batch of `bs` planted items "
    "(training mode); `compiled`: the same after `torch.compile` (None where it fails: see the 'error' entry)"
    import torch
    from cmrl.callbacks import unwrap
    m, out = unwrap(model), {}
    m.train()
    for name, enc in m.encoders.items():
        x, mask = torch.randn(bs, scale.T, scale.D), torch.ones(bs, scale.T, dtype=torch.bool)
        h = torch.randn(bs, scale.T, enc.pos.shape[1], requires_grad=True); kpm = ~mask
        runs = {'stem': (enc.stem, lambda f: f(x, mask)[0].sum().backward())}
        for b in ('sem_tfm', 'spec_tfm'):
            if isinstance(getattr(enc, b, None), torch.nn.TransformerEncoder):
                runs[b] = (getattr(enc, b), lambda f: f(h, src_key_padding_mask=kpm).sum().backward())
        for part, (mod, call) in runs.items():
            f = mod
            if compiled:
                try: f = torch.compile(mod)
                except Exception as e: out['error'] = f"{type(e).__name__}: {str(e)[:200]}"; return out
            try: out[f'{name}/{part}'] = thread_ms(lambda: call(f))
            except Exception as e: out['error'] = f"{type(e).__name__}: {str(e)[:200]}"; return out
            mod.zero_grad(set_to_none=True)
    return out


def first_optimizer_s() -> dict:
    "Seconds to build the first `torch.optim.Adam` in a fresh process that has imported `cmrl.train`, and whether that "
    "imported `torch._dynamo`"
    code = ("import sys, time, json, torch, cmrl.train\n"
            "before = 'torch._dynamo' in sys.modules\n"
            "t = time.perf_counter(); torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, 'dynamo_before': before, 'dynamo_after': 'torch._dynamo' in sys.modules}))")
    import subprocess
    p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if p.returncode: raise RuntimeError(f"measuring the first optimiser failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summed(parts: dict) -> dict:
    "Totals of `parts_ms` by kind: 'stem' and 'transformer' (the semantic and specific stacks), and 'all'"
    v = {k: x for k, x in parts.items() if k != 'error'}
    return {'stem': sum(x for k, x in v.items() if k.endswith('/stem')),
            'transformer': sum(x for k, x in v.items() if k.endswith('_tfm')), 'all': sum(v.values())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=20000, help='planted items (the step does not depend on it)')
    ap.add_argument('--timed', type=int, default=20, help='steps timed after the counted one')
    ap.add_argument('--profiled', type=int, default=3, help='steps profiled by operator after the timed ones')
    ap.add_argument('--compile', action='store_true', help="also time the model's parts after torch.compile (minutes)")
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
    r, model = step_profile(store, out, timed=a.timed, profiled=a.profiled)
    import torch
    torch.set_num_threads(1)
    parts = {'eager': parts_ms(model, bs)}
    if a.compile:
        import logging
        logging.getLogger('torch').setLevel(logging.ERROR)
        parts['compiled'] = parts_ms(model, bs, compiled=True)
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
    budget = 1e3 * bs / GOAL
    res |= {'first_optimizer': first_optimizer_s(), 'parts_ms': parts, 'parts_total_ms': {k: summed(v) for k, v in parts.items()}, 'budget_ms': budget,
            'step_cpu_ms': 1e3 * r['step_cpu_s']}
    tot = res['parts_total_ms']
    parts_say = '; '.join(f"{how}, the model's stems and transformer stacks alone take {t['all']:.0f} ms per batch of {bs} "
                          f"(transformers {t['transformer']:.0f}, stems {t['stem']:.0f})" for how, t in tot.items())
    res['goal'] = (f"goal: training >= {GOAL:,} items/s/core: the counted work is {fl_item / 1e6:.0f} MFLOP per item; "
                   f"at the best matrix-product rate of this core ({peak:.0f} GFLOP/s) no implementation exceeds "
                   f"{res['ceiling_items_per_s_per_core']:.0f} items/s/core "
                   f"({res['ceiling_items_per_s_per_core'] / GOAL:.2f} x the goal); cmrl's step runs at "
                   f"{res['items_per_cpu_s']:.0f} items per CPU second, {100 * res['efficiency']:.0f} % of that rate. "
                   f"The goal leaves {budget:.0f} ms for a step of {bs}; {parts_say}; a whole step takes {res['step_cpu_ms']:.0f} ms")
    print(f"ceiling: flops_per_item={fl_item:.3g} step_cpu_s={r['step_cpu_s']:.3f} "
          f"items_per_cpu_s={res['items_per_cpu_s']:.0f} achieved_gflops={res['achieved_gflops']:.1f} "
          f"peak_gflops={peak:.1f} ceiling_items_per_s_per_core={res['ceiling_items_per_s_per_core']:.0f}")
    print('costliest operators (share of the step):', ', '.join(f"{k} {100 * v:.0f} %" for k, v in r['op_share'].items()))
    print(res['goal'])
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1) + '\n')
    if not a.work: shutil.rmtree(work, ignore_errors=True)
    return res


if __name__ == '__main__': main()
