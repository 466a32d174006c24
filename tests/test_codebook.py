"""Numerics, options, masks, mixed precision and bad inputs of `cmrl.codebook` (the notebook holds the worked examples)."""
import math
import pytest
import torch
import torch.nn.functional as F
from cmrl.codebook import (SharedCodebook, CodebookOutput, CodeUsage, nearest_code, code_histogram, perplexity, used_fraction,
                           dead_codes, item_modes, code_agreement, usage_stats)


def clusters(n_per: int, centres: torch.Tensor, std: float = 0.05, seed: int = 0) -> torch.Tensor:
    "`n_per` points around each centre, shuffled"
    g = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(n_per, 0) + std * torch.randn(n_per * len(centres), centres.shape[1], generator=g)
    return x[torch.randperm(len(x), generator=g)]


def match(codes: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    "For each centre, the distance to its nearest code"
    return torch.cdist(centres, codes).min(1).values


CENTRES = torch.tensor([[4., 0, 0, 0], [0, 4., 0, 0], [0, 0, 4., 0], [-4., -4., 0, 4.]])


# ---------------------------------------------------------------- assignment
@pytest.mark.parametrize('K', [7, 64, 256, 1000])
@pytest.mark.parametrize('chunk', [None, 5, 64])
def test_nearest_code_matches_brute_force(K, chunk):
    g = torch.Generator().manual_seed(K)
    z, e = torch.randn(300, 16, generator=g), torch.randn(K, 16, generator=g)
    ref = torch.cdist(z, e).argmin(1)
    got = nearest_code(z, e, e.pow(2).sum(1).mul(-0.5), chunk=chunk)
    test = (got == ref).float().mean()
    assert test == 1.0
    # cosine: unit codes, no norm term
    zn, en = F.normalize(z, dim=-1), F.normalize(e, dim=-1)
    assert (nearest_code(zn, en, None, chunk=chunk) == (zn @ en.T).argmax(1)).all()


def test_nearest_code_ties_pick_first():
    e = torch.tensor([[1., 0], [1., 0], [0, 1.]]).repeat(64, 1)  # K = 192: the two-level CPU argmax path
    z = torch.tensor([[2., 0], [0, 3.]])
    assert nearest_code(z, e, e.pow(2).sum(1).mul(-0.5)).tolist() == [0, 2]


# ---------------------------------------------------------------- EMA
@pytest.mark.parametrize('init', ['kmeans', 'data'])
def test_ema_converges_to_cluster_means(init):
    cb = SharedCodebook(4, 4, init=init, decay=0.9, dead_after=20, seed=1).train()
    for s in range(150): cb(clusters(64, CENTRES, seed=s))
    assert match(cb.embed, CENTRES).max() < 0.02
    # the counts track the batch share of each code: 64 per step, Laplace smoothing aside
    test_close = torch.allclose(cb.cluster_size.sort().values, torch.full((4,), 64.), atol=1.)
    assert test_close


def test_ema_one_step_by_hand():
    "N <- γN + (1-γ)n, m <- γm + (1-γ)Σz, e = m / Laplace(N)"
    cb = SharedCodebook(2, 1, init='random', decay=0.5, eps=0., dead_after=0).train()
    cb.embed.copy_(torch.tensor([[0.], [10.]])); cb.embed_sum.copy_(cb.embed); cb.cluster_size.fill_(1.)
    cb(torch.tensor([[1.], [2.], [9.]]))
    # code 0: N = .5 + .5*2 = 1.5, m = .5*0 + .5*3 = 1.5 -> 1; code 1: N = .5 + .5 = 1, m = 5 + 4.5 = 9.5 -> 9.5
    assert torch.allclose(cb.cluster_size, torch.tensor([1.5, 1.]))
    assert torch.allclose(cb.embed.squeeze(), torch.tensor([1., 9.5]))


def test_laplace_smoothing_by_hand():
    cb = SharedCodebook(3, 1, init='random', decay=0., eps=0.5, dead_after=0).train()
    cb.embed.copy_(torch.tensor([[0.], [10.], [100.]]))
    cb(torch.tensor([[1.], [1.], [11.]]))
    # N = (2, 1, 0); n = 3; smoothed = (N + .5) / (3 + 1.5) * 3 = (5/3, 1, 1/3); m = (2, 11, 0)
    assert torch.allclose(cb.embed.squeeze(), torch.tensor([2 / (5 / 3), 11., 0.]))


def test_no_update_in_eval_or_when_asked():
    cb = SharedCodebook(8, 4, init='data')
    x = torch.randn(50, 4)
    before = {k: v.clone() for k, v in cb.state_dict().items()}
    cb.eval(); cb(x)
    cb.train(); cb(x, update=False)
    for k, v in cb.state_dict().items(): assert torch.equal(v, before[k]), k
    cb(x)
    assert int(cb.steps) == 1 and bool(cb.initted)


def test_kmeans_init_beats_data_init():
    x = clusters(50, torch.randn(16, 8) * 3, std=0.2)
    err = {}
    for init in ('kmeans', 'data'):
        cb = SharedCodebook(16, 8, init=init, seed=3).train()
        cb(x, update=True)
        err[init] = float(cb(x, update=False).losses['commit'])
    assert err['kmeans'] < err['data']


def test_same_seed_same_codebook():
    x = torch.randn(200, 8)
    a, b = SharedCodebook(16, 8, seed=5).train(), SharedCodebook(16, 8, seed=5).train()
    for _ in range(3): a(x); b(x)
    assert torch.equal(a.embed, b.embed)


# ---------------------------------------------------------------- dead codes
def test_dead_codes_revived():
    far = torch.full((8, 4), 50.)  # every initial code far from the data: only one will ever win
    far[:, 0] = torch.arange(8.) * 10 + 50
    cb = SharedCodebook(8, 4, init='random', dead_after=3, decay=0.9).train()
    cb.embed.copy_(far); cb.embed_sum.copy_(far)
    for s in range(2): out = cb(clusters(16, CENTRES, seed=s))
    assert float(out.stats['used']) == 1 / 8 and int(cb.dead_count()) == 0  # one winner; not dead yet
    out = cb(clusters(16, CENTRES, seed=2))  # third unused step: the 7 losers are re-seeded from this batch
    assert int(out.stats['codebook/dead']) == 0 and (cb.embed[1:] < 10).all()
    for s in range(3, 40): out = cb(clusters(16, CENTRES, seed=s))
    # revived codes now lie among the data and cover every cluster
    assert match(cb.embed, CENTRES).max() < 0.5
    assert int(out.stats['codebook/dead']) < 8


def test_dead_codes_stay_without_reset():
    far = torch.full((8, 4), 50.); far[:, 0] = torch.arange(8.) * 10 + 50
    cb = SharedCodebook(8, 4, init='random', dead_after=3, reset_dead=False).train()
    cb.embed.copy_(far); cb.embed_sum.copy_(far)
    for s in range(6): out = cb(clusters(16, CENTRES, seed=s))
    assert int(out.stats['codebook/dead']) == 7  # all but the one winner
    assert (cb.embed[1:] > 49).all()  # unused codes keep their place (Laplace smoothing nudges them slightly)


# ---------------------------------------------------------------- gradients
def test_straight_through_is_identity():
    cb = SharedCodebook(16, 8, beta=0., init='random').eval()
    z = torch.randn(4, 5, 8, requires_grad=True)
    g = torch.randn(4, 5, 8)
    out = cb({'audio': z})
    (out.quantized['audio'] * g).sum().backward()
    assert torch.equal(z.grad, g)
    assert torch.equal(out.quantized['audio'], cb.lookup(out.indices['audio']))  # the forward value is the code


def test_commitment_gradient():
    cb = SharedCodebook(16, 8, beta=0.25, init='data').eval()
    z = torch.randn(30, 8, requires_grad=True)
    out = cb(z)
    q = F.embedding(out.indices, cb.embed)
    test = torch.allclose(out.loss, 0.25 * F.mse_loss(z, q))
    assert test
    (out.quantized.sum() + out.loss).backward()
    assert torch.allclose(z.grad, 1 + 0.25 * 2 * (z - q).detach() / z.numel(), atol=1e-6)


def test_gradcheck_commit_and_probs():
    cb = SharedCodebook(6, 3, init='data', tau=0.7).double().eval()
    cb.embed.copy_(torch.randn(6, 3, dtype=torch.float64))
    z = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    def f(z):
        out = cb({'a': z}, {'a': mask}, probs=True)
        return out.loss, out.probs['a']
    # float32 inside (distances under autocast rules): compare against float32-accurate finite differences
    with torch.no_grad(): base = f(z)
    loss, P = f(z)
    (gl,) = torch.autograd.grad(loss, z)
    h = 1e-3
    for i in [(0, 0, 0), (0, 2, 1), (1, 0, 2)]:
        zp, zm = z.detach().clone(), z.detach().clone()
        zp[i] += h; zm[i] -= h
        num = (f(zp)[0] - f(zm)[0]) / (2 * h)
        assert abs(float(num) - float(gl[i])) < 1e-3
    assert float(gl[0, 3].abs().sum()) == 0 and float(gl[1, 1:].abs().sum()) == 0  # padded steps get no gradient


# ---------------------------------------------------------------- statistics
def test_perplexity_values():
    assert math.isclose(float(perplexity(torch.ones(37))), 37, rel_tol=1e-5)
    assert math.isclose(float(perplexity(torch.tensor([5., 0, 0]))), 1.)
    assert math.isclose(float(perplexity(torch.tensor([2., 2, 0, 0]))), 2., rel_tol=1e-6)
    assert float(perplexity(torch.zeros(4))) == 0.
    # uniform assignment through the module: every code used equally often
    K = 32
    cb = SharedCodebook(K, K, init='random', probs=False).eval()
    cb.embed.copy_(torch.eye(K) * 5)
    out = cb(torch.eye(K).repeat(3, 1) * 5)
    assert math.isclose(float(out.stats['perplexity']), K, rel_tol=1e-5)
    assert float(out.stats['used']) == 1. and int(out.stats['dead']) == 0


def test_histogram_modes_agreement():
    idx = torch.tensor([[1, 1, 2, -1], [3, 3, 3, 0], [-1, -1, -1, -1]])
    assert code_histogram(idx, 5).tolist() == [1, 2, 1, 3, 0]
    assert item_modes(idx, 5).tolist() == [1, 3, -1]
    assert item_modes(torch.tensor([[2, 1, 1, 2]]), 4).tolist() == [1]  # ties: the smallest code
    assert used_fraction(code_histogram(idx, 5)) == 0.8 and dead_codes(code_histogram(idx, 5)) == 1
    a, b = torch.tensor([1, 3, -1, 2]), torch.tensor([1, 0, 4, 2])
    assert math.isclose(float(code_agreement(a, b)), 2 / 3, rel_tol=1e-6)
    assert math.isnan(float(code_agreement(torch.tensor([-1]), torch.tensor([2]))))
    st = usage_stats({'audio': idx, 'video': torch.tensor([[1, 0, 0, 0], [3, -1, -1, -1], [2, 2, 2, 2]])}, 5)
    assert math.isclose(float(st['audio-video/agreement']), 0.5)
    assert int(st['all/dead']) == 1


def test_code_usage_accumulates_and_aligns_items():
    u = CodeUsage(4)
    u.update({'a': torch.tensor([[0, 0], [1, 1]]), 'b': torch.tensor([[0, -1], [2, 2]])})
    u.update({'a': torch.tensor([[3, 3]])})  # b absent from this batch
    u.update({'a': torch.tensor([[2, 2]]), 'b': torch.tensor([[2, 1]]), 'c': torch.tensor([[2, 2]])})
    st = u.compute()
    assert st['a/used'] == 1. and math.isclose(float(st['b/used']), 0.75)
    assert math.isclose(float(st['a-b/agreement']), 1 / 3, rel_tol=1e-6)  # items 0 (0=0), 1 (1≠2), 3 (2≠1); item 2 lacks b
    assert float(st['a-c/agreement']) == 1.
    u.reset(); assert u.compute() == {}


def test_stats_in_output():
    cb = SharedCodebook(8, 4, init='data').train()
    z = {'audio': torch.randn(3, 5, 4), 'video': torch.randn(3, 5, 4)}
    out = cb(z)
    for k in ('audio/perplexity', 'video/used', 'all/perplexity', 'audio-video/agreement', 'codebook/dead'): assert k in out.stats
    ref = usage_stats(out.indices, 8)
    for k, v in ref.items(): assert torch.allclose(out.stats[k].float(), v.float(), equal_nan=True), k


# ---------------------------------------------------------------- masks
def test_padding_never_moves_the_codebook():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 8, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.4
    zbad = z.clone(); zbad[~mask] = 1e4  # garbage at padded steps
    a = SharedCodebook(16, 8, init='kmeans', dead_after=2).train()
    b = SharedCodebook(16, 8, init='kmeans', dead_after=2).train()
    for _ in range(4):
        oa = a({'audio': zbad}, {'audio': mask})
        ob = b({'audio': z[mask][None]})  # only the valid steps, as one sequence
    assert torch.allclose(a.embed, b.embed) and torch.equal(a.cluster_size, b.cluster_size)
    assert (oa.indices['audio'][~mask] == -1).all() and (oa.indices['audio'][mask] >= 0).all()
    assert torch.isclose(oa.loss, ob.loss)


def test_absent_modality_neither_updates_nor_counts():
    g = torch.Generator().manual_seed(1)
    a, v = torch.randn(3, 4, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    present = torch.tensor([True, False, True])
    cb1, cb2 = SharedCodebook(16, 8, init='data').train(), SharedCodebook(16, 8, init='data').train()
    vbad = v.clone(); vbad[1] = 1e4
    o1 = cb1({'audio': a, 'video': vbad}, present={'video': present})
    cb2({'audio': a, 'video': v[present]})
    # same vectors reach the EMA (item order differs but sums do not)
    assert torch.allclose(cb1.embed, cb2.embed, atol=1e-6) and torch.allclose(cb1.cluster_size, cb2.cluster_size)
    assert (o1.indices['video'][1] == -1).all()
    assert int(code_histogram(o1.indices['video'], 16).sum()) == 8


def test_masked_probs_average_valid_steps_only():
    cb = SharedCodebook(5, 3, init='random', tau=0.5).eval()
    z = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    P = cb({'a': z}, {'a': mask}).probs['a']
    d = torch.cdist(z, cb.embed.expand(2, 5, 3)).pow(2)
    p = torch.softmax(-d / 0.5, -1)
    assert torch.allclose(P[0], p[0, :2].mean(0), atol=1e-5) and torch.allclose(P[1], p[1].mean(0), atol=1e-5)
    assert torch.allclose(P.sum(1), torch.ones(2))


def test_probs_sqrt_option():
    cb = SharedCodebook(5, 3, init='random', probs_sqrt=True).eval()
    z = torch.randn(1, 2, 3)
    P = cb({'a': z}).probs['a']
    d = torch.cdist(z, cb.embed[None])
    assert torch.allclose(P[0], torch.softmax(-d[0], -1).mean(0), atol=1e-5)


# ---------------------------------------------------------------- cross-modal parts
def _fixed(K=4, D=2, **kw):
    cb = SharedCodebook(K, D, init='random', **kw).eval()
    cb.embed.copy_(torch.tensor([[0., 0], [4, 0], [0, 4], [4, 4]])[:K])
    return cb


def test_cross_commit_by_hand():
    za = torch.tensor([[[1., 0], [4, 1]]])  # codes 0, 1
    zv = torch.tensor([[[0., 3], [3, 0]]])  # codes 2, 1
    for name, (wo, wc) in {'reference': (2., .5), 'paper': (1., .5), (3., 1.): (3., 1.)}.items():
        cb = _fixed(cross_commit=name, beta=0.25)
        out = cb({'audio': za, 'video': zv})
        # own: audio ((1² + 0) + (0 + 1²)) / 4 = .5; cross audio->video codes (0,4),(4,0): (1+16 + 0+1) / 4 = 4.5
        assert torch.isclose(out.losses['commit/audio'], torch.tensor(0.25 * wo * 0.5))
        assert torch.isclose(out.losses['cross_commit/audio'], torch.tensor(0.25 * wc * 4.5))
        # video own: (0+1 + 1+0)/4 = .5; cross video->audio codes (0,0),(4,0): (0+9 + 1+0)/4 = 2.5
        assert torch.isclose(out.losses['cross_commit/video'], torch.tensor(0.25 * wc * 2.5))
        assert torch.isclose(out.loss, sum(out.losses.values()))


def test_cross_commit_skips_invalid_pairs():
    za, zv = torch.tensor([[[1., 0], [4, 1]]]), torch.tensor([[[0., 3], [3, 0]]])
    cb = _fixed(cross_commit='paper', beta=1.)
    out = cb({'audio': za, 'video': zv}, {'video': torch.tensor([[True, False]])})
    assert torch.isclose(out.losses['cross_commit/audio'], torch.tensor(0.5 * (1 + 16) / 2))
    out = cb({'audio': za, 'video': zv}, present={'video': torch.tensor([False])})
    assert float(out.losses['cross_commit/audio']) == 0. and float(out.losses['commit/video']) == 0.


def _mm_step(variant, z, **kw):
    cb = SharedCodebook(4, 2, init='random', decay=0., eps=1e-9, dead_after=0, mm_ema=variant, **kw).train()
    cb.embed.copy_(torch.tensor([[0., 0], [4, 0], [0, 4], [4, 4]]))
    out = cb(z)
    return cb, out


def test_mm_ema_reference_by_hand():
    za = torch.tensor([[[1., 0], [4, 1]]])  # codes 0, 1
    zv = torch.tensor([[[0., 3], [3, 0]]])  # codes 2, 1
    cb, _ = _mm_step('reference', {'audio': za, 'video': zv})
    # code 0: audio t0 -> ½(1,0) + ½(0,3) = (.5, 1.5); code 2: video t0 -> ½(0,3) + ½(1,0) = (.5, 1.5)
    # code 1: audio t1 -> ½(4,1)+½(3,0) = (3.5,.5); video t1 -> ½(3,0)+½(4,1) = (3.5,.5): mean (3.5, .5)
    assert torch.allclose(cb.embed[:3], torch.tensor([[.5, 1.5], [3.5, .5], [.5, 1.5]]), atol=1e-4)
    # three modalities: ½ own, ¼ each other
    zt = torch.tensor([[[0., 0], [8, 8]]])  # codes 0, 3
    cb, _ = _mm_step('reference', {'audio': za, 'video': zv, 'text': zt})
    # code 3: text t1 -> ½(8,8) + ¼(4,1) + ¼(3,0) = (5.75, 4.25)
    assert torch.allclose(cb.embed[3], torch.tensor([5.75, 4.25]), atol=1e-4)


def test_mm_ema_paper_cross_attention():
    za = torch.tensor([[[1., 0], [4, 1]]]); zv = torch.tensor([[[0., 3], [3, 0]]])
    cb, _ = _mm_step('paper', {'audio': za, 'video': zv})
    # r_audio(t) = Σ_s softmax_s(z_a(t)·z_v(s) / √2) z_v(s)
    w = torch.softmax(za[0] @ zv[0].T / math.sqrt(2), -1); r_a = w @ zv[0]
    w = torch.softmax(zv[0] @ za[0].T / math.sqrt(2), -1); r_v = w @ za[0]
    e0 = 0.5 * za[0, 0] + 0.5 * r_a[0]
    e2 = 0.5 * zv[0, 0] + 0.5 * r_v[0]
    e1 = ((0.5 * za[0, 1] + 0.5 * r_a[1]) + (0.5 * zv[0, 1] + 0.5 * r_v[1])) / 2
    assert torch.allclose(cb.embed[:3], torch.stack([e0, e1, e2]), atol=1e-4)
    # with one time step, attention has a single key: the paper variant equals the reference one
    a1, v1 = za[:, :1], zv[:, :1]
    assert torch.allclose(_mm_step('paper', {'a': a1, 'v': v1})[0].embed, _mm_step('reference', {'a': a1, 'v': v1})[0].embed)


def test_mm_ema_paper_handles_different_lengths_and_masks():
    g = torch.Generator().manual_seed(2)
    z = {'audio': torch.randn(3, 7, 2, generator=g), 'video': torch.randn(3, 4, 2, generator=g)}
    mask = {'audio': torch.arange(7)[None] < torch.tensor([[7], [3], [1]])}
    cb, out = _mm_step('paper', z)
    cb2, out2 = _mm_step('paper', z)
    assert torch.isfinite(cb.embed).all()
    cbm = SharedCodebook(4, 2, init='random', mm_ema='paper').train()
    zb = {k: v.clone() for k, v in z.items()}; zb['audio'][~mask['audio']] = 1e4
    cbm(zb, mask); assert torch.isfinite(cbm.embed).all() and cbm.embed.abs().max() < 100
    with pytest.warns(UserWarning, match='same T'):
        SharedCodebook(4, 2, init='random', mm_ema='reference').train()(z)


def test_mm_ema_absent_partner_falls_back_to_own_vector():
    za = torch.tensor([[[1., 0]], [[4., 1]]]); zv = torch.tensor([[[0., 3]], [[3., 0]]])
    cb = SharedCodebook(4, 2, init='random', decay=0., eps=1e-9, dead_after=0, mm_ema='reference').train()
    cb.embed.copy_(torch.tensor([[0., 0], [4, 0], [0, 4], [4, 4]]))
    cb({'audio': za, 'video': zv}, present={'video': torch.tensor([True, False])})
    assert torch.allclose(cb.embed[0], torch.tensor([.5, 1.5]), atol=1e-4)  # item 0: mixed with video
    assert torch.allclose(cb.embed[1], torch.tensor([4., 1.]), atol=1e-4)  # item 1: video absent, own vector only


def test_cross_parts_need_paired_batches():
    z = {'audio': torch.randn(2, 3, 4), 'video': torch.randn(3, 3, 4)}
    with pytest.raises(ValueError, match='paired'): SharedCodebook(8, 4, cross_commit='reference')(z)
    with pytest.raises(ValueError, match='paired'): SharedCodebook(8, 4, mm_ema='paper').train()(z)
    SharedCodebook(8, 4).train()(z)  # plain EMA pools unpaired modalities fine


# ---------------------------------------------------------------- cosine, shapes, precision, state
def test_cosine_codes_stay_on_the_sphere():
    cb = SharedCodebook(8, 4, cosine=True, init='kmeans').train()
    for s in range(5): out = cb(clusters(16, CENTRES, seed=s) * 3)
    assert torch.allclose(cb.embed.norm(dim=-1), torch.ones(8), atol=1e-5)
    assert torch.allclose(out.quantized.norm(dim=-1), torch.ones(64), atol=1e-5)
    assert match(cb.embed, F.normalize(CENTRES, dim=-1)).max() < 0.05


@pytest.mark.parametrize('shape', [(10, 4), (2, 5, 4), (2, 3, 2, 4)])
def test_single_tensor_shapes(shape):
    cb = SharedCodebook(8, 4, init='data').train()
    out = cb(torch.randn(*shape))
    assert isinstance(out, CodebookOutput)
    assert out.quantized.shape == shape and out.indices.shape == shape[:-1]
    assert out.probs.shape == (shape[0], 8) and set(out.losses) == {'commit'}
    assert cb.encode(torch.randn(*shape)).shape == shape[:-1]


def test_encode_and_lookup():
    cb = SharedCodebook(8, 4, init='random')
    z = torch.randn(3, 5, 4)
    mask = torch.rand(3, 5) > 0.3
    i = cb.encode(z, mask)
    assert torch.equal(i, cb(z, mask).indices)
    e = cb.lookup(i)
    assert (e[~mask] == 0).all() and torch.equal(e[mask], cb.embed[i[mask]])


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_autocast_no_nan_and_float32_distances(dtype):
    cb = SharedCodebook(64, 32, init='kmeans', cross_commit='reference', mm_ema='paper').train()
    lin = torch.nn.Linear(16, 32)
    x = {'a': torch.randn(4, 6, 16) * 30, 'v': torch.randn(4, 6, 16) * 30}  # large values: overflow-prone in fp16 ||z||²
    with torch.autocast('cpu', dtype=dtype):
        z = {k: lin(v) for k, v in x.items()}
        assert z['a'].dtype == dtype
        out = cb(z, probs=True)
        again = cb(z, update=False)  # the assignment with the updated codes, for the check below
    assert out.quantized['a'].dtype == dtype and out.probs['a'].dtype == torch.float32
    assert torch.isfinite(out.loss) and all(torch.isfinite(p).all() for p in out.probs.values())
    out.loss.backward()
    assert torch.isfinite(lin.weight.grad).all() and torch.isfinite(cb.embed).all()
    # the assignment is the float32 one on the (rounded) features
    zf = z['a'].detach().float().reshape(-1, 32)
    assert torch.equal(again.indices['a'].reshape(-1), cb.encode(zf))


def test_half_keeps_ema_state_float32():
    cb = SharedCodebook(8, 4).half()
    assert cb.embed.dtype == torch.float32 and cb.cluster_size.dtype == torch.float32
    out = cb.train()(torch.randn(20, 4).half())
    assert out.quantized.dtype == torch.float16 and torch.isfinite(cb.embed).all()


def test_state_dict_round_trip():
    a = SharedCodebook(16, 8, dead_after=3).train()
    for s in range(4): a(torch.randn(40, 8, generator=torch.Generator().manual_seed(s)))
    b = SharedCodebook(16, 8, dead_after=3)
    b.load_state_dict(a.state_dict())
    assert int(b.steps) == 4 and bool(b.initted)
    x = torch.randn(40, 8)
    oa, ob = a(x), b.train()(x)
    assert torch.equal(oa.indices, ob.indices) and torch.equal(a.embed, b.embed)


# ---------------------------------------------------------------- bad input
def test_bad_inputs():
    cb = SharedCodebook(8, 4)
    with pytest.raises(ValueError, match=r'\[B, T, 4\]'): cb(torch.randn(3, 5))
    with pytest.raises(TypeError, match='float'): cb({'text': torch.ones(2, 3, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match='mask'): cb({'audio': torch.randn(2, 10, 4)}, {'audio': torch.ones(2, 100, dtype=torch.bool)})
    with pytest.raises(ValueError, match='present'): cb({'audio': torch.randn(2, 10, 4)}, present={'audio': torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match='non-empty'): cb({})
    with pytest.raises(ValueError, match='mm_ema'): SharedCodebook(8, 4, mm_ema='teacher')
    with pytest.raises(ValueError, match='cross_commit'): SharedCodebook(8, 4, cross_commit='both')
    with pytest.raises(ValueError, match='init'): SharedCodebook(8, 4, init='zeros')
    with pytest.raises(ValueError, match='decay'): SharedCodebook(8, 4, decay=1.)


def test_backward_after_update_with_probs():
    "P_m's graph holds the codes of the forward pass; the in-place EMA update must not break backward"
    cb = SharedCodebook(8, 4, init='data', tau=0.5).train()
    z = torch.randn(3, 5, 4, requires_grad=True)
    cb({'a': z.detach()})  # initialised
    codes = cb.embed.clone()
    out = cb({'a': z}, probs=True)  # updates the codes in place after building the graph
    assert not torch.equal(cb.embed, codes)
    loss = out.loss + (out.probs['a'] * torch.arange(8.)).sum()
    loss.backward()
    ref = z.detach().clone().requires_grad_()
    P = torch.softmax(-(torch.cdist(ref, codes[None].expand(3, 8, 4)) ** 2) / 0.5, -1).mean(1)
    q = F.embedding(out.indices['a'], codes)
    (0.25 * F.mse_loss(ref, q) + (P * torch.arange(8.)).sum()).backward()
    assert torch.allclose(z.grad, ref.grad, atol=1e-5)


@pytest.mark.parametrize('cosine', [False, True])
@pytest.mark.parametrize('mm_ema', [None, 'paper', 'reference'])
@pytest.mark.parametrize('cross_commit', [None, 'reference', 'paper', (1.5, 0.25)])
@pytest.mark.parametrize('init', ['kmeans', 'data', 'random'])
def test_option_matrix(cosine, mm_ema, cross_commit, init):
    g = torch.Generator().manual_seed(7)
    z = {'audio': torch.randn(3, 6, 8, generator=g, requires_grad=True), 'video': torch.randn(3, 6, 8, generator=g, requires_grad=True)}
    mask = {'audio': torch.arange(6)[None] < torch.tensor([[6], [2], [4]])}
    present = {'video': torch.tensor([True, False, True])}
    cb = SharedCodebook(16, 8, cosine=cosine, mm_ema=mm_ema, cross_commit=cross_commit, init=init, dead_after=2).train()
    for _ in range(3): out = cb(z, mask, present)
    out.loss.backward()
    assert torch.isfinite(cb.embed).all() and torch.isfinite(out.loss)
    assert torch.isclose(out.loss, sum(out.losses.values()))
    assert (out.indices['audio'][1, 2:] == -1).all() and (out.indices['video'][1] == -1).all()
    assert float(z['video'].grad[1].abs().sum()) == 0 and float(z['audio'].grad[1, 2:].abs().sum()) == 0
    assert ('cross_commit/audio' in out.losses) == (cross_commit is not None)
    assert torch.allclose(out.probs['audio'].sum(1), torch.ones(3))
    if cosine: assert torch.allclose(cb.embed.norm(dim=-1), torch.ones(16), atol=1e-5)
