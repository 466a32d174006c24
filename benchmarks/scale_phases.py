"""Where a training step's time goes (issue 30): one epoch of the feature-only Uni-Code model (bs 256, 1 thread) on a
planted store of `benchmarks/scale.py`, in CPU seconds of the training thread per phase of fastai's loop, for the
default settings and for other `cmrl train` settings (variants, e.g. shorter padding or no MI-estimator steps).

    python benchmarks/scale_phases.py [--n 5000] [--variants '[{}, {"mi_steps": 0}]']
                                      [--json benchmarks/scale_phases.json]

Each variant runs in its own process. Phases: data (the loader, between one batch's end and the next's start),
before_batch callbacks (NaNGuard's input check, augmentation), forward, loss, backward, after_backward (the MI
estimators' own steps), before_step + optimiser step, and the rest up to after_batch.
"""
import argparse, importlib.util, json, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np

PHASES = {'data (loader)': ('ab', 'bb0', -1), 'before_batch callbacks (NaNGuard, augment)': ('bb0', 'bb1', 0),
          'forward': ('bb1', 'ap', 0), 'loss': ('ap', 'al', 0), 'backward': ('al', 'abw0', 0),
          'after_backward (MI estimator steps)': ('abw0', 'bs0', 0), 'before_step + optimiser step': ('bs0', 'as0', 0),
          'after_step..after_batch': ('as0', 'ab', 0)}


def one(store: str, out: str, kw: dict) -> dict:
    "One epoch with `kw`; CPU milliseconds per step of each phase (the first step left out)"
    import torch
    from fastai.callback.core import Callback
    from cmrl.train import train
    torch.set_num_threads(1)
    T = {}
    def mark(k, cb):
        if cb.training: T.setdefault(k, []).append(time.thread_time())
    class First(Callback):
        order = -1000
        def before_batch(self): mark('bb0', self)
        def after_pred(self): mark('ap', self)
        def after_backward(self): mark('abw0', self)
        def before_step(self): mark('bs0', self)
        def after_step(self): mark('as0', self)
    class Last(Callback):
        order = 1000
        def before_batch(self): mark('bb1', self)
        def after_loss(self): mark('al', self)
        def after_batch(self): mark('ab', self)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train(data=store, bs=256, epochs=1, out=out, quiet=True, threads=1, cbs=[First(), Last()], **kw)
    n = len(T['ab'])
    a = {k: np.asarray(v[:n]) for k, v in T.items()}
    seg = {p: (a[b][1:] - a[e][:-1]) if lag else (a[b] - a[e])[1:] for p, (e, b, lag) in PHASES.items()}
    tot = sum(v.sum() for v in seg.values())
    return {'kw': kw, 'steps': n - 1, 'cpu_ms_per_step': 1000 * tot / (n - 1), 'items_per_cpu_s': 256 * (n - 1) / tot,
            'phases': {p: {'cpu_ms_per_step': 1000 * v.mean(), 'share': v.sum() / tot} for p, v in seg.items()},
            'train_loss': s.get('train_loss'), 'n_train': s['n_train']}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=5000, help='planted items (1,000 of them held out)')
    p.add_argument('--variants', default='[{}]', help='JSON list of `cmrl train` settings, one run each')
    p.add_argument('--json', default='benchmarks/scale_phases.json', help="where to write the numbers ('' for nowhere)")
    p.add_argument('--one', nargs=3, help=argparse.SUPPRESS)  # STORE OUT KW: one variant, in this process
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1], json.loads(a.one[2])))); return
    try:
        variants = json.loads(a.variants)
        assert isinstance(variants, list) and all(isinstance(v, dict) for v in variants)
    except (ValueError, AssertionError): p.error(f"--variants: give a JSON list of objects, not {a.variants!r}")
    if a.n <= 1256: p.error("--n: give more than 1,256 items (1,000 are held out, one batch of 256 trains)")
    spec = importlib.util.spec_from_file_location('scale', Path(__file__).with_name('scale.py'))
    scale = importlib.util.module_from_spec(spec); spec.loader.exec_module(scale)
    work = Path(tempfile.mkdtemp(prefix='cmrl-phases-'))
    scale.pack_planted(a.n, work / 'store')
    res = []
    for k, kw in enumerate(variants):
        r = subprocess.run([sys.executable, __file__, '--one', str(work / 'store'), str(work / f"run{k}"),
                            json.dumps(kw)], capture_output=True, text=True, check=True)
        res.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"phases: {json.dumps(kw)} {res[-1]['items_per_cpu_s']:.0f} items per CPU second: " + ', '.join(
            f"{ph} {v['cpu_ms_per_step']:.1f} ms" for ph, v in res[-1]['phases'].items()), flush=True)
    if a.json:
        cmd = 'python benchmarks/scale_phases.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
        Path(a.json).write_text(json.dumps({'command': cmd, 'n': a.n, 'variants': res}, indent=1) + '\n')
    import shutil; shutil.rmtree(work, ignore_errors=True)
    return res


if __name__ == '__main__': main()
