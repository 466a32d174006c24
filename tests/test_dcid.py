"Tests of cmrl.dcid: CLUB (hand values, estimator, minimisation, independence) and Cross-CPC (reference loop, masks, accuracy)."
import itertools, math
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from cmrl.dcid import *

sp = lambda x: math.log1p(math.exp(x))


from cmrl.testing import rnd


# ---------- CLUB: values ----------
def test_club_hand_values():
    mu, logvar, y = torch.tensor([[0.], [1.]]), torch.tensor([[0.], [math.log(4)]]), torch.tensor([[.5], [2.]])
    # item 1: -(.5)^2/2 + 2^2/2 = 1.875; item 2: -1/8 + .25/8 = -.09375
    assert club_mi(mu, logvar, y, perm=torch.tensor([1, 0])).item() == pytest.approx(.890625, abs=1e-6)
    # pairwise: item 1: -.125 + (.125 + 2)/2; item 2: -.125 + (.03125 + .125)/2
    assert club_mi(mu, logvar, y, 'pairwise').item() == pytest.approx(.4453125, abs=1e-6)
    # identity permutation: positive and negative terms coincide
    assert club_mi(mu, logvar, y, perm=torch.tensor([0, 1])).item() == 0.
    # -mean log q(y_i|x_i) = ln(2π)/2 + .125 + ln(4)/4
    assert -gaussian_log_prob(y, mu, logvar).mean().item() == pytest.approx(.5 * math.log(2 * math.pi) + .125 + .25 * math.log(4), abs=1e-6)


def test_club_pairwise_equals_explicit_all_pairs():
    mu, lv, y = rnd(6, 3, seed=1), .3 * rnd(6, 3, seed=2), rnd(6, 3, seed=3)
    lq = gaussian_log_prob(y[None], mu[:, None], lv[:, None])  # [i, j] = log q(y_j | x_i)
    assert club_mi(mu, lv, y, 'pairwise').item() == pytest.approx((lq.diagonal() - lq.mean(1)).mean().item(), abs=1e-10)
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    assert club_mi(mu, lv, y, perm=perm).item() == pytest.approx((lq.diagonal() - lq[torch.arange(6), perm]).mean().item(), abs=1e-10)


def test_club_module_masks_and_gradient_routing():
    torch.manual_seed(0)
    club = CLUB(3, 2, hidden=8, mode='pairwise')
    x, y = torch.randn(4, 5, 3, requires_grad=True), torch.randn(4, 5, 2, requires_grad=True)
    mask = torch.arange(5)[None] < torch.tensor([5, 3, 2, 0])[:, None]
    est = club(x, y, mask)
    est.backward()
    assert all(p.grad is None for p in club.parameters())  # the estimate never trains q
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert torch.all(x.grad[~mask] == 0) and torch.all(y.grad[~mask] == 0)  # padding takes no part
    # content at padded positions does not matter
    x2, y2 = x.detach().clone(), y.detach().clone()
    x2[~mask], y2[~mask] = 100., -100.
    assert club(x2, y2, mask).item() == pytest.approx(est.item(), abs=1e-6)
    assert club.learning_loss(x2, y2, mask).item() == pytest.approx(club.learning_loss(x, y, mask).item(), abs=1e-6)
    # learning_loss detaches its inputs, trains θ
    l = club.learning_loss(x, y, mask); x.grad = None; l.backward()
    assert x.grad is None and all(p.grad is not None for p in club.parameters())


def test_club_step_clears_grads_and_lowers_loss():
    torch.manual_seed(0)
    club = CLUB(2, 2, hidden=16); opt = club_optimizer(club)
    x = torch.randn(256, 2); y = x + .3 * torch.randn(256, 2)
    first = club.learning_loss(x, y).item()
    last = club_step(club, opt, x, y, steps=50)
    assert last < first - .3
    assert all(p.grad is None for p in club.parameters())


def test_club_bad_input():
    club = CLUB(3, 2)
    with pytest.raises(ValueError, match='x_dim'): club(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match='y_dim'): club(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match='leading'): club(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match='mask'): club(torch.randn(4, 3), torch.randn(4, 2), torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match='mode'): CLUB(3, 2, mode='full')


@pytest.mark.parametrize('mode', ['sample', 'pairwise'])
def test_gradcheck_club(mode):
    mu, lv, y = (rnd(4, 2, seed=s).requires_grad_() for s in range(3))
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.autograd.gradcheck(lambda a, b, c: club_mi(a, b, c, mode, perm), (mu, lv, y))
    torch.manual_seed(0)
    club = CLUB(3, 2, hidden=4, mode=mode).double()
    x, yy = rnd(2, 3, 3, seed=4).requires_grad_(), rnd(2, 3, 2, seed=5).requires_grad_()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda a, b: club(a, b, mask, perm=torch.tensor([4, 2, 0, 1, 3])), (x, yy))
    assert torch.autograd.gradcheck(lambda a, b: club.learning_loss(a, b, mask, detach=False), (x, yy))


# ---------- CLUB: estimator behaviour ----------
def fit_estimator(club, x, y, steps, lr=1e-2, bs=256, seed=0):
    opt = club_optimizer(club, lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(x), (bs,), generator=g)
        club_step(club, opt, x[i], y[i], steps=1)


def test_club_independent_features_near_zero():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2048, 4, generator=g), torch.randn(2048, 2, generator=g)
    club = CLUB(4, 2, hidden=32, mode='pairwise')
    fit_estimator(club, x, y, 300)
    xt, yt = torch.randn(4096, 4, generator=g), torch.randn(4096, 2, generator=g)  # fresh samples
    # q has learnt N(0, 1): its NLL is close to the entropy of N(0, I_2), ln(2πe) = 2.838
    assert club.learning_loss(xt, yt).item() == pytest.approx(math.log(2 * math.pi * math.e), abs=.05)
    with torch.no_grad():
        est = club(xt, yt).item()
        mu, lv = club.mu_logvar(xt)
        ybar = yt.mean(0)
        per = (-(yt - mu) ** 2 + (yt - ybar).pow(2).mean(0) + (ybar - mu) ** 2).div(2 * lv.exp()).sum(-1)  # per-item terms
    se = (per.std() / math.sqrt(len(per))).item()
    print(f"CLUB on independent features: {est:.4f} (standard error {se:.4f})")
    # Tolerance: for independent x, y the CLUB estimate has expectation exactly 0 whatever q is
    # (E[(y - mu(x))^2 | x] = Var(y) + (E y - mu(x))^2 is exactly the negative term), so on fresh samples
    # the only error is sampling noise: its standard error, measured from the per-item terms, is about
    # 0.016 here (terms sum_d (1 - y_d^2)/2 have std 1 for N(0, 1) y and q ≈ N(0, 1); N = 4096).
    # 5 standard errors plus 0.01 leaves a false-alarm rate below 1e-6 and still fails an estimator
    # with a real bias of 0.1 nats.
    assert abs(est) < 5 * se + .01
    assert abs(club_mi(mu, lv, yt, perm=torch.randperm(4096, generator=g)).item()) < .15  # sampled version: ~3x noisier


def test_club_tracks_gaussian_bound():
    # y = ρ x + sqrt(1 - ρ²) ε per dimension. With the exact q, CLUB = d ρ²/(1 - ρ²) (≥ true MI = -d/2 ln(1 - ρ²))
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    rho, d = .7, 2
    x = torch.randn(4096, d, generator=g); y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(4096, d, generator=g)
    club = CLUB(d, d, hidden=32, mode='pairwise')
    fit_estimator(club, x, y, 400)
    est = club(x, y).item()
    true_mi, club_exact = -d / 2 * math.log(1 - rho ** 2), d * rho ** 2 / (1 - rho ** 2)
    print(f"CLUB {est:.3f}, exact-q CLUB {club_exact:.3f}, true MI {true_mi:.3f}, Gaussian MI of samples {gaussian_mi(x, y).item():.3f}")
    assert est > true_mi and est == pytest.approx(club_exact, rel=.1)


def test_minimising_club_drives_shared_information_out():
    "u = (h, a), v = (h, b); y = enc(v) must reconstruct b; minimising CLUB(u, y) makes enc drop h"
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    def batch(n=256):
        h, a, b = (torch.randn(n, 2, generator=g) for _ in range(3))
        return torch.cat([h, a], -1), torch.cat([h, b], -1), b
    enc = nn.Linear(4, 2)
    with torch.no_grad(): enc.weight.copy_(torch.tensor([[1., .5, .6, 0.], [-.5, 1., 0., .6]]))
    club = CLUB(4, 2, hidden=32)
    copt, opt = club_optimizer(club), torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(40):
        u, v, b = batch(); club_step(club, copt, u, enc(v), steps=5)
    def measure():
        u, v, b = batch(2048)
        with torch.no_grad(): yv = enc(v); return club(u, yv).item(), gaussian_mi(u, yv).item()
    est0, true0 = measure()
    for _ in range(150):
        u, v, b = batch()
        yv = enc(v)
        club_step(club, copt, u, yv, steps=5)
        loss = F.mse_loss(yv, b) + club(u, yv)
        opt.zero_grad(); loss.backward(); opt.step()
    est1, true1 = measure()
    print(f"CLUB {est0:.3f} -> {est1:.3f}; Gaussian MI {true0:.3f} -> {true1:.3f}")
    assert est0 > .5 and true0 > 1.
    assert est1 < est0 / 5 and true1 < .15


# ---------- Cross-CPC ----------
def ref_cpc(preds, z, mask, pairs, softmax_over='targets'):
    "Loop over (pair, k, t, i) written from the formula: mean NLL and accuracy per pair"
    out = {}
    for a, b in pairs:
        K, B, T, D = preds[a].shape
        nll, hit, n = 0., 0, 0
        for k in range(1, K + 1):
            for t in range(T - k):
                for i in range(B):
                    if not (mask[a][i, t] and mask[b][i, t + k]): continue
                    if softmax_over == 'targets':
                        cand = [j for j in range(B) if mask[b][j, t + k]]
                        s = {j: float(preds[a][k - 1, i, t] @ z[b][j, t + k]) for j in cand}
                    else:
                        cand = [j for j in range(B) if mask[a][j, t]]
                        s = {j: float(preds[a][k - 1, j, t] @ z[b][i, t + k]) for j in cand}
                    nll += -(s[i] - math.log(sum(math.exp(v) for v in s.values())))
                    hit += int(max(s, key=s.get) == i); n += 1
        out[f'{a}>{b}'] = (nll / n, hit / n)
    return out


@pytest.mark.parametrize('softmax_over', ['targets', 'predictions'])
def test_cross_cpc_matches_loop_reference(softmax_over):
    B, T, D, K = 4, 5, 3, 2
    preds = {'v': rnd(K, B, T, D, seed=1), 'a': rnd(K, B, T, D, seed=2)}
    z = {'v': rnd(B, T, D, seed=3), 'a': rnd(B, T, D, seed=4)}
    mask = {'v': torch.arange(T)[None] < torch.tensor([5, 4, 2, 5])[:, None], 'a': torch.arange(T)[None] < torch.tensor([5, 5, 3, 1])[:, None]}
    out = cross_cpc_loss(preds, z, mask, softmax_over=softmax_over)
    pairs = [('v', 'a'), ('a', 'v'), ('v', 'v'), ('a', 'a')]
    ref = ref_cpc(preds, z, mask, pairs, softmax_over)
    for key, (l, acc) in ref.items():
        assert out.losses[key].item() == pytest.approx(l, abs=1e-9), key
        assert out.accs[key].item() == pytest.approx(acc, abs=1e-9), key
    want = ref['v>a'][0] + ref['a>v'][0] + .1 * (ref['v>v'][0] + ref['a>a'][0])
    assert out.loss.item() == pytest.approx(want, abs=1e-9)
    assert out.acc.item() == pytest.approx((ref['v>a'][1] + ref['a>v'][1]) / 2, abs=1e-9)  # cross-modal pairs only
    out0 = cross_cpc_loss(preds, z, mask, same_weight=0.)
    assert sorted(out0.losses) == ['a>v', 'v>a']


def test_cross_cpc_hand_value():
    preds = {'a': torch.tensor([[[[1.], [0.]], [[.5], [0.]]]])}
    z = {'b': torch.tensor([[[0.], [3.]], [[0.], [1.]]])}
    out = cross_cpc_loss(preds, z, pairs=[('a', 'b')])
    assert out.loss.item() == pytest.approx((sp(-2.) + sp(1.)) / 2, abs=1e-6) and out.acc.item() == .5


def test_cross_cpc_random_t_is_reproducible_and_single_step():
    B, T, D, K = 3, 6, 2, 1
    preds, z = {'a': rnd(K, B, T, D, seed=1)}, {'a': rnd(B, T, D, seed=2)}
    o1 = cross_cpc_loss(preds, z, t_mode='random', generator=torch.Generator().manual_seed(5))
    o2 = cross_cpc_loss(preds, z, t_mode='random', generator=torch.Generator().manual_seed(5))
    assert o1.loss.item() == o2.loss.item()
    t0 = int(torch.randint(1, T - K, (1,), generator=torch.Generator().manual_seed(5)))
    mask = {'a': torch.zeros(B, T, dtype=torch.bool)}; mask['a'][:, t0:t0 + K + 1] = True
    assert o1.loss.item() == pytest.approx(cross_cpc_loss(preds, z, mask).loss.item(), abs=1e-12)


def test_cross_cpc_bad_input():
    p, z = {'a': torch.randn(2, 3, 4, 5)}, {'a': torch.randn(3, 4, 5)}
    with pytest.raises(ValueError, match='t_mode'): cross_cpc_loss(p, z, t_mode='one')
    with pytest.raises(ValueError, match='softmax_over'): cross_cpc_loss(p, z, softmax_over='rows')
    with pytest.raises(ValueError, match='fewer'): cross_cpc_loss({'a': torch.randn(4, 3, 4, 5)}, z)
    with pytest.raises(ValueError, match=r"z\['a'\]"): cross_cpc_loss(p, {'a': torch.randn(3, 4, 6)})
    with pytest.raises(ValueError, match='none of'): CrossCPC(['video'], 5)({'audio': torch.randn(3, 4, 5)})


def test_gradcheck_cross_cpc():
    B, T, D, K = 3, 4, 2, 2
    pv, pa, zv, za = rnd(K, B, T, D, seed=1), rnd(K, B, T, D, seed=2), rnd(B, T, D, seed=3), rnd(B, T, D, seed=4)
    mask = {'v': torch.tensor([[True] * 4, [True, True, True, False], [True] * 4])}
    for so in ('targets', 'predictions'):
        f = lambda a, b, c, d: cross_cpc_loss({'v': a, 'a': b}, {'v': c, 'a': d}, mask, softmax_over=so).loss
        assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (pv, pa, zv, za)))
    torch.manual_seed(0)
    cpc = CrossCPC(['v', 'a'], dim=2, context_dim=2, n_steps=1, num_layers=1).double()
    m2 = {'a': torch.tensor([[True, True, True], [True, True, False], [True, True, True]])}
    f = lambda a, b: cpc({'v': a, 'a': b}, m2).loss
    assert torch.autograd.gradcheck(f, (rnd(3, 3, 2, seed=5).requires_grad_(), rnd(3, 3, 2, seed=6).requires_grad_()))


def test_cross_cpc_module_masks_and_presence():
    torch.manual_seed(0)
    cpc = CrossCPC(['v', 'a'], dim=4, context_dim=8, n_steps=2, num_layers=1)
    z = {'v': torch.randn(5, 6, 4), 'a': torch.randn(5, 6, 4)}
    mask = {'v': torch.arange(6)[None] < torch.tensor([6, 4, 6, 3, 6])[:, None], 'a': torch.ones(5, 6, dtype=torch.bool)}
    present = {'a': torch.tensor([True, True, True, True, False])}
    out = cpc(z, mask, present)
    # padding content and absent items' data do not matter (the LSTM is causal, padding is at the end)
    z2 = {m: v.clone() for m, v in z.items()}
    z2['v'][~mask['v']] = 50.; z2['a'][4] = -50.
    out2 = cpc(z2, mask, present)
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-5)
    # an absent item is the same as an all-False mask
    m3 = dict(mask); m3['a'] = mask['a'].clone(); m3['a'][4] = False
    assert cpc(z, m3).loss.item() == pytest.approx(out.loss.item(), abs=1e-6)


def test_cross_cpc_beats_chance_on_paired_sequences():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    B = 32
    cpc = CrossCPC(['a', 'b'], dim=8, context_dim=16, n_steps=2, num_layers=1)
    opt = torch.optim.Adam(cpc.parameters(), lr=3e-3)
    for _ in range(150):
        out = cpc(correlated_sequences(B, generator=g))
        opt.zero_grad(); out.loss.backward(); opt.step()
    with torch.no_grad():
        accs = [cpc(correlated_sequences(B, generator=g)).acc.item() for _ in range(10)]  # fresh batches
        untrained = CrossCPC(['a', 'b'], dim=8, context_dim=16, n_steps=2, num_layers=1)
        base = [untrained(correlated_sequences(B, generator=g)).acc.item() for _ in range(10)]
    acc, acc0, chance = sum(accs) / 10, sum(base) / 10, 1 / B
    print(f"Cross-CPC held-out accuracy {acc:.3f} (untrained {acc0:.3f}, chance {chance:.3f})")
    # 10 batches x 2 directions x 32 items x (7 + 6) (t, k) terms = 8320 terms; at chance the mean has a
    # standard error below 0.002, so 4x chance (0.125) is far outside noise
    assert acc > 4 * chance and acc > acc0 + .05


def synth_step_features(n, seed=0):
    "Per-step features of SynthEvents items: video = pooled change from the median frame, audio = mean log-mel per step"
    from cmrl.data.synth import SynthEvents
    ds = SynthEvents(n, seed=seed, modalities=('video', 'audio'))
    V, A = [], []
    for i in range(n):
        it = ds[i]
        v = it['video']
        V.append(F.adaptive_avg_pool2d(v - v.median(0).values, 4).flatten(1))  # [T, 48]
        A.append(it['audio'].view(ds.cfg.steps, ds.cfg.frames_per_step, -1).mean(1))  # [T, n_mels]
    V, A = torch.stack(V), torch.stack(A)
    return V / V.std(), (A - A.mean((0, 1))) / A.std((0, 1))


@pytest.mark.slow
def test_cross_cpc_beats_chance_on_synth_events():
    V, A = synth_step_features(384)
    torch.manual_seed(0)
    D, B = 16, 32
    enc = nn.ModuleDict({'video': nn.Linear(V.shape[-1], D), 'audio': nn.Linear(A.shape[-1], D)})
    cpc = CrossCPC(['video', 'audio'], dim=D, context_dim=32, n_steps=2, num_layers=1)
    opt = torch.optim.Adam([*enc.parameters(), *cpc.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randperm(320, generator=g)[:B]  # items 320.. are held out
        out = cpc({'video': enc['video'](V[i]), 'audio': enc['audio'](A[i])})
        opt.zero_grad(); out.loss.backward(); opt.step()
    with torch.no_grad():
        outs = [cpc({'video': enc['video'](V[s:s + B]), 'audio': enc['audio'](A[s:s + B])}) for s in (320, 352)]
    acc = sum(o.acc.item() for o in outs) / 2
    print(f"SynthEvents Cross-CPC held-out accuracy {acc:.3f} ({ {k: round(sum(o.accs[k].item() for o in outs) / 2, 3) for k in outs[0].accs} }; chance {1 / B:.3f})")
    # items of the same class in the same phase of their event are indistinguishable, so perfect accuracy is
    # impossible; 2 batches x 2 directions x 32 items x 17 (t, k) terms: at chance the standard error is ~0.004
    assert acc > 3 / B


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu_and_autocast_runs():
    torch.manual_seed(0)
    club, cpc = CLUB(3, 2, hidden=8, mode='pairwise'), CrossCPC(['v', 'a'], dim=4, context_dim=8, n_steps=2, num_layers=1)
    x, y = torch.randn(4, 5, 3), torch.randn(4, 5, 2)
    z = {'v': torch.randn(4, 5, 4), 'a': torch.randn(4, 5, 4)}
    mask = {'v': torch.arange(5)[None] < torch.tensor([5, 4, 3, 5])[:, None]}
    cpu = (club(x, y, mask['v']).item(), cpc(z, mask).loss.item())
    club.cuda(); cpc.cuda()
    zc, mc = {m: v.cuda() for m, v in z.items()}, {m: v.cuda() for m, v in mask.items()}
    gpu = (club(x.cuda(), y.cuda(), mc['v']).item(), cpc(zc, mc).loss.item())
    assert gpu == pytest.approx(cpu, abs=1e-4)
    opt = club_optimizer(club)
    assert math.isfinite(club_step(club, opt, x.cuda(), y.cuda(), mc['v']))
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = cpc(zc, mc); est = club(x.cuda(), y.cuda(), mc['v'])
    assert math.isfinite(out.loss.item()) and math.isfinite(est.item())
    (out.loss + est).backward()


def test_club_empty_mask_is_attached_zero():
    club = CLUB(3, 2, hidden=4)
    x = torch.randn(2, 3, 3, requires_grad=True)
    est = club(x, torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    assert est.item() == 0. and est.requires_grad
    est.backward()
    ll = club.learning_loss(x, torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    assert ll.item() == 0. and ll.requires_grad
