"""Time to quality: validation image<->speech R@10 against wall time, cmrl's Uni-Code beside the reference peer.

Both train on the committed French split's training part (`benchmarks/splits/tuxpaint_fr.json`) and are watched on
its **valid** part, on the same cached frozen front-end features (EfficientNet-Lite0 pictures, Whisper-base speech;
extraction excluded: the features are in the cache before either clock starts), with the same thread count, one after
the other in one process, seeds interleaved (the machine is shared and noisy). Each runs with its default settings:
`cmrl train --data MANIFEST --seed S` (40 epochs) and `clip_baseline.py TRAIN VALID --features image,speech --seed S`
(1,000 steps) with `--eval-every 25` so that its curve has points.

Clocks: cmrl's `seconds` (`metrics.json` `retrieval_history`: wall time since the fit began, its per-epoch validation
included); the reference's is the arrival time of each `[monitor step N]` line on its standard error since its
`step 1` line, its evaluation time included the same way. Scorers: each its own validation scorer (cmrl's
`ValidRetrieval`: pessimistic ties; the reference's: ties in the query's favour), so the reference's numbers are if
anything flattered. The reference prints R@10 rounded to whole points.

Goal (issue 26): Uni-Code reaches the reference's best valid image<->speech R@10 (the mean of the two directions)
in <= 0.5 x the time the reference takes to reach it.

    python benchmarks/time_to_quality.py --seeds 0,1        # writes benchmarks/time_to_quality.json and .png
"""
from __future__ import annotations
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path
from cmrl.data.splits import read_split, write_manifests
if __package__: from . import results as R  # python -m benchmarks.time_to_quality
else: import results as R  # python benchmarks/time_to_quality.py (its folder is on the path)

ROOT = Path(__file__).resolve().parent.parent
MON = re.compile(r'\[monitor step (\d+)\] mean R@10 (.*?)\s+avg')


def cmrl_curve(manifest: Path, work: Path, seed: int, threads: int) -> list:
    "[(seconds, image<->speech R@10)] per epoch of a default `cmrl train` run watched on the valid part"
    run = work / f'unicode-s{seed}'
    cmd = R._cmrl_cmd() + ['train', '--data', str(manifest), '--seed', str(seed), '--out', str(run), '--overwrite',
                           '--quiet', '--threads', str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0: raise RuntimeError(f"cmrl train failed:\n{p.stderr[-2000:]}")
    hist = json.loads((run / 'metrics.json').read_text())['retrieval_history']
    return [(h['seconds'], (h['image->speech'] + h['speech->image']) / 2) for h in hist]


def reference_curve(script: Path, train: Path, valid: Path, seed: int, threads: int, every: int) -> list:
    "[(seconds, image<->speech R@10)] at every monitor line of a default reference run on the same features"
    cmd = [sys.executable, str(script), str(train), str(valid), '--seed', str(seed), '--features', ','.join(R.REF_FEATURES),
           '--skip-untrained', '--eval-every', str(every), '--threads', str(threads), '--time-budget', R.REF_TIME_BUDGET]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    t0, out = None, []
    for line in p.stderr:
        if t0 is None and re.match(r'step\s+1\s', line): t0 = time.time()
        m = MON.search(line)
        if m and t0 is not None:
            r = dict((k, float(v)) for k, v in re.findall(r'(\S+->\S+) (\d+(?:\.\d+)?)', m.group(2)))
            out.append((time.time() - t0, (r['image->audio'] + r['audio->image']) / 2))
    if p.wait() != 0: raise RuntimeError('reference failed')
    return out


def time_to(curve: list, level: float) -> float | None:
    "The first time a curve reaches `level`"
    return next((t for t, v in curve if v >= level), None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--seeds', default='0,1')
    p.add_argument('--reference', default=str(ROOT.parent / 'shared' / 'reference' / 'clip_baseline.py'))
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--every', type=int, default=25, help="the reference's monitor interval in steps")
    p.add_argument('--work', default=None)
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'time_to_quality.json'))
    a = p.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix='cmrl-ttq-'))
    man = write_manifests(read_split(R.SPLIT_FILE), work)
    seeds = [int(s) for s in a.seeds.split(',')]
    curves = {'unicode': {}, 'reference': {}}
    for s in seeds:  # interleaved: a slow spell of the machine hits both
        print(f"[{time.strftime('%H:%M:%S')}] seed {s}: cmrl", file=sys.stderr, flush=True)
        curves['unicode'][str(s)] = cmrl_curve(man['paths']['cmrl'], work, s, a.threads)
        if 'feat_train' not in man['paths']:
            man['paths'].update(R.reference_feature_manifests(work, man['paths'], run=work / f'unicode-s{s}'))
        print(f"[{time.strftime('%H:%M:%S')}] seed {s}: reference", file=sys.stderr, flush=True)
        curves['reference'][str(s)] = reference_curve(Path(a.reference), man['paths']['feat_train'], man['paths']['feat_valid'],
                                                     s, a.threads, a.every)
    per_seed = {}
    for s in map(str, seeds):
        best = max(v for _, v in curves['reference'][s])
        tr, tu = time_to(curves['reference'][s], best), time_to(curves['unicode'][s], best)
        per_seed[s] = {'reference_best': best, 'reference_seconds': tr, 'unicode_seconds': tu,
                       'unicode_best': max(v for _, v in curves['unicode'][s]),
                       'ratio': None if tu is None else tu / tr}
    ratios = [v['ratio'] for v in per_seed.values()]
    res = {'doc': __doc__.split('\n\n')[1:4], 'split_file': str(R.SPLIT_FILE.relative_to(ROOT)), 'seeds': seeds,
           'threads': a.threads, 'machine': {'cpus': os.cpu_count()}, 'curves': curves, 'per_seed': per_seed,
           'goal': 'unicode reaches the reference best valid image<->speech R@10 in <= 0.5 x the reference time',
           'met': all(r is not None and r <= 0.5 for r in ratios),
           'command': 'python benchmarks/time_to_quality.py --seeds ' + a.seeds}
    Path(a.out).write_text(json.dumps(res, indent=1))
    plot(res, Path(a.out).with_suffix('.png'))
    for s, v in per_seed.items():
        print(f"seed {s}: reference best {v['reference_best']:.1f} at {v['reference_seconds']:.0f} s; unicode "
              + (f"reaches it at {v['unicode_seconds']:.0f} s (ratio {v['ratio']:.2f})" if v['ratio'] is not None
                 else f"never reaches it (its best {v['unicode_best']:.1f})"))
    print(f"time_to_quality: goal ratio <= 0.5 {'met' if res['met'] else 'missed'}; wrote {a.out}")
    return 0


def plot(res: dict, path: Path):
    "Both validation curves against wall time, one line per seed"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, colour in (('unicode', 'C0'), ('reference', 'C1')):
        for i, (s, c) in enumerate(res['curves'][name].items()):
            ax.plot([t for t, _ in c], [v for _, v in c], colour, alpha=.8, label=f"{name}" if i == 0 else None)
    ax.set_xlabel('wall time (s, features cached)'); ax.set_ylabel('valid image<->speech R@10')
    ax.legend(); ax.grid(alpha=.3); fig.tight_layout(); fig.savefig(path, dpi=100); plt.close(fig)


if __name__ == '__main__':
    sys.exit(main())
