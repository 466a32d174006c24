"""How image <-> speech retrieval grows with the number of training pairs (issue 26: the limit behind R@10 >= 45).

Protocol: the committed French split (`benchmarks/splits/tuxpaint_fr.json`); its valid and test parts unchanged; its
training part cut to a fraction of its **groups** (the split's own groups, so variants of one stamp stay together),
nested (the quarter lies inside the half), drawn once with `--subset-seed`. Uni-Code trains through `cmrl train` with
its defaults except the epochs, scaled by 1 / fraction so that every run takes the same number of optimiser steps
(the curve then shows the data, not a shorter training). Each run is scored on the **test** part by
`benchmarks/results.py` (the one scorer of the Results page; nothing is chosen from these numbers). The full training
part's point is the `unicode` row of `benchmarks/results.json` (same protocol, six seeds).

The fit: per model, the six-seed mean of image->speech and speech->image R@10 against log2(training pairs), least
squares over the points; `pairs_for` gives the number of pairs at which the line reaches the goal (an extrapolation,
reported as such); the curve bends, so `pairs_for_last` gives the same from the slope of its last segment alone. `--with-valid` adds a check of the line beyond the training part: Uni-Code trained on the training
and valid parts together (40 epochs, no validation, so the last weights: nothing left to choose them on), scored on the
same test part, beside what the line predicts at that many pairs. Writes `benchmarks/learning_curve.json`; the Results
page plots it.

    python benchmarks/learning_curve.py --work /tmp/lc        # about 25 min on 2 cores
"""
import argparse, json, os, random, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
DIRS = ('image->speech', 'speech->image')
GOAL = 45.0
if __package__: from . import results  # python -m benchmarks.learning_curve
else: import results  # python benchmarks/learning_curve.py (its folder is on the path)


def subset_split(split: dict, frac: float, seed: int = 0) -> dict:
    "`split` with its training part cut to `frac` of its groups (a fixed shuffled order of the groups: nested cuts)"
    groups = sorted({i['group'] for i in split['items'] if i['split'] == 'train'})
    random.Random(seed).shuffle(groups)
    keep = set(groups[:max(1, round(frac * len(groups)))])
    items = [i for i in split['items'] if i['split'] != 'train' or i['group'] in keep]
    counts = {p: sum(i['split'] == p for i in items) for p in ('train', 'valid', 'test')}
    return {**split, 'items': items, 'counts': counts,
            'split_rule': f"{split.get('split_rule', '')}; training part cut to {frac:g} of its groups (seed {seed})"}


def with_valid_split(split: dict) -> dict:
    "`split` with its valid part trained on (the test part unchanged)"
    items = [{**i, 'split': 'train' if i['split'] == 'valid' else i['split']} for i in split['items']]
    counts = {p: sum(i['split'] == p for i in items) for p in ('train', 'valid', 'test')}
    return {**split, 'items': items, 'counts': counts,
            'split_rule': f"{split.get('split_rule', '')}; the valid part trained on"}


def point(rows: dict, name: str) -> dict:
    "Six-seed mean, min and max of each direction's R@10 and of their mean, from a results.json row"
    per = rows[name]['per_seed']
    vals = {d: [per[s]['retrieval'][d]['R@10'] for s in sorted(per)] for d in DIRS}
    both = [float(np.mean([vals[d][k] for d in DIRS])) for k in range(len(per))]
    return {'seeds': sorted(int(s) for s in per), 'n_train': int(next(iter(per.values()))['n_train']),
            **{d: {'mean': float(np.mean(v)), 'min': float(min(v)), 'max': float(max(v))} for d, v in vals.items()},
            'mean': {'mean': float(np.mean(both)), 'min': float(min(both)), 'max': float(max(both))}}


def fit(points: list) -> dict:
    "R@10 = a + b log2(pairs), least squares; `pairs_for`: where the line reaches GOAL (None when it does not rise)"
    x = np.log2([p['n_train'] for p in points]); y = np.array([p['mean']['mean'] for p in points])
    b, a = np.polyfit(x, y, 1)
    out = {'intercept': float(a), 'per_doubling': float(b), 'goal': GOAL}
    out['pairs_for'] = float(2 ** ((GOAL - a) / b)) if b > 0 else None
    out['times_the_training_part'] = out['pairs_for'] / points[-1]['n_train'] if out['pairs_for'] else None
    # the curve bends: the slope of its last segment, and where that slope alone would reach the goal
    (x0, y0), (x1, y1) = (x[-2], y[-2]), (x[-1], y[-1])
    last = float((y1 - y0) / (x1 - x0))
    out['last_per_doubling'] = last
    out['pairs_for_last'] = float(2 ** (x1 + (GOAL - y1) / last)) if last > 0 and y1 < GOAL else None
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', required=True, help='folder for the split files, manifests and runs')
    p.add_argument('--fracs', default='0.25,0.5', help='fractions of the training groups (the full part comes from --full)')
    p.add_argument('--seeds', default='0,1,2,3,4,5')
    p.add_argument('--frac-seeds', default=None, help='seeds of the cut parts (default: --seeds)')
    p.add_argument('--subset-seed', type=int, default=0)
    p.add_argument('--with-valid', action='store_true', help='also train on the training and valid parts together')
    p.add_argument('--reference', default=None, metavar='PATH', help='with --with-valid: the reference script, trained on '
                   'the same pairs and front-end features')
    p.add_argument('--ref-seeds', default='0,1,2', help="the reference's seeds (a run takes several minutes)")
    p.add_argument('--full', default=str(ROOT / 'benchmarks' / 'results.json'), help="results JSON with the full part's rows")
    p.add_argument('--reuse', action='store_true', help='score runs already in --work')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'learning_curve.json'))
    a = p.parse_args(argv)
    from cmrl.data.splits import read_split
    split, work = read_split(SPLIT_FILE), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    fracs = [float(f) for f in a.fracs.split(',') if f.strip()]
    t0, pts = time.time(), []
    for f in fracs:
        sub = subset_split(split, f, a.subset_seed)
        sf, wf, of = work / f'split-{f:g}.json', work / f'frac-{f:g}', work / f'results-{f:g}.json'
        sf.write_text(json.dumps(sub, ensure_ascii=False))
        epochs = round(40 / f)
        print(f"[{time.strftime('%H:%M:%S')}] fraction {f:g}: {sub['counts']['train']} training pairs, {epochs} epochs",
              file=sys.stderr, flush=True)
        results.main(['--split', 'test', '--seeds', a.frac_seeds or a.seeds, '--models', 'unicode', '--split-file', str(sf),
                      '--work', str(wf), '--out', str(of), '--train-args', f'--epochs {epochs} --threads 1']
                     + (['--reuse'] if a.reuse else []))
        pts.append({'fraction': f, 'epochs': epochs, **point(json.loads(of.read_text())['rows'], 'unicode')})
    full = json.loads(Path(a.full).read_text())
    if full.get('split_file') != 'benchmarks/splits/tuxpaint_fr.json' or full.get('scored_part_rows') != 'test':
        raise SystemExit(f"{a.full}: not the French test part's results")
    pts.append({'fraction': 1.0, 'epochs': 40, 'from': Path(a.full).name, **point(full['rows'], 'unicode')})
    pts.sort(key=lambda q: q['n_train'])
    check = None
    if a.with_valid:
        sub = with_valid_split(split)
        sf, wf, of = work / 'split-with-valid.json', work / 'with-valid', work / 'results-with-valid.json'
        sf.write_text(json.dumps(sub, ensure_ascii=False))
        print(f"[{time.strftime('%H:%M:%S')}] training and valid parts: {sub['counts']['train']} training pairs",
              file=sys.stderr, flush=True)
        results.main(['--split', 'test', '--seeds', a.seeds, '--models', 'unicode', '--split-file', str(sf),
                      '--work', str(wf), '--out', str(of), '--train-args', '--threads 1']
                     + (['--reuse'] if a.reuse else []))
        uv = json.loads(of.read_text())['rows']
        check = {'what': 'trained on the training and valid parts (last weights)', 'epochs': 40, **point(uv, 'unicode')}
        if a.reference:  # the reference on the same features, trained on the same pairs, beside its row at the full part
            rf = work / 'results-with-valid-ref.json'
            results.main(['--split', 'test', '--seeds', a.ref_seeds, '--models', '', '--reference', a.reference,
                          '--split-file', str(sf), '--work', str(wf), '--out', str(rf), '--ref-args', '--threads 1']
                         + (['--reuse'] if a.reuse else []))
            check['reference'] = ref = point(json.loads(rf.read_text())['rows'], 'reference')
            seeds = {str(x) for x in ref['seeds']}
            def on_seeds(rows, n): return point({n: {'per_seed': {k: v for k, v in rows[n]['per_seed'].items() if k in seeds}}}, n)
            check['at_training_part_same_seeds'] = {n: on_seeds(full['rows'], n) for n in ('unicode', 'reference')}
            check['unicode_same_seeds'] = on_seeds(uv, 'unicode')
    ft = fit(pts)
    if check: check['predicted'] = float(ft['intercept'] + ft['per_doubling'] * np.log2(check['n_train']))
    cmd = 'python benchmarks/learning_curve.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    out = {'command': cmd, 'doc': __doc__.split('\n\n')[1:3], 'split_file': 'benchmarks/splits/tuxpaint_fr.json',
           'scored_part': 'test', 'model': 'unicode', 'points': pts, 'fit': ft,
           'with_valid': check,
           'machine': {'cpus': os.cpu_count()}, 'seconds': round(time.time() - t0, 1)}
    Path(a.out).write_text(json.dumps(out, indent=1).replace(str(work.resolve()), 'WORK') + '\n')
    for q in pts: print(f"learning-curve: n_train={q['n_train']} R@10 i>s={q['image->speech']['mean']:.1f} "
                        f"s>i={q['speech->image']['mean']:.1f} mean={q['mean']['mean']:.1f}")
    if check: print(f"with-valid: n_train={check['n_train']} R@10 mean={check['mean']['mean']:.1f} "
                    f"(the line: {check['predicted']:.1f})")
    if ft['pairs_for_last']: print(f"last segment: {ft['last_per_doubling']:+.1f} per doubling; {GOAL:g} at about "
                                   f"{ft['pairs_for_last']:.0f} pairs")
    print(f"fit: {ft['per_doubling']:+.1f} R@10 per doubling of the pairs; {GOAL:g} at about "
          f"{ft['pairs_for']:.0f} pairs ({ft['times_the_training_part']:.1f} x the training part)" if ft['pairs_for']
          else f"fit: {ft['per_doubling']:+.1f} R@10 per doubling: the line does not rise")
    return out


if __name__ == '__main__': main()
