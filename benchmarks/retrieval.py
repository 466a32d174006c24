"""Retrieval benchmark: cmrl's exact index against faiss `IndexFlatIP` used directly, and bag-of-codes retrieval.

Gallery of N x D float32 embeddings (default 1,000,000 x 256), Q queries (default 1,000), top-k (default 10).
The data are structured like pooled outputs of a shared codebook: every item uses T codes drawn from a
topic; its embedding is the mean of those codes' vectors plus noise; the code path indexes the codes.

    python benchmarks/retrieval.py                      # the full run
    python benchmarks/retrieval.py --n 100000 --reps 3  # a quick one

Prints last: `retrieval: ratio cmrl/faiss = X, codes speedup = S, codes recall@10 = R`
(X = median over interleaved repetitions of cmrl exact search time / faiss search time; S = exact faiss
search time / code-index search time; R = fraction of the exact top-k that the code index finds).

Before it, the binary hash codes line (`--bits`, default 64; `--bits 0` skips it):
`hashing: B bits, memory per item b/8 B vs 4*D B float (ratio M), queries/s hamming H vs float F (speedup S),
recall@10 vs exact: learned RL, lsh RS` -- Hamming search over packed codes (`cmrl.eval.index.BinaryIndex`,
faiss `IndexBinaryFlat`) against the exact float search of the same run (its median time). The learned codes come from
a `HashHead` fitted (`fit_hash_head`) on `--hash-fit` gallery items paired with their exact nearest neighbour (there
are no modalities here: the pairs teach the head which items should share a code); LSH = random hyperplanes, same bits.
Queries/s is that of the learned codes; a detail line above gives both searches, and the two-stage variant (the Hamming
top-`--candidates` re-ranked by the float embeddings, as for the code index).
"""
from __future__ import annotations
import argparse, gc, statistics, time
import numpy as np
import scipy.sparse as sp


def make_data(n: int, q: int, d: int, K: int, T: int, topics: int, noise: float, seed: int = 0):
    "Gallery and queries: codes [n, T] from topics, embeddings = mean code vector + noise, float32"
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((K, d)).astype(np.float32) / np.sqrt(d)
    topic_codes = np.stack([rng.choice(K, 3 * T, replace=False) for _ in range(topics)])
    def items(m, chunk=200_000):
        codes = np.empty((m, T), np.int64); X = np.empty((m, d), np.float32)
        for s in range(0, m, chunk):
            e = min(m, s + chunk)
            t = rng.integers(0, topics, e - s)
            c = np.take_along_axis(topic_codes[t], rng.integers(0, 3 * T, (e - s, T)), 1)
            codes[s:e] = c
            bag = sp.csr_matrix((np.full(c.size, 1 / T, np.float32), (np.repeat(np.arange(e - s), T), c.ravel())), shape=(e - s, K))
            X[s:e] = bag @ E + noise / np.sqrt(d) * rng.standard_normal((e - s, d)).astype(np.float32)
        return codes, X
    gc_, G = items(n); qc, Q = items(q)
    return G, gc_, Q, qc


def timed(f):
    t = time.perf_counter(); r = f(); return time.perf_counter() - t, r


def hashing(a, G, Q, exact, t_float, faiss) -> str:
    "The binary hash codes line: learned codes and LSH at `a.bits` bits, Hamming search over all of `G`"
    import torch
    from cmrl.heads.hashing import fit_hash_head, lsh_codes, pack_codes
    from cmrl.eval.index import BinaryIndex, knn_recall, rerank
    B, n, d = a.bits, len(G), G.shape[1]
    # the learned head: pairs = sampled gallery items and their exact nearest neighbour among the sample (cosine)
    rng = np.random.default_rng(1)
    S = G[rng.choice(n, min(a.hash_fit, n), replace=False)].copy(); faiss.normalize_L2(S)
    ix = faiss.IndexFlatIP(d); ix.add(S)
    _, nn_ = ix.search(S, 2); del ix
    t_fit, head = timed(lambda: fit_hash_head({'query': S, 'gallery': S[nn_[:, 1]]}, bits=B, epochs=a.hash_epochs, bs=256, seed=0))
    def encode(X, m, chunk=200_000):  # packed codes, in chunks (bounded memory)
        return np.concatenate([pack_codes(head.encode({m: torch.from_numpy(X[s:s + chunk])})[m].numpy()) for s in range(0, len(X), chunk)])
    def lsh(X, chunk=200_000):
        return np.concatenate([pack_codes(lsh_codes(X[s:s + chunk], B, seed=0).numpy()) for s in range(0, len(X), chunk)])
    t_enc, (gl, gs) = timed(lambda: (encode(G, 'gallery'), lsh(G)))
    ql, qs = encode(Q, 'query'), lsh(Q)
    out = {}
    for name, gc_, qc in (('learned', gl, ql), ('lsh', gs, qs)):
        bx = BinaryIndex(B).add(gc_)
        bx.search(qc[:10], a.k)  # warm-up
        ts = []
        for _ in range(max(1, min(a.reps, 3))):
            t, (_, I) = timed(lambda: bx.search(qc, a.k)); ts.append(t)
        t_c, (_, C) = timed(lambda: bx.search(qc, a.candidates))
        t_r, (_, RI) = timed(lambda: rerank(Q, G, C, a.k))
        out[name] = (statistics.median(ts), knn_recall(I, exact), t_c + t_r, knn_recall(RI, exact))
        del bx
    t_h = out['learned'][0]
    print(f"hashing: head fitted on {len(S):,} neighbour pairs in {t_fit:.1f} s, codes of {n:,} items in {t_enc:.1f} s; "
          f"hamming search learned {out['learned'][0]:.3f} s, lsh {out['lsh'][0]:.3f} s, exact float {t_float:.3f} s", flush=True)
    print(f"hashing + re-rank of the top-{a.candidates} by embeddings: learned {out['learned'][2]:.3f} s, recall@{a.k} {out['learned'][3]:.3f}; "
          f"lsh {out['lsh'][2]:.3f} s, recall@{a.k} {out['lsh'][3]:.3f}", flush=True)
    return (f"hashing: {B} bits, memory per item {B // 8} B vs {4 * d} B float (ratio {4 * d / (B // 8):.0f}), "
            f"queries/s hamming {len(Q) / t_h:,.0f} vs float {len(Q) / t_float:,.0f} (speedup {t_float / t_h:.1f}), "
            f"recall@{a.k} vs exact: learned {out['learned'][1]:.3f}, lsh {out['lsh'][1]:.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=1_000_000, help='gallery size')
    p.add_argument('--d', type=int, default=256, help='embedding width')
    p.add_argument('--q', type=int, default=1000, help='queries')
    p.add_argument('--k', type=int, default=10, help='top-k')
    p.add_argument('--reps', type=int, default=5, help='interleaved repetitions of each exact search')
    p.add_argument('--codes', type=int, default=1024, help='codebook size K')
    p.add_argument('--steps', type=int, default=8, help='codes per item T')
    p.add_argument('--topics', type=int, default=2000, help='topics the items draw their codes from')
    p.add_argument('--noise', type=float, default=0.5, help='embedding noise (relative)')
    p.add_argument('--candidates', type=int, default=100, help='code-index candidates re-ranked by embeddings')
    p.add_argument('--threads', type=int, default=0, help='faiss OpenMP threads (0: faiss default)')
    p.add_argument('--bits', type=int, default=64, help='hash code length B (a multiple of 8; 0: skip the hashing line)')
    p.add_argument('--hash-fit', type=int, default=20_000, help='gallery items the hashing head is fitted on (with their nearest neighbours)')
    p.add_argument('--hash-epochs', type=int, default=10, help='epochs of the hashing head')
    a = p.parse_args(argv)
    import faiss
    from cmrl.eval.index import EmbeddingIndex, CodeIndex, knn_recall, rerank
    if a.threads: faiss.omp_set_num_threads(a.threads)
    print(f"gallery {a.n:,} x {a.d} float32, {a.q:,} queries, top-{a.k}, K={a.codes} codes x T={a.steps}, faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads", flush=True)
    t, (G, gcodes, Q, qcodes) = timed(lambda: make_data(a.n, a.q, a.d, a.codes, a.steps, a.topics, a.noise))
    print(f"data: {t:.1f} s", flush=True)

    # faiss used directly: normalise (cosine), IndexFlatIP
    Gn = G.copy(); faiss.normalize_L2(Gn)
    tb_f, fx = timed(lambda: (lambda ix: (ix.add(Gn), ix)[1])(faiss.IndexFlatIP(a.d)))
    del Gn; gc.collect()
    tb_c, cx = timed(lambda: EmbeddingIndex(a.d, 'flat', 'cos').add(G))
    print(f"build: faiss {tb_f:.2f} s, cmrl {tb_c:.2f} s", flush=True)

    def faiss_search():
        Qn = Q.copy(); faiss.normalize_L2(Qn)  # the same work cmrl does for cosine
        return fx.search(Qn, a.k)
    def cmrl_search(): return cx.search(Q, a.k)
    faiss_search(); cmrl_search()  # warm-up
    tf, tc = [], []
    for r in range(a.reps):  # interleaved, alternating which goes first
        for name in (('faiss', 'cmrl') if r % 2 == 0 else ('cmrl', 'faiss')):
            t, res = timed(faiss_search if name == 'faiss' else cmrl_search)
            (tf if name == 'faiss' else tc).append(t)
            if name == 'faiss': exact = res
            else: mine = res
    assert np.array_equal(exact[1], mine[1]) or knn_recall(mine[1], exact[1]) > 0.999, "cmrl and faiss disagree"
    t_f, t_c = statistics.median(tf), statistics.median(tc)
    ratio = statistics.median(c / f for c, f in zip(tc, tf))  # adjacent pairs: robust to load drifting on a shared machine
    print(f"exact search: faiss {t_f:.3f} s (reps {', '.join(f'{x:.3f}' for x in tf)}), "
          f"cmrl {t_c:.3f} s (reps {', '.join(f'{x:.3f}' for x in tc)})", flush=True)
    hash_line = hashing(a, G, Q, exact[1], t_f, faiss) if a.bits else None
    del fx; gc.collect()

    # the code path: bag-of-codes tf-idf through an inverted index
    tb_k, kx = timed(lambda: CodeIndex(a.codes).add(gcodes))
    tq = []
    for _ in range(max(1, min(a.reps, 3))):
        t, (ks, ki) = timed(lambda: kx.search(qcodes, a.k)); tq.append(t)
    t_k = statistics.median(tq)
    rec = knn_recall(ki, exact[1])
    print(f"codes: build {tb_k:.2f} s, search {t_k:.3f} s, recall@{a.k} vs exact {rec:.3f}", flush=True)
    t_r, (_, ci) = timed(lambda: kx.search(qcodes, a.candidates))
    t_rr, (_, ri) = timed(lambda: rerank(Q, G, ci, a.k))
    print(f"codes + re-rank of top-{a.candidates} by embeddings: search {t_r + t_rr:.3f} s, "
          f"speedup {t_f / (t_r + t_rr):.2f}, recall@{a.k} {knn_recall(ri, exact[1]):.3f}", flush=True)
    if hash_line: print(hash_line, flush=True)
    print(f"retrieval: ratio cmrl/faiss = {ratio:.3f}, codes speedup = {t_f / t_k:.2f}, codes recall@{a.k} = {rec:.3f}")


if __name__ == '__main__': main()
