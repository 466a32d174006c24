"""Hashing benchmark (issue 29, items 4 and 5): binary codes of real embeddings, and Hamming search at scale.

1. **Real data.** The default model (`cmrl train`, Uni-Code, default front-ends) on the committed French Tux Paint
   split (`benchmarks/splits/tuxpaint_fr.json`), one run per seed: reused from `--runs DIR` (`unicode-s{seed}`
   folders, read-only) or trained into `--work`. The hash heads are fitted on the TRAINING part's embeddings only;
   the test part (102 items) is scored at 16 / 32 / 64 / 128 bits in all six directions by the library's scorer
   (`cmrl.metrics.cross_modal_retrieval`: the same false-negative mask as `cmrl.eval.benchmark.score`, ties counted
   against the query). Rows: float (cosine), `learned` (`fit_hash_head`'s defaults), `ssah` (SSAH's own recipe),
   `lsh` (random hyperplanes). Mean, min and max over the seeds, and the share of queries whose partner ties with a
   negative in Hamming distance.
2. **The recipe** (`--choose`): the candidates in `RECIPES` fitted on the training part and scored on the VALID part;
   the one with the best mean R@10 over the six directions and the seeds at 64 bits is `fit_hash_head`'s default.
3. **Scale**: structured data (Gaussian clusters drawn with the covariance of the real training embeddings), 1 M
   gallery items (`--quick`: 100 k). Codes in memory (`cmrl.eval.index.BinaryIndex`), floats in a memory-mapped
   `.npy`; Hamming top-1,000 re-ranked by cosine (`hamming_rerank_search`), timed end to end (query encoding
   included) against exact float search (faiss `IndexFlatIP` through `EmbeddingIndex`, which scores a batch of
   queries by one BLAS product, and chunked torch matmul + top-k; the faster is the baseline), interleaved
   repetitions, medians; recall@10 of the exact float result. Also timed, to say where the time goes and what bounds
   the speed-up: faiss flat at faiss's own BLAS threshold (its per-query loop), the Hamming top-1,000 alone, a
   Hamming scan with a short top-k (the cost of reading every code once per query) and the gather of the candidates'
   float rows alone (the floor of re-ranking). The sub-linear variant, `cmrl.eval.index.PartitionedBinaryIndex`: its
   own head at `--part-bits` (48: the cell table must fit in the 1/32 beside the codes), the gallery sorted by
   `--nlist` spherical k-means cells, codes + offsets + float16 centroids in memory, floats and ids memory-mapped in
   cell order; its `nprobe` is the fewest of `--nprobes` whose recall@k on `--q` TUNING queries (drawn after the
   reported ones, from the same clusters) reaches `--tune-recall`; the reported queries are not used to choose it.

Usage (repository root, the project's venv):

    python benchmarks/hashing.py --runs /work/runs26/test            # reuse the lead's runs (seeds found there)
    python benchmarks/hashing.py --work /tmp/hash --seeds 0,1,2       # train the runs (cmrl train --threads 1)
    python benchmarks/hashing.py --runs DIR --n 0 --bits 64 --seeds 0,1,2  # the goal's bits only, no scale part
    python benchmarks/hashing.py --runs DIR --choose                  # the recipe search on the valid part
    python benchmarks/hashing.py --quick --out /tmp/h.json            # 100 k items at scale (and whatever --runs has)

Writes `benchmarks/hashing.json` (or `--out`): every number, the command, the machine. Prints last:
`hashing: 64 bits, learned >= lsh in A/6 directions, >= 0.8 x float in B/6; scale N: speedup S, memory M x, recall R`.
"""
from __future__ import annotations
import argparse, gc, json, os, platform, resource, shlex, statistics, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
MODS = ('image', 'speech', 'text')
BITS = (16, 32, 64, 128)
SSAH = dict(pair='likelihood', distill=0., shared=False, init='random', epochs=30, lr=0.1, bs=64, eta=0.01)
RECIPES = {  # name -> fit_hash_head arguments, compared on the valid part (--choose)
    'ssah': SSAH,
    'infonce only': dict(distill=0.),
    'distill only': dict(pair='none'),
    'infonce+distill (default)': {},
    'infonce+distill, lr 0.01': dict(lr=0.01),
    'infonce+distill, per-modality': dict(shared=False),
    'infonce+distill, random init': dict(init='random'),
}
GOAL_RATIO, GOAL_SPEEDUP, GOAL_MEMORY, GOAL_RECALL = 0.8, 10., 32., 0.9


# ----------------------------------------------------------------------------- real data
def run_parts(run: Path, manifest: Path, parts=('train', 'valid', 'test')) -> dict:
    "Embeddings (the model's retrieval embeddings, best weights), ids and groups of each part of a `cmrl train` run"
    from cmrl.checkpoint import load_model
    from cmrl.eval.ckpt import ckpt_source, usable_modalities, max_lengths, records_features
    model, ck = load_model(run, weights='best')
    src = ckpt_source(ck, str(manifest))
    mods = [m for m in MODS if m in usable_modalities(model, src)]
    ml, out = max_lengths(ck, src), {}
    for p in parts:
        recs = src.split(p)
        fe = records_features(model, src, recs, mods, max_len=ml)
        meta = {str(r['id']): r for r in recs}
        out[p] = dict(ids=[str(i) for i in fe.ids], groups=[meta[str(i)]['group'] for i in fe.ids],
                      emb={m: fe.emb[m].float() for m in mods})
    return out

def train_run(seed: int, manifest: Path, work: Path) -> Path:
    "`cmrl train --data MANIFEST --seed S` with every other setting at its default (one thread)"
    run = work / f'unicode-s{seed}'
    if (run / 'metrics.json').exists(): return run
    exe = Path(sys.executable).parent / 'cmrl'
    cmd = [str(exe) if exe.exists() else 'cmrl', 'train', '--data', str(manifest), '--seed', str(seed),
           '--out', str(run),
           '--quiet', '--threads', '1']
    print('  $', ' '.join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0: raise RuntimeError(f"cmrl train failed ({p.returncode}): {p.stderr[-2000:]}")
    return run

def score_part(tr: dict, ev: dict, bits, recipes: dict, seed: int) -> dict:
    "R@1/5/10 and medr of float, each recipe's learned codes and LSH on part `ev`, heads fitted on `tr`; tie shares"
    from cmrl.heads.hashing import fit_hash_head, lsh_codes
    from cmrl.eval.hashing import hash_retrieval, tie_fraction
    from cmrl.metrics import cross_modal_retrieval
    kw = dict(ids=ev['ids'], groups=ev['groups'])
    keep = lambda r: {d: {m: v[m] for m in ('R@1', 'R@5', 'R@10', 'medr')} for d, v in r.items()}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = {'float': keep(cross_modal_retrieval(ev['emb'], **kw))}
        for B in bits:
            codes = {'lsh': {m: lsh_codes(v, B, seed) for m, v in ev['emb'].items()}}
            for name, rk in recipes.items():
                t = time.perf_counter()
                head = fit_hash_head(tr['emb'], bits=B, seed=seed, **rk)
                codes[name] = head.encode(ev['emb'])
                out.setdefault('fit_seconds', {}).setdefault(name, {})[str(B)] = round(time.perf_counter() - t, 2)
            for name, c in codes.items():
                out.setdefault(name, {})[str(B)] = keep(hash_retrieval(c, **kw))
                out.setdefault('ties', {}).setdefault(name, {})[str(B)] = tie_fraction(c, **kw)
    return out

def find_runs(runs: Path | None, seeds) -> dict:
    "seed -> run folder with a finished `cmrl train` (metrics.json) in `runs`"
    if runs is None: return {}
    return {s: runs / f'unicode-s{s}' for s in seeds if (runs / f'unicode-s{s}' / 'metrics.json').exists()}

def real(a, manifest: Path, recipes: dict, part: str, save=None) -> dict:
    "Every seed's scores of `part`, and their mean / min / max; `save(res)` after every seed (a crash keeps what was measured)"
    from cmrl.eval.benchmark import aggregate
    seeds = [int(x) for x in a.seeds.split(',')]
    runs = find_runs(Path(a.runs), seeds) if a.runs else {}
    if len(runs) < a.min_seeds:
        if not a.work: raise SystemExit(f"hashing: --runs {a.runs} holds {len(runs)} finished runs (< {a.min_seeds}); "
                                        "give --work DIR to train the missing seeds")
        runs = {s: train_run(s, manifest, Path(a.work)) for s in seeds}
    per_seed = {}
    for s, run in sorted(runs.items()):
        print(f"[{time.strftime('%H:%M:%S')}] {part}: seed {s} ({run})", file=sys.stderr, flush=True)
        P = run_parts(run, manifest, ('train', part))
        per_seed[str(s)] = score_part(P['train'], P[part], a.bits, recipes, s)
        per_seed[str(s)].update(run=str(run), n_train=len(P['train']['ids']), n_scored=len(P[part]['ids']))
        res = {'part': part, 'seeds': sorted(int(s) for s in per_seed), 'per_seed': per_seed,
               'summary': aggregate(per_seed)}
        if save: save(res)
    return res

def real_goals(res: dict, B: int = 64, row: str = 'learned') -> dict:
    "Per direction (means over seeds): learned >= lsh, learned >= 0.8 x float R@10"
    S, out = res['summary'], {}
    for d in res['per_seed'][str(res['seeds'][0])]['float']:
        f, h, l = S[f'float/{d}/R@10']['mean'], S[f'{row}/{B}/{d}/R@10']['mean'], S[f'lsh/{B}/{d}/R@10']['mean']
        out[d] = {'float': f, row: h, 'lsh': l, 'beats_lsh': h >= l, 'ratio_to_float': h / f if f else float('nan'),
                  'ge_0.8_float': h >= GOAL_RATIO * f}
    return out


# ----------------------------------------------------------------------------- scale
def spectrum_of(runs: dict, manifest: Path) -> np.ndarray | None:
    "Covariance of the real training embeddings (L2-normalised, every modality) of the first run, or None"
    if not runs: return None
    s, run = sorted(runs.items())[0]
    P = run_parts(run, manifest, ('train',))
    X = torch.cat([torch.nn.functional.normalize(v, dim=-1) for v in P['train']['emb'].values()]).double().numpy()
    return np.cov(X, rowvar=False)

def make_clusters(n: int, q: int, d: int, cov: np.ndarray | None, clusters: int, spread: float, path: Path,
                  seed: int = 0, tune: int = 0):
    """Gallery (a `.npy` memmap at `path`, written in chunks), queries and `tune` more queries drawn after them (to choose
    parameters on; the gallery and the reported queries do not depend on `tune`): centres ~ N(0, cov), items = centre + spread N(0, cov)"""
    rng = np.random.default_rng(seed)
    if cov is None:  # no real run: a power-law spectrum in a random basis
        ev = 1 / np.arange(1, d + 1); Qb = np.linalg.qr(rng.standard_normal((d, d)))[0]; cov = (Qb * ev) @ Qb.T
    w, V = np.linalg.eigh(cov)
    L = (V * np.sqrt(np.clip(w, 0, None))).astype(np.float32)  # x = z L^T has covariance cov
    C = rng.standard_normal((clusters, d)).astype(np.float32) @ L.T
    def draw(m): return C[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, d)).astype(np.float32) @ L.T
    G = np.lib.format.open_memmap(path, mode='w+', dtype=np.float32, shape=(n, d))
    for s in range(0, n, 100_000): G[s:s + 100_000] = draw(min(100_000, n - s))
    G.flush(); del G
    Q = draw(q)
    return np.load(path, mmap_mode='r'), Q, draw(tune), w[::-1].copy()

def timed(f):
    t = time.perf_counter(); r = f(); return time.perf_counter() - t, r

def torch_exact(Q: np.ndarray, G, k: int, chunk: int = 16_384):  # a [Q, chunk] score block stays in cache
    "Exact cosine top-k by chunked matmul + top-k (torch), over an in-memory or memory-mapped gallery"
    q = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(Q)), dim=-1)
    bs = bi = None
    for s in range(0, len(G), chunk):
        g = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(G[s:s + chunk])), dim=-1)
        v, i = (q @ g.T).topk(min(k, len(g)), dim=1)
        if bs is None: bs, bi = v, i + s
        else:
            vv, ii = torch.cat([bs, v], 1), torch.cat([bi, i + s], 1)
            o = vv.topk(k, dim=1).indices; bs, bi = vv.gather(1, o), ii.gather(1, o)
    return bs.numpy(), bi.numpy()

def scale(a, cov, path: Path) -> dict:
    "Hamming top-C + float re-ranking (floats memory-mapped) against exact float search, at `a.n` items"
    import faiss
    from cmrl.heads.hashing import fit_hash_head, lsh_codes, pack_codes
    from cmrl.eval.index import EmbeddingIndex, BinaryIndex, PartitionedBinaryIndex, knn_recall
    from cmrl.eval.hashing import hamming_rerank_search
    from threadpoolctl import threadpool_limits
    faiss.omp_set_num_threads(a.threads); torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)  # numpy's BLAS too (the re-ranking's products)
    load0 = os.getloadavg()[0]
    d = cov.shape[0] if cov is not None else 64
    t_data, (G, Q, Qt, eig) = timed(lambda: make_clusters(a.n, a.q, d, cov, max(1, a.n // a.per_cluster), a.spread, path,
                                                           tune=a.q))
    print(f"scale: {a.n:,} x {d} float32 in {path.name} ({t_data:.1f} s), {a.q} queries", file=sys.stderr, flush=True)
    # the learned head: a sample of gallery items paired with their nearest neighbour in the sample (no modalities here)
    rng = np.random.default_rng(1)
    S = np.ascontiguousarray(G[np.sort(rng.choice(a.n, min(a.hash_fit, a.n), replace=False))])
    _, nn_ = torch_exact(S, S, 2)
    t_fit, head = timed(lambda: fit_hash_head({'query': S, 'gallery': S[nn_[:, 1]]}, bits=a.scale_bits,
                                              epochs=a.hash_epochs,
                                              seed=0, threads=a.threads))
    enc = {'learned': lambda X, m: head.encode({m: torch.from_numpy(np.array(X, np.float32))})[m].numpy(),
           'lsh': lambda X, m: lsh_codes(np.ascontiguousarray(X), a.scale_bits, seed=0).numpy()}
    exact_ix = EmbeddingIndex(d, 'flat', 'cos').add(np.ascontiguousarray(G))  # in memory: the float matrix
    idx = {w: BinaryIndex(a.scale_bits).add(np.concatenate([pack_codes(f(G[s:s + 100_000], 'gallery'))
                                                          for s in range(0, a.n, 100_000)])) for w, f in enc.items()}
    # a sub-linear variant: an inverted file over the learned codes (binary k-means lists, `nprobe` of them scanned);
    # faiss stores an 8-byte id beside every code, so it costs twice the memory of the flat codes
    nlist = max(16, int(4 * a.n ** 0.5))
    ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(a.scale_bits), a.scale_bits, nlist)
    Gc = np.concatenate([pack_codes(enc['learned'](G[s:s + 100_000], 'gallery')) for s in range(0, a.n, 100_000)])
    ivf.train(Gc[np.random.default_rng(2).choice(a.n, min(a.n, 50 * nlist), replace=False)])
    ivf.add(Gc); ivf.nprobe = a.nprobe
    del Gc
    # the partitioned index: gallery sorted by float k-means cell, codes (+ offsets, float16 centroids) in memory, floats
    # and ids memory-mapped in cell order; its own head at --part-bits (fewer bits leave room for the cell table in 1/32)
    t_pfit, phead = timed(lambda: fit_hash_head({'query': S, 'gallery': S[nn_[:, 1]]}, bits=a.part_bits,
                                                epochs=a.hash_epochs, seed=0, threads=a.threads))
    penc = lambda X, m: phead.encode({m: torch.from_numpy(np.array(X, np.float32))})[m].numpy()
    t_pbuild, pix = timed(lambda: PartitionedBinaryIndex(a.part_bits, a.nlist, candidates=a.candidates).build(
        np.concatenate([pack_codes(penc(G[s:s + 100_000], 'gallery')) for s in range(0, a.n, 100_000)]), G,
        path.parent / 'partitioned'))
    # nprobe chosen on the tuning queries (drawn apart from the reported ones): the smallest reaching --tune-recall
    exact_t = exact_ix.search(Qt, a.k)[1]
    tune = {npb: knn_recall(pix.search(penc(Qt, 'query'), Qt, a.k, nprobe=npb)[1], exact_t)
            for npb in [int(x) for x in a.nprobes.split(',')]}
    nprobe = min([p_ for p_, r in tune.items() if r >= a.tune_recall], default=max(tune))
    pix.nprobe = nprobe
    runs = {'faiss': lambda: exact_ix.search(Q, a.k), 'torch': lambda: torch_exact(Q, G, a.k),
            # faiss's own threshold: below it (a batch of fewer queries) faiss loops over the queries without BLAS
            'faiss per-query loop': lambda: exact_ix.search(Q, a.k, blas_from=10 ** 9)}
    for w in enc:
        runs[w] = (lambda w=w: hamming_rerank_search(idx[w], enc[w](Q, 'query'), Q, G, a.k, a.candidates))
        runs[f'{w} hamming only'] = (lambda w=w: idx[w].search(enc[w](Q, 'query'), a.k))
        runs[f'{w} hamming top-C'] = (lambda w=w: idx[w].search(enc[w](Q, 'query'), a.candidates))
    cand = np.sort(idx['learned'].search(enc['learned'](Q, 'query'), a.candidates)[1], axis=1)
    gbuf = np.empty((16 * a.candidates, d), np.float32)  # the candidates' float rows, nothing computed, read as the
    runs['gather only'] = lambda: [np.take(G, cand[s:s + 16].ravel(), axis=0, out=gbuf[:cand[s:s + 16].size])  # re-ranking
                                   for s in range(0, len(cand), 16)]  # reads them: 16 queries at a time into one buffer
    runs['learned ivf'] = lambda: hamming_rerank_search(ivf, enc['learned'](Q, 'query'), Q, G, a.k, a.candidates)
    runs['partitioned'] = lambda: pix.search(penc(Q, 'query'), Q, a.k)
    # its parts: the coarse cells alone, and the read of its candidates' float rows alone (cell order, 16 queries a time)
    runs['partitioned cells only'] = lambda: pix.cells(Q)
    row_of = np.empty(a.n, np.int64); row_of[np.asarray(pix.ids)] = np.arange(a.n)
    prow = np.sort(row_of[pix.search(penc(Q, 'query'), Q, a.candidates)[1]], axis=1)  # every candidate, as a row
    pbuf = np.empty((16 * prow.shape[1], d), np.float32)
    runs['partitioned gather only'] = lambda: [np.take(pix.floats, prow[s:s + 16].ravel(), axis=0, out=pbuf[:prow[s:s + 16].size])
                                               for s in range(0, len(prow), 16)]
    times, res = {n: [] for n in runs}, {}
    for r in range(a.reps):  # interleaved, the order turned each repetition (load drifts on a shared machine)
        for n in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t, res[n] = timed(runs[n]); times[n].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    exact = res['faiss'][1]
    base = min(('faiss', 'torch'), key=med.get)
    out = {'n': a.n, 'd': d, 'queries': a.q, 'k': a.k, 'bits': a.scale_bits, 'candidates': a.candidates,
           'threads': a.threads, 'clusters': max(1, a.n // a.per_cluster), 'spread': a.spread,
           'spectrum': 'real' if cov is not None else 'power law 1/i', 'eigenvalues_top8': [float(x) for x in eig[:8]],
           'data_seconds': round(t_data, 1), 'fit_seconds': round(t_fit, 1),
           'hash_fit_items': len(S), 'seconds': {n: [round(x, 4) for x in v] for n, v in times.items()},
           'median_seconds': med, 'baseline': base, 'torch_recall_vs_faiss': knn_recall(res['torch'][1], exact),
           'float_bytes': int(a.n * d * 4),
           'index_bytes': int(idx['learned'].index.ntotal * idx['learned'].bytes_per_item),
           'ivf': {'nlist': nlist, 'nprobe': a.nprobe,
                   'index_bytes': int(a.n * (a.scale_bits // 8 + 8) + nlist * a.scale_bits // 8)}}
    out['memory_ratio'] = out['float_bytes'] / out['index_bytes']
    for w in enc:
        out[w] = {'recall@k': knn_recall(res[w][1], exact), 'speedup': med[base] / med[w],
                  'hamming_only_recall@k': knn_recall(res[f'{w} hamming only'][1], exact)}
    out['ivf'].update({'recall@k': knn_recall(res['learned ivf'][1], exact), 'speedup': med[base] / med['learned ivf'],
                       'memory_ratio': out['float_bytes'] / out['ivf']['index_bytes']})
    out['partitioned'] = {'bits': a.part_bits, 'nlist': a.nlist, 'nprobe': nprobe, 'fit_seconds': round(t_pfit, 1),
                          'build_seconds': round(t_pbuild, 1), 'tune_queries': len(Qt), 'tune_recall_goal': a.tune_recall,
                          'tune_recall@k': {str(p_): r for p_, r in tune.items()},
                          'items_scanned_per_query': float(np.mean([(pix.offsets[c + 1] - pix.offsets[c]).sum()
                                                                    for c in pix.cells(Q)])),
                          'index_bytes': pix.memory_bytes, 'memory_ratio': out['float_bytes'] / pix.memory_bytes,
                          'recall@k': knn_recall(res['partitioned'][1], exact), 'speedup': med[base] / med['partitioned'],
                          'limits': {'cells_seconds': med['partitioned cells only'],
                                     'gather_seconds': med['partitioned gather only'],
                                     'scan_and_select_seconds': med['partitioned'] - med['partitioned cells only']
                                                                - med['partitioned gather only'],
                                     'speedup_bound_gather_only': med[base] / med['partitioned gather only']}}
    nq = a.n * a.q
    out['limits'] = {  # where the time goes, and the speed-ups that the costs measured here allow
        'ns_per_item_and_query': {'float exact': 1e9 * med[base] / nq, 'hamming scan': 1e9 * med['learned hamming only'] / nq},
        'hamming_top_c_seconds': med['learned hamming top-C'],
        'rerank_seconds': med['learned'] - med['learned hamming top-C'], 'gather_seconds': med['gather only'],
        # the speed-up if choosing the candidates cost nothing (only their rows read) / cost one scan of the codes
        'speedup_bound_free_candidates': med[base] / med['gather only'],
        'speedup_bound_flat_scan': med[base] / (med['learned hamming only'] + med['gather only']),
        'faiss_blas_speedup': med['faiss per-query loop'] / med['faiss']}
    out['load_1min'] = {'start': load0, 'end': os.getloadavg()[0]}
    out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del exact_ix, idx, ivf, pix; gc.collect()
    return out

def scale_goals(s: dict) -> dict:
    "Each scale goal for the flat codes (learned) and the IVF variant: value, goal, met"
    out = {}
    for name, r, mem in (('flat', s['learned'], s['memory_ratio']), ('ivf', s['ivf'], s['ivf']['memory_ratio']),
                         ('partitioned', s['partitioned'], s['partitioned']['memory_ratio'])):
        out[name] = {'speedup': {'value': r['speedup'], 'goal': GOAL_SPEEDUP, 'met': bool(r['speedup'] >= GOAL_SPEEDUP)},
                     'memory_ratio': {'value': mem, 'goal': GOAL_MEMORY, 'met': bool(mem >= GOAL_MEMORY)},
                     'recall@10': {'value': r['recall@k'], 'goal': GOAL_RECALL, 'met': bool(r['recall@k'] >= GOAL_RECALL)}}
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', default=None, help='folder with finished `cmrl train` runs unicode-s{0..5} (read-only)')
    p.add_argument('--work', default=None, help='folder for the manifests and the runs trained here')
    p.add_argument('--seeds', default='0,1,2,3,4,5',
                   help='seeds: the runs of these found in --runs, or trained into --work when fewer than --min-seeds')
    p.add_argument('--min-seeds', type=int, default=3)
    p.add_argument('--bits', default=','.join(map(str, BITS)))
    p.add_argument('--choose', action='store_true', help='score RECIPES on the valid part (the choice of the defaults)')
    p.add_argument('--no-real', action='store_true', help='skip the real-data part')
    p.add_argument('--n', type=int, default=1_000_000, help='gallery items at scale (0: skip)')
    p.add_argument('--q', type=int, default=1000, help='queries at scale')
    p.add_argument('--k', type=int, default=10)
    p.add_argument('--candidates', type=int, default=1000, help='Hamming neighbours re-ranked by float')
    p.add_argument('--scale-bits', type=int, default=64)
    p.add_argument('--per-cluster', type=int, default=100, help='gallery items per cluster')
    p.add_argument('--spread', type=float, default=0.5, help='within-cluster spread (relative to the centres)')
    p.add_argument('--nprobe', type=int, default=32, help='inverted lists scanned by the IVF variant')
    p.add_argument('--part-bits', type=int, default=48, help='code bits of the partitioned index')
    p.add_argument('--nlist', type=int, default=8192, help='cells of the partitioned index')
    p.add_argument('--nprobes', default='2,3,4,6,8,12,16,24,32', help='cells scanned per query, tried on the tuning queries')
    p.add_argument('--tune-recall', type=float, default=0.95,
                   help='the partitioned index scans the fewest cells whose recall on the tuning queries reaches this')
    p.add_argument('--hash-fit', type=int, default=20_000,
                   help='gallery items the head is fitted on (with their neighbours)')
    p.add_argument('--hash-epochs', type=int, default=30)
    p.add_argument('--reps', type=int, default=3, help='interleaved repetitions of every timed search')
    p.add_argument('--threads', type=int, default=1, help='torch and faiss threads (the same for every search)')
    p.add_argument('--quick', action='store_true', help='100 k items at scale, 2 repetitions, bits 16,64')
    p.add_argument('--merge', default='', help="comma-separated JSON files of earlier runs: their 'choice' / 'real' / "
                   "'scale' sections are kept where this run does not redo them (parts measured in parallel processes)")
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'hashing.json'))
    a = p.parse_args(argv)
    if a.quick: a.n, a.reps, a.bits = min(a.n, 100_000), 2, '16,64'
    a.bits = [int(b) for b in a.bits.split(',')]
    torch.set_num_threads(a.threads)
    from cmrl.data.splits import read_split, write_manifests
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-hashing-'))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / 'cmrl.jsonl'  # written below only where a part reads it (training, embeddings)
    spec_runs = (find_runs(Path(a.runs), range(6)) if a.runs else find_runs(work, range(6))) if a.n else {}
    if a.choose or not a.no_real or spec_runs:
        manifest = write_manifests(read_split(SPLIT_FILE), work)['paths']['cmrl']
    res = {'command': ' '.join(['python', 'benchmarks/hashing.py', *(argv if argv is not None else sys.argv[1:])]),
           'machine': dict(cpus=os.cpu_count(), load_1min=os.getloadavg()[0], python=platform.python_version(),
                           torch=torch.__version__,
                           threads=a.threads, processor=platform.processor() or platform.machine()),
           'split_file': str(SPLIT_FILE.relative_to(ROOT)), 'goals_doc': (
               f"64 bits, no re-ranking: learned >= LSH in every direction and >= {GOAL_RATIO} x float R@10 "
               f"(test part, mean over seeds); scale: Hamming + re-ranking >= {GOAL_SPEEDUP:.0f}x faster than exact "
               f"float, index >= {GOAL_MEMORY:.0f}x smaller, "
               f"recall@10 of the exact result >= {GOAL_RECALL}"), 'ssah_recipe': SSAH}
    outp = Path(a.out)
    old = json.loads(outp.read_text()) if outp.exists() else {}
    for f in [f for f in a.merge.split(',') if f]:
        old.update({k: v for k, v in json.loads(Path(f).read_text()).items() if k in ('choice', 'real', 'scale')})
    cmd = res['command']
    if a.choose:
        res['choice'] = real(a, manifest, RECIPES, 'valid')
        res['choice'].update(recipes=RECIPES, command=cmd)
        S = res['choice']['summary']
        rank = {n: float(np.mean([v['mean'] for k, v in S.items() if k.startswith(f'{n}/64/') and k.endswith('/R@10')]))
                for n in RECIPES}
        res['choice']['mean_R@10_64bits'], res['choice']['best'] = rank, max(rank, key=rank.get)
        print('\n'.join(f"{n:34s} {v:5.1f}" for n, v in sorted(rank.items(), key=lambda x: -x[1])))
    elif 'choice' in old: res['choice'] = old['choice']  # kept from the last --choose run
    if not a.no_real:
        def save(r):
            r.update(goals={str(B): real_goals(r, B) for B in a.bits}, command=cmd)
            outp.write_text(json.dumps({**res, 'real': r}, indent=1, default=float) + '\n')
        res['real'] = real(a, manifest, {'learned': {}, 'ssah': SSAH}, 'test', save)
    elif 'real' in old: res['real'] = old['real']
    if a.n:
        with tempfile.TemporaryDirectory(dir=a.work) as tmp:
            res['scale'] = scale(a, spectrum_of(spec_runs, manifest), Path(tmp) / 'gallery.npy')
        res['scale'].update(goals=scale_goals(res['scale']), command=cmd)
    elif 'scale' in old: res['scale'] = old['scale']
    lines = []
    if 'real' in res and '64' in res['real'].get('goals', {}):
        g = res['real']['goals']['64']
        lines.append(f"64 bits, learned >= lsh in {sum(v['beats_lsh'] for v in g.values())}/{len(g)} directions, "
                     f">= {GOAL_RATIO} x float in {sum(v['ge_0.8_float'] for v in g.values())}/{len(g)} "
                     f"({len(res['real']['seeds'])} seeds)")
        for d, v in g.items():
            if not v['beats_lsh']:
                print(f"  missed: {d} learned {v['learned']:.1f} < lsh {v['lsh']:.1f} (by {v['lsh'] - v['learned']:.1f})")
            if not v['ge_0.8_float']:
                print(f"  missed: {d} learned {v['learned']:.1f} < {GOAL_RATIO} x float {v['float']:.1f} "
                      f"(ratio {v['ratio_to_float']:.2f})")
    if 'scale' in res:
        s = res['scale']
        lines.append(f"scale {s['n']:,}: flat codes {s['learned']['speedup']:.1f}x faster than {s['baseline']}, memory "
                     f"{s['memory_ratio']:.1f}x, recall@{s['k']} {s['learned']['recall@k']:.3f} (lsh {s['lsh']['recall@k']:.3f}); "
                     f"ivf {s['ivf']['speedup']:.1f}x, {s['ivf']['memory_ratio']:.1f}x, {s['ivf']['recall@k']:.3f}; "
                     f"partitioned (nprobe {s['partitioned']['nprobe']}) {s['partitioned']['speedup']:.1f}x, "
                     f"{s['partitioned']['memory_ratio']:.1f}x, {s['partitioned']['recall@k']:.3f}")
        L = s['limits']
        print(f"  time: exact float {L['ns_per_item_and_query']['float exact']:.2f} ns per item and query, Hamming scan "
              f"{L['ns_per_item_and_query']['hamming scan']:.2f}; Hamming top-{s['candidates']} {L['hamming_top_c_seconds']:.3f} s, "
              f"re-rank {L['rerank_seconds']:.3f} s (gather alone {L['gather_seconds']:.3f} s); speed-up bounds: "
              f"{L['speedup_bound_flat_scan']:.1f}x (one scan of the codes + gather), {L['speedup_bound_free_candidates']:.1f}x "
              f"(gather only)", file=sys.stderr)
        if 'partitioned' in s:
            P_ = s['partitioned']['limits']
            print(f"  partitioned: cells {P_['cells_seconds']:.4f} s, Hamming scan + top-{s['candidates']} + re-rank compute "
                  f"{P_['scan_and_select_seconds']:.4f} s, reading the candidates' rows (cell order) {P_['gather_seconds']:.4f} s: "
                  f"bound {P_['speedup_bound_gather_only']:.1f}x", file=sys.stderr)
        for name, g in s['goals'].items():
            for k, v in g.items():
                if not v['met']:
                    print(f"  missed: scale {name} {k} {v['value']:.3g} < {v['goal']} (short by {v['goal'] - v['value']:.3g})")
    res['summary'] = 'hashing: ' + '; '.join(lines)
    outp.write_text(json.dumps(res, indent=1, default=float) + '\n')
    print(res['summary'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
