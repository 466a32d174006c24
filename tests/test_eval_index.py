"faiss wrapper (exact, IVF, HNSW) and the bag-of-codes inverted index."
import math, numpy as np, pytest, torch
from cmrl.eval.index import EmbeddingIndex, CodeIndex, bag_of_codes, knn_recall, rerank

faiss = pytest.importorskip('faiss')


@pytest.fixture(scope='module')
def data():
    rng = np.random.default_rng(0)
    G = rng.standard_normal((3000, 24)).astype(np.float32)
    Q = rng.standard_normal((50, 24)).astype(np.float32)
    return G, Q


@pytest.mark.parametrize('metric', ['cos', 'ip'])
def test_flat_equals_faiss_and_bruteforce(data, metric):
    G, Q = data
    ix = EmbeddingIndex(24, metric=metric).add(torch.tensor(G))
    s, i = ix.search(Q, 7)
    Gm, Qm = (G, Q) if metric == 'ip' else (G / np.linalg.norm(G, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True))
    ref = faiss.IndexFlatIP(24); ref.add(np.ascontiguousarray(Gm)); rs, ri = ref.search(np.ascontiguousarray(Qm), 7)
    assert np.array_equal(i, ri) and np.allclose(s, rs, atol=1e-5)
    bf = Qm @ Gm.T
    assert np.array_equal(i[:, 0], bf.argmax(1))


@pytest.mark.parametrize('kind,kw,floor', [('ivf', dict(nlist=32, nprobe=8), 0.5), ('hnsw', dict(M=16, ef_search=128), 0.9)])
def test_approximate_recall(data, kind, kw, floor):
    G, Q = data
    _, ex = EmbeddingIndex(24).add(G).search(Q, 10)
    ap = EmbeddingIndex(24, kind, **kw).add(G)
    assert knn_recall(ap.search(Q, 10)[1], ex) >= floor


def test_ivf_needs_enough_vectors():
    with pytest.raises(ValueError, match='nlist=64'): EmbeddingIndex(8, 'ivf', nlist=64).add(np.random.rand(10, 8))


def test_k_larger_than_gallery(data):
    G, Q = data
    s, i = EmbeddingIndex(24).add(G[:3]).search(Q[:2], 5)
    assert (i[:, 3:] == -1).all() and EmbeddingIndex(24).add(G[:3]).ids_of(i)[0][3:] == [None, None]


def test_does_not_modify_inputs(data):
    G, Q = data
    g0, q0 = G.copy(), Q.copy()
    ix = EmbeddingIndex(24).add(G); ix.search(Q, 3)
    t = torch.tensor(G[:20]); t0 = t.clone(); EmbeddingIndex(24).add(t)
    assert np.array_equal(G, g0) and np.array_equal(Q, q0) and torch.equal(t, t0)


def test_bag_of_codes_negative_is_padding():
    m = bag_of_codes(torch.tensor([[1, 1, -1], [0, -1, -1]]), 3)
    assert m.toarray().tolist() == [[0, 2, 0], [1, 0, 0]]


@pytest.mark.parametrize('tf', ['log', 'raw', 'binary'])
@pytest.mark.parametrize('idf', [True, False])
def test_code_index_matches_dense_tfidf(tf, idf):
    rng = np.random.default_rng(1)
    K = 20
    gal = [rng.integers(0, K, rng.integers(1, 9)) for _ in range(60)]
    qry = [rng.integers(0, K, rng.integers(1, 6)) for _ in range(15)]
    ix = CodeIndex(K, tf=tf, idf=idf).add(gal)
    s, i = ix.search(qry, k=5)
    def dense(lists):
        c = np.zeros((len(lists), K))
        for r, l in enumerate(lists): np.add.at(c[r], l, 1)
        return c
    Cg, Cq = dense(gal), dense(qry)
    f = {'log': lambda c: np.where(c > 0, 1 + np.log(np.maximum(c, 1)), 0), 'raw': lambda c: c, 'binary': lambda c: (c > 0) * 1.}[tf]
    w = np.log((1 + 60) / (1 + (Cg > 0).sum(0))) + 1 if idf else np.ones(K)
    Wg, Wq = f(Cg) * w, f(Cq) * w
    Wg /= np.linalg.norm(Wg, axis=1, keepdims=True); Wq /= np.linalg.norm(Wq, axis=1, keepdims=True)
    S = Wq @ Wg.T
    for q in range(15):
        assert np.allclose(s[q][np.isfinite(s[q])], np.sort(S[q][S[q] > 0])[::-1][:5], atol=1e-5)
        valid = i[q] >= 0
        assert np.allclose(S[q, i[q][valid]], s[q][valid], atol=1e-5)


def test_code_index_cross_modal_lexical_match():
    # "image" items and "speech" items of the same concept share most codes
    rng = np.random.default_rng(2)
    concepts = rng.integers(0, 400, (50, 6))
    img = [rng.permutation(c)[:5] for c in concepts]
    sp = [np.concatenate([rng.permutation(c)[:4], rng.integers(0, 400, 3)]) for c in concepts]
    _, i = CodeIndex(400).add(img).search(sp, 1)
    assert (i[:, 0] == np.arange(50)).mean() > 0.9


def test_code_index_bad_input():
    with pytest.raises(ValueError, match='tf'): CodeIndex(4, tf='bm25')
    with pytest.raises(ValueError, match=r'\[0, 4\)'): CodeIndex(4).add([[5]])
    with pytest.raises(ValueError, match='ids'): CodeIndex(4).add([[1]], ids=['a', 'b'])
    with pytest.raises(ValueError, match='mask shape'): CodeIndex(4).add(np.zeros((2, 3), int), mask=np.ones((2, 2), bool))


def test_rerank_and_knn_recall(data):
    G, Q = data
    _, ex = EmbeddingIndex(24).add(G).search(Q, 5)
    cand = np.concatenate([ex[:, ::-1], np.full((50, 2), -1)], 1)
    s, i = rerank(Q, G, cand, 5)
    assert np.array_equal(i, ex) and knn_recall(i, ex) == 1.
    assert knn_recall(np.full((50, 5), -1), ex) == 0.
