"""Retrieval benchmark: cmrl's exact index against faiss `IndexFlatIP` used directly, and bag-of-codes retrieval.

Gallery of N x D float32 embeddings (default 1,000,000 x 256), Q queries (default 1,000), top-k (default 10).
The data are structured like pooled outputs of a shared codebook: every item uses T codes drawn from a
topic; its embedding is the mean of those codes' vectors plus noise; the code path indexes the codes.

    python benchmarks/retrieval.py                      # the full run
    python benchmarks/retrieval.py --n 100000 --reps 3  # a quick one

Prints last: `retrieval: ratio cmrl/faiss = X, codes speedup = S, codes recall@10 = R`
(X = median over interleaved repetitions of cmrl exact search time / faiss search time; S = exact faiss
search time / code-index search time; R = fraction of the exact top-k that the code index finds).
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
    print(f"retrieval: ratio cmrl/faiss = {ratio:.3f}, codes speedup = {t_f / t_k:.2f}, codes recall@{a.k} = {rec:.3f}")


if __name__ == '__main__': main()
