"""Kappa ceiling: how much cross-modal code agreement one code per item can give from the trained embeddings (k-means cells as the yardstick).

Issue 13 asks for chance-corrected code agreement kappa >= 0.3 on every modality pair **and** per-modality perplexity
>= 16 on the test items. Uni-Code's codes are one code per item (`--steps 1`): the nearest codebook vector to the
item's pooled semantic feature. Whatever codebook is learnt, the code of an item is a function of where its
embedding lies, so the agreement of a pair's codes is bounded by how close paired items lie in that space compared
with other items. This benchmark estimates that bound with k-means cells (one quantiser, not a proven optimum):

* It trains (or, with `--reuse`, re-reads) the same runs as `benchmarks/results.py`: Uni-Code through `cmrl train`
  and the independent reference (`--reference PATH`, its `--dump` embeddings), on the committed split.
* For every K in `KS` (8 to 64) it fits k-means (scikit-learn, 4 restarts, label-free) on the **training** part's embeddings
  of all modalities together: each vector L2-normalised, then centred by its modality's training mean (so a
  modality's offset from the others, the "modality gap", does not decide the clusters), and assigns each scored
  item of each modality to its nearest centre: one code per item.
* It scores those codes with cmrl's own `code_kappa` (kappa, p_o, p_e) and `perplexity`, exactly as the results
  benchmark scores Uni-Code's codes, beside Uni-Code's own codes and the embedding R@10 of each pair.

K sweeps the trade-off: fewer cells make agreement easier and perplexity lower. Reading the curve at perplexity 16
says what kappa these embeddings allow at the perplexity the issue requires. `uncentred` repeats the sweep without
the centring. Writes `benchmarks/kappa_ceiling.json`; the Results page (`nbs/results.ipynb`) reads it.

    python benchmarks/kappa_ceiling.py --split test --seeds 0,1 --reference ../shared/reference/clip_baseline.py \
        --work /tmp/kc --ref-args "--threads 1"
"""
from __future__ import annotations
import argparse, json, os, shlex, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

if __package__: from . import results as R  # python -m benchmarks.kappa_ceiling
else: import results as R  # python benchmarks/kappa_ceiling.py (its folder is on the path): runs of both models
from cmrl.data.splits import read_split, write_manifests
from cmrl.eval.benchmark import MODS, Part, score, code_health as _health

KS = (8, 12, 16, 24, 32, 48, 64)
PAIRS = [('image', 'speech'), ('image', 'text'), ('speech', 'text')]


def kmeans_codes(train: dict,  # modality -> `[N, D]` training embeddings
                 test: dict,  # modality -> `[M, D]` scored embeddings (same modalities)
                 k: int,  # number of cells
                 centre: bool = True,  # subtract each modality's training mean after L2 normalisation
                 seed: int = 0,
                ) -> dict:  # modality -> `[M]` long: each scored item's cell
    "One code per item: k-means on the training embeddings of all modalities together, nearest centre for the scored ones"
    from sklearn.cluster import KMeans
    unit = lambda x: torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=-1).numpy()
    tr, te = {m: unit(v) for m, v in train.items()}, {m: unit(v) for m, v in test.items()}
    if centre:
        mu = {m: v.mean(0) for m, v in tr.items()}
        tr, te = {m: v - mu[m] for m, v in tr.items()}, {m: v - mu[m] for m, v in te.items()}
    km = KMeans(k, n_init=4, random_state=seed).fit(np.concatenate(list(tr.values())))
    return {m: torch.as_tensor(km.predict(v)).long() for m, v in te.items()}


def code_health(codes: dict,  # modality -> `[M]` long item codes (one per item; -1 = none)
                n_codes: int,  # K
                test: Part,  # the scored items (ids and groups, for codes-only retrieval)
               ) -> dict:  # perplexity per modality, kappa / p_o / p_e per pair, codes-only R@10 per direction
    "The results benchmark's code-health numbers (`cmrl.eval.benchmark.code_health`) of one code per item"
    h = _health(codes, n_codes, test.ids, test.groups)
    pairs = [p for p in (f'{a}-{b}' for a, b in PAIRS) if p in h['kappa']]
    return {'perplexity': h['perplexity'], 'kappa': {p: h['kappa'][p] for p in pairs},
            'codes_R@10': {k: v['R@10'] for k, v in h['codes_retrieval'].items()}}


def sweep(train: Part, test: Part, ks=KS, seed: int = 0) -> dict:
    "Code health of k-means cells of the retrieval embeddings for every K, centred and not"
    mods = [m for m in MODS if m in test.emb and m in train.emb]
    out = {}
    for centre in (True, False):
        rows = {}
        for k in ks:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                codes = kmeans_codes({m: train.emb[m] for m in mods}, {m: test.emb[m] for m in mods}, k, centre, seed)
            rows[str(k)] = code_health(codes, k, test)
        out['centred' if centre else 'uncentred'] = rows
    return out


def r10(scores: dict) -> dict:
    "Embedding R@10 of each pair, both directions, from a results-benchmark score"
    ret = scores['retrieval']
    return {f'{a}-{b}': {f'{a}->{b}': ret[f'{a}->{b}']['R@10'], f'{b}->{a}': ret[f'{b}->{a}']['R@10']} for a, b in PAIRS}


def unicode_row(seed: int, man: dict, work: Path, part: str, train_args: list, reuse: bool) -> dict:
    "Uni-Code (today's defaults + `train_args`): its own codes' health and the k-means sweep of its retrieval embeddings"
    run, sc = work / f'unicode-s{seed}', None
    if not (reuse and (run / 'metrics.json').exists()): sc = R.run_cmrl('unicode', seed, man['paths']['cmrl'], work, part, train_args)  # trains and scores
    tr, te, K, _ = R.cmrl_parts(run, man['paths']['cmrl'], part)
    mods = [m for m in MODS if m in te.emb]
    from cmrl.codebook import item_modes
    own = code_health({m: item_modes(torch.as_tensor(te.codes[m]).long(), K) for m in mods}, K, te)
    sc = sc or score(tr, te, K, seed)
    return {'n_codes': K, 'own_codes': own, 'R@10': r10(sc), 'sweep': sweep(tr, te, seed=seed)}


def reference_row(script: Path, seed: int, man: dict, work: Path, part: str, ref_args: list, reuse: bool, kind: str = 'feat') -> dict:
    "The reference's dumped embeddings ('feat': on cmrl's front-end features; 'ref': from scratch): the k-means sweep (it has no codes)"
    dump, outj = R._ref_files(work, seed, part, kind)
    sc = None
    if not (reuse and dump.exists() and outj.exists()):
        if kind == 'feat' and 'feat_train' not in man['paths']: man['paths'].update(R.reference_feature_manifests(work, man['paths']))
        sc = R.run_reference(script, seed, man['paths'], work, part, ref_args, kind=kind)  # trains and scores
    tr, te = R.reference_parts(dump, man['paths'])
    return {'R@10': r10(sc or score(tr, te, None, seed)), 'sweep': sweep(tr, te, seed=seed)}


def codes_r10(health: dict, pair: str) -> float:
    "Codes-only R@10 of `pair` ('image-speech'), the mean of both directions, from `code_health`'s numbers"
    a, b = pair.split('-')
    return float(np.mean([health['codes_R@10'][f'{a}->{b}'], health['codes_R@10'][f'{b}->{a}']]))


def at_perplexity(sweep_rows: dict, pair: str, floor: float = 16.) -> dict | None:
    "Among the K whose codes keep both modalities' perplexity >= `floor`: the best kappa of `pair` (its K) and the best codes-only R@10 (None if no K does)"
    a, b = pair.split('-')
    ok = [(k, r) for k, r in sweep_rows.items() if min(r['perplexity'][a], r['perplexity'][b]) >= floor]
    if not ok: return None
    k, r = max(ok, key=lambda kr: kr[1]['kappa'][pair]['kappa'])
    return {'K': int(k), 'kappa': r['kappa'][pair]['kappa'], 'perplexity': min(r['perplexity'][a], r['perplexity'][b]),
            'codes_R@10': max(codes_r10(v, pair) for _, v in ok)}


def summary(res: dict) -> dict:
    "Per row, pair and seed: the pair's R@10, the best kappa and codes-only R@10 at perplexity >= 16 (centred k-means), Uni-Code's own codes"
    out = {}
    for name, row in res['rows'].items():
        out[name] = {}
        for a, b in PAIRS:
            p = f'{a}-{b}'
            ps = row['per_seed']
            per = {s: at_perplexity(r['sweep']['centred'], p) for s, r in ps.items()}
            own = {s: {'kappa': r['own_codes']['kappa'][p]['kappa'], 'codes_R@10': codes_r10(r['own_codes'], p)} for s, r in ps.items() if 'own_codes' in r}
            out[name][p] = {'ceiling_at_perplexity_16': per, **({'own_codes': own} if own else {}),
                            'R@10': {s: r['R@10'][p] for s, r in ps.items()}}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--seeds', default='0,1', help='comma-separated seeds')
    p.add_argument('--split', default='test', choices=('valid', 'test'), help='the part scored')
    p.add_argument('--split-file', default=str(R.SPLIT_FILE), help='the committed split')
    p.add_argument('--reference', default=None, metavar='PATH', help='clip_baseline.py: add its embeddings')
    p.add_argument('--ref-args', default='', help='extra options for the reference script')
    p.add_argument('--reference-kind', default='feat', choices=('feat', 'ref'),
                   help="'feat': the reference on cmrl's frozen front-end features (after a unicode run); 'ref': from scratch")
    p.add_argument('--train-args', default='', help='extra `cmrl train` options for the Uni-Code runs')
    p.add_argument('--work', default=None, help='folder for manifests, runs and dumps (default: a temporary folder)')
    p.add_argument('--reuse', action='store_true', help='re-read runs and dumps already in --work')
    p.add_argument('--out', default=str(R.ROOT / 'benchmarks' / 'kappa_ceiling.json'))
    p.add_argument('--merge', action='store_true', help='keep the seeds of an existing --out that this run does not redo')
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    split = read_split(Path(a.split_file))
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-kappa-'))
    man = write_manifests(split, work)
    seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
    res = {'doc': __doc__.split('\n\n')[1:4], 'lang': split['lang'], 'scored_part': a.split, 'counts': split['counts'], 'ks': list(KS),
           'train_args': a.train_args, 'ref_args': a.ref_args, 'reference_kind': a.reference_kind, 'rows': {}}
    if a.merge and Path(a.out).exists():
        old = json.loads(Path(a.out).read_text())
        if (old['lang'], old['scored_part'], old['train_args']) != (res['lang'], res['scored_part'], res['train_args']):
            raise ValueError(f"{a.out} holds another language, part or training options; use another --out")
        res['rows'] = old['rows']
    jobs = [('unicode', lambda s: unicode_row(s, man, work, a.split, shlex.split(a.train_args), a.reuse))]
    if a.reference: jobs.append(('reference', lambda s: reference_row(Path(a.reference), s, man, work, a.split, shlex.split(a.ref_args),
                                                                       a.reuse, a.reference_kind)))
    for name, job in jobs:
        for s in seeds:
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {s} ({a.split})", file=sys.stderr, flush=True)
            res['rows'].setdefault(name, {'per_seed': {}})['per_seed'][str(s)] = job(s)
    res['summary'] = summary(res)
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    for name, pairs in res['summary'].items():
        for pair, v in pairs.items():
            ceil = ', '.join(f"s{s}: {c['kappa']:.2f} (K {c['K']})" if c else f's{s}: none' for s, c in v['ceiling_at_perplexity_16'].items())
            own = ', '.join(f"s{s}: {o['kappa']:.2f}" for s, o in v.get('own_codes', {}).items())
            print(f"{name:9s} {pair:12s} best kappa at perplexity >= 16: {ceil}" + (f"; own codes {own}" if own else ''))
    print(f'wrote {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
