"""What grows with N in the memory of a training process on a store (issue 30: peak RssAnon at 1 M items <= 1.2 x at
10 k): RssAnon of a fresh process at each stage of setting up `cmrl train --data STORE --bs 256`, per planted store of
`benchmarks/scale.py`, each size in a process of its own.

Stages: the store opened as a source (`get_source`); `make_dls` (the loaders, and the ids of the training items that
the checkpoint records as `train_ids` so that evaluation leaves them out); the same without those ids; the first
batch. Differences are to the process after its imports; `train_ids_mb` is what the ids themselves take (`ItemIds`:
UTF-8 bytes and offsets), `train_ids_as_list_mb` what the same ids take as a list of Python strings.

    python benchmarks/scale_memory.py [--sizes 10000,1000000] [--work DIR]   # writes benchmarks/scale_memory.json
"""
import argparse, gc, json, os, subprocess, sys, tempfile, warnings
from pathlib import Path
if __package__: from . import scale  # python -m benchmarks.NAME
else: import scale  # python benchmarks/NAME.py (its folder is on the path): the planted generator and packer (one home)


def rss_anon_mb() -> float:
    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('RssAnon:'))


def stages(store: str) -> dict:
    "RssAnon (MB) over the process after its imports, at each stage"
    warnings.simplefilter('ignore')
    import torch
    torch.set_num_threads(1)
    from cmrl.train import TrainConfig, make_dls, source_kwargs
    from cmrl.data.loaders import get_source
    gc.collect(); r0 = rss_anon_mb()
    out = {'imports_mb': r0}
    cfg = TrainConfig(data=store, bs=256)
    src = get_source(cfg.data, **source_kwargs(cfg)); gc.collect(); out['source'] = rss_anon_mb() - r0
    del src; gc.collect()
    dls, info = make_dls(cfg); gc.collect(); out['make_dls'] = rss_anon_mb() - r0
    ids = info['train_ids']
    out['n_train_ids'] = len(ids)
    out['train_ids_mb'] = (ids.nbytes if hasattr(ids, 'nbytes') else sys.getsizeof(ids) + sum(map(sys.getsizeof, ids))) / 2 ** 20
    del ids
    info['train_ids'] = None; gc.collect(); out['make_dls_without_train_ids'] = rss_anon_mb() - r0
    next(iter(dls.train)); gc.collect(); out['first_batch'] = rss_anon_mb() - r0
    as_list = [str(i) for i in dls.train.dataset.store.column('id')[dls.train.dataset.idx]] if hasattr(dls.train.dataset, 'store') else []
    out['train_ids_as_list_mb'] = (sys.getsizeof(as_list) + sum(map(sys.getsizeof, as_list))) / 2 ** 20  # the form before `ItemIds`
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='10000,1000000')
    ap.add_argument('--work', default=None, help='folder of the planted stores (made there when missing)')
    ap.add_argument('--json', default='benchmarks/scale_memory.json', help="where to write the numbers ('' for nowhere)")
    ap.add_argument('--stages', default=None, help='(internal) measure the store STAGES in this process; print JSON')
    a = ap.parse_args(argv)
    if a.stages: print(json.dumps(stages(a.stages))); return
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-memory-'))
    res = []
    for n in [int(s) for s in a.sizes.split(',') if s.strip()]:
        st = work / f'store-{n}'
        if not (st / 'store.json').exists(): scale.pack_planted(n, st)
        p = subprocess.run([sys.executable, __file__, '--stages', str(st)], capture_output=True, text=True)
        if p.returncode: raise SystemExit(f"measuring n={n} failed:\n{p.stderr[-2000:]}")
        r = {'n': n, **json.loads(p.stdout.strip().splitlines()[-1])}
        res.append(r)
        print(f"memory: n={n} " + ' '.join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != 'n'),
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({'command': 'python benchmarks/scale_memory.py ' + ' '.join(sys.argv[1:] if argv is None else argv),
                                            'sizes': res}, indent=1) + '\n')
    return res


if __name__ == '__main__': main()
