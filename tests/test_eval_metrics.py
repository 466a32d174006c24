"Retrieval metrics on hand-made similarity matrices with known ranks; chance levels; relevance and masks."
import math, warnings
import numpy as np, pytest, torch
from cmrl.metrics import (retrieval_ranks, retrieval_metrics, chance_metrics, relevance, similarity,
                               cross_modal_retrieval, fit_length_model, length_similarity)


def test_known_ranks_permutation():
    # sim[q] ranks the gallery in a known order: the partner of query q is put at position q (0-based)
    G = 12
    sim = torch.zeros(G, G)
    for q in range(G):
        order = [j for j in range(G) if j != q]
        order.insert(q, q)  # partner at rank q+1
        for pos, j in enumerate(order): sim[q, j] = G - pos
    rk = retrieval_ranks(sim, torch.eye(G, dtype=torch.bool))
    assert rk.tolist() == [float(q + 1) for q in range(G)]
    m = retrieval_metrics(sim, torch.eye(G, dtype=torch.bool))
    assert m['R@1'] == pytest.approx(100 / 12) and m['R@5'] == pytest.approx(500 / 12) and m['R@10'] == pytest.approx(1000 / 12)
    assert m['medr'] == 6.0  # torch median takes the lower middle of 1..12
    assert m['meanr'] == pytest.approx(6.5)


@pytest.mark.parametrize('ties,expected', [('pessimistic', [4., 1.]), ('optimistic', [1., 1.]), ('mean', [2.5, 1.])])
def test_ties(ties, expected):
    sim = torch.tensor([[1., 1., 1., 1.], [5., 1., 2., 3.]])
    rel = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0]]).bool()
    assert retrieval_ranks(sim, rel, ties=ties).tolist() == expected


def test_multiple_relevant_and_mask():
    sim = torch.tensor([[0.1, 0.9, 0.8, 0.7, 0.2]])
    rel = torch.tensor([[1, 0, 0, 1, 0]]).bool()  # best relevant: 0.7 -> two negatives above
    assert retrieval_ranks(sim, rel).item() == 3.
    ign = torch.tensor([[0, 1, 0, 0, 0]]).bool()
    assert retrieval_ranks(sim, rel, ign).item() == 2.
    ign2 = torch.tensor([[0, 1, 1, 0, 0]]).bool()
    assert retrieval_ranks(sim, rel, ign2).item() == 1.


def test_numpy_inputs_and_chunks():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((37, 50)); r = np.eye(37, 50, dtype=bool)
    a, b = retrieval_ranks(s, r), retrieval_ranks(torch.tensor(s), torch.tensor(r), chunk=5)
    assert torch.equal(a, b)
    # brute-force reference
    ref = [1 + sum(s[q, j] >= s[q, q] for j in range(50) if j != q) for q in range(37)]
    assert a.tolist() == [float(x) for x in ref]


def test_skipped_queries_warn_once():
    rel = torch.zeros(4, 3, dtype=torch.bool); rel[0, 0] = rel[1, 1] = True
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        m = retrieval_metrics(torch.rand(4, 3), rel)
    assert m['n'] == 2 and m['skipped'] == 2 and len(w) == 1 and '2 of 4' in str(w[0].message)


def test_bad_inputs():
    with pytest.raises(ValueError, match='same shape'): retrieval_ranks(torch.rand(2, 3), torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match='NaN'): retrieval_ranks(torch.tensor([[math.nan, 1.]]), torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="'item' or 'group'"): relevance([1], [1], match='stamp')
    with pytest.raises(ValueError, match='both'): relevance([1], [1], q_groups=[1])
    with pytest.raises(ValueError, match="'cos' or 'dot'"): similarity(torch.rand(2, 3), torch.rand(2, 3), 'l2')


@pytest.mark.parametrize('G,r,k', [(10, 1, 1), (10, 1, 5), (30, 3, 5), (7, 2, 10), (100, 1, 10)])
def test_chance_exact(G, r, k):
    rel = torch.zeros(1, G, dtype=torch.bool); rel[0, :r] = True
    n = G - r
    miss = math.comb(n, k) / math.comb(G, k) if n >= k else 0.
    c = chance_metrics(rel, ks=(k,))
    assert c[f'R@{k}'] == pytest.approx(100 * (1 - miss), abs=1e-6)
    assert c['meanr'] == pytest.approx(1 + n / (r + 1))


def test_chance_matches_random_rankings():
    g = torch.Generator().manual_seed(0)
    rel = torch.rand(2000, 40, generator=g) < 0.05; rel[:, 3] = True
    m = retrieval_metrics(torch.rand(2000, 40, generator=g), rel)
    c = chance_metrics(rel)
    for k in ('R@1', 'R@5', 'R@10'): assert m[k] == pytest.approx(c[k], abs=2.5)
    assert m['meanr'] == pytest.approx(c['meanr'], rel=0.05)


def test_cross_modal_false_negative_mask():
    # 5 stamps x 2 languages; speech differs per language, the image is the same for both languages
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 16, generator=g)
    img = torch.cat([base, base]); sp = img + 0.01 * torch.randn(10, 16, generator=g)
    ids = [f's{i}-fr' for i in range(5)] + [f's{i}-es' for i in range(5)]
    grp = [f's{i}' for i in range(5)] * 2
    embs = {'image': img, 'speech': sp}
    masked = cross_modal_retrieval(embs, ids, grp)
    assert masked['image->speech']['R@1'] == 100. and masked['speech->image']['R@1'] == 100.
    # without groups, the twin image is a negative that ties (identical image): speech->image loses rank 1 for half the queries
    plain = cross_modal_retrieval(embs, ids)
    assert plain['speech->image']['R@1'] < 100.
    assert masked['image->speech']['chance']['R@1'] == pytest.approx(100 / 9)


def test_cross_modal_directions_subset_and_dot():
    e = {'a': torch.eye(4), 'b': 2 * torch.eye(4), 'c': torch.ones(4, 4)}
    r = cross_modal_retrieval(e, directions=[('a', 'b')], metric='dot', chance=False)
    assert list(r) == ['a->b'] and r['a->b']['R@1'] == 100. and 'chance' not in r['a->b']
    with pytest.raises(KeyError, match='no embeddings'): cross_modal_retrieval(e, directions=[('a', 'z')])


def test_length_reference_ranks_by_gap():
    rng = np.random.default_rng(0)
    L = rng.integers(5, 80, 200); d = 0.06 * L + 0.4 + 0.05 * rng.standard_normal(200)
    a, b = fit_length_model(d[:100], L[:100])
    assert a == pytest.approx(0.06, abs=0.005) and b == pytest.approx(0.4, abs=0.1)
    S = length_similarity(d[100:], L[100:], a, b)
    m = retrieval_metrics(S, torch.eye(100, dtype=torch.bool))
    assert m['R@10'] > 30  # far above chance (10) with no learning
    assert retrieval_metrics(S.T, torch.eye(100, dtype=torch.bool))['R@10'] > 30
    with pytest.raises(ValueError, match='at least 2'): fit_length_model([1.], [2.])
