"""How many codes per step Uni-Code keeps (`--code-levels`): codes-only retrieval on the French valid part (issue 26).

Uni-Code trains through `cmrl train` with its defaults and `--code-levels 4` (the shared code and three residual codes
per step; the residual levels learn from detached features, so the encoders train exactly as with one level). Each run
is scored on the **valid** part for L = 1 to 4 levels: codes-only image <-> speech R@10 ranks the items by the cosine of
their code vectors from the first L levels (`CrossModalModel.code_vectors(out, levels=L)`: the codes and the
codebooks, no embedding), beside LSH of the embeddings with as many bits (6 L at K = 64) and the embedding's own R@10.
The default is the L with the highest mean of the two directions over the seeds (the fewest levels on a tie); the test
part is not read. Writes `benchmarks/code_levels.json`.

    python benchmarks/code_levels.py --work /tmp/cl            # about 8 min on 2 cores (three runs)
"""
import argparse, functools, json, math, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
DIRS = ('image->speech', 'speech->image')
if __package__: from . import results  # python -m benchmarks.code_levels
else: import results  # python benchmarks/code_levels.py (its folder is on the path)


def score_levels(run: Path, manifest: Path, part: str, seed: int) -> dict:
    "Codes-only R@10 of the first L levels for every L the run keeps, LSH at 6 L bits, and the embedding's R@10"
    from cmrl.checkpoint import load_model
    from cmrl.eval.ckpt import ckpt_source, usable_modalities, max_lengths, records_features
    from cmrl.metrics import cross_modal_retrieval
    from cmrl.heads.hashing import lsh_codes
    model, ck = load_model(run, weights='best')
    src = ckpt_source(ck, str(manifest))
    mods = [m for m in results.MODS if m in usable_modalities(model, src)]
    recs = src.split(part)
    groups = {str(r['id']): r['group'] for r in recs}
    K = model.codebook.n_codes
    n_levels = 1 + (model.residual.levels if getattr(model, 'residual', None) is not None else 0)
    code_vectors, out = type(model).code_vectors, {}
    for L in range(1, n_levels + 1):
        model.code_vectors = functools.partial(code_vectors, model, levels=L)
        fe = records_features(model, src, recs, mods, max_len=max_lengths(ck, src))
        g = [groups[str(i)] for i in fe.ids]
        cv = fe.code_pooled()
        r = cross_modal_retrieval({m: cv[m] for m in ('image', 'speech')}, ids=fe.ids, groups=g, chance=False)
        bits = L * math.ceil(math.log2(K))
        lsh = cross_modal_retrieval({m: lsh_codes(fe.emb[m], bits, seed).float() for m in ('image', 'speech')}, ids=fe.ids,
                                    groups=g, metric='dot', chance=False)
        out[str(L)] = {'bits': bits, 'codes': {d: r[d]['R@10'] for d in DIRS}, 'lsh': {d: lsh[d]['R@10'] for d in DIRS}}
    e = cross_modal_retrieval({m: fe.emb[m] for m in ('image', 'speech')}, ids=fe.ids, groups=g, chance=False)
    return {'levels': out, 'embedding': {d: e[d]['R@10'] for d in DIRS}}


def choose(per_seed: dict) -> dict:
    "Mean over seeds of each L's codes-only R@10 (mean of both directions); the best L, the fewest on a tie"
    Ls = sorted(next(iter(per_seed.values()))['levels'], key=int)
    both = lambda v: float(np.mean([v[d] for d in DIRS]))
    mean = {L: float(np.mean([both(r['levels'][L]['codes']) for r in per_seed.values()])) for L in Ls}
    lsh = {L: float(np.mean([both(r['levels'][L]['lsh']) for r in per_seed.values()])) for L in Ls}
    emb = float(np.mean([both(r['embedding']) for r in per_seed.values()]))
    best = max(Ls, key=lambda L: (round(mean[L], 6), -int(L)))
    return {'codes_R@10': mean, 'lsh_R@10': lsh, 'embedding_R@10': emb, 'ratio_to_embedding': {L: mean[L] / emb for L in Ls},
            'best': int(best)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work', required=True, help='folder for the manifests and runs')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--levels', type=int, default=4, help='levels the runs keep (every prefix is scored)')
    p.add_argument('--reuse', action='store_true', help='score runs already in --work')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'code_levels.json'))
    a = p.parse_args(argv)
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
    t0 = time.time()
    results.main(['--split', 'valid', '--seeds', a.seeds, '--models', 'unicode', '--work', str(work),
                  '--out', str(work / 'results-valid.json'), '--train-args', f'--code-levels {a.levels} --threads 1']
                 + (['--reuse'] if a.reuse else []))
    per_seed = {str(s): score_levels(work / f'unicode-s{s}', work / 'cmrl.jsonl', 'valid', s) for s in seeds}
    res = {'doc': __doc__.split('\n\n')[1], 'split_file': str(SPLIT_FILE.relative_to(ROOT)), 'part': 'valid', 'seeds': seeds,
           'train_args': f'--code-levels {a.levels}', 'per_seed': per_seed, 'choice': choose(per_seed),
           'seconds': round(time.time() - t0, 1),
           'command': 'python benchmarks/code_levels.py ' + ' '.join(argv if argv is not None else sys.argv[1:])}
    Path(a.out).write_text(json.dumps(res, indent=1))
    c = res['choice']
    print('codes-only R@10 image<->speech on valid by levels:', {L: round(v, 1) for L, v in c['codes_R@10'].items()},
          f"(embedding {c['embedding_R@10']:.1f}); best {c['best']}")
    return 0


if __name__ == '__main__': sys.exit(main())
