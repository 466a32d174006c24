"Tests of cmrl.heads: fusion encoder, OPT heads (masking, 5-way matching), SCALE weighting, adversarial alignment"
import math
import pytest
import torch
from torch import nn
from cmrl.core import *
from cmrl.data.synth import SynthEvents
from cmrl.heads.fusion import *
from cmrl.heads.opt import *
from cmrl.heads.opt import _calibrated_q
from cmrl.heads.scale import *
from cmrl.heads.adversarial import *
from cmrl.testing import toy_features, ToyEncoders, train_matching_demo

torch.set_num_threads(1)
VAT = (VIDEO, AUDIO, TEXT)


@pytest.fixture(scope='module')
def synth_batch():
    ds = SynthEvents(12, seed=3)
    return toy_features(collate_items([ds[i] for i in range(12)])), ds


def tiny_opt(b, ds, d=16, **kw):
    fd = {VIDEO: b.x[VIDEO].shape[-1], AUDIO: b.x[AUDIO].shape[-1]}
    torch.manual_seed(0)
    return OPT(ToyEncoders(d, fd, {TEXT: len(ds.vocab) + 1}), FusionEncoder(d, 2, 1, dropout=0., max_len=16),
               vocab_size=len(ds.vocab) + 1, feat_dims=fd, n_pseudo=9, **kw)


# ---------------------------------------------------------------- 5-way matching negatives
@pytest.mark.parametrize('use_y', [False, True])
@pytest.mark.parametrize('seed', range(5))
def test_matching_labels_follow_donors(use_y, seed):
    B = 32
    y = torch.arange(B) % 4 if use_y else None
    pres = {m: torch.ones(B, dtype=torch.bool) for m in VAT}
    neg = matching_negatives(pres, y=y, generator=seeded_generator(seed))
    assert (neg.labels >= 0).all()
    # the label is exactly the pattern of which pairs share a source item
    assert torch.equal(matching_label_of(neg.src), neg.labels)
    ar = torch.arange(B)
    for c, replaced in [(0, set()), (1, {TEXT}), (2, {VIDEO}), (3, {AUDIO})]:
        for i in (neg.labels == c).nonzero().flatten().tolist():
            assert {m for m in VAT if neg.src[m][i] != i} == replaced
    for i in (neg.labels == 4).nonzero().flatten().tolist():
        rep = [m for m in VAT if neg.src[m][i] != i]
        assert len(rep) == 2 and neg.src[rep[0]][i] != neg.src[rep[1]][i]
        if use_y: assert y[neg.src[rep[0]][i]] != y[neg.src[rep[1]][i]]
    if use_y:  # donors of replaced modalities are of another class than the item
        for m in VAT:
            r = neg.src[m] != ar
            assert (y[neg.src[m][r]] != y[r]).all()


def test_matching_class_frequencies_and_probs():
    B = 400
    pres = {m: torch.ones(B, dtype=torch.bool) for m in VAT}
    g = seeded_generator(0)
    labels = torch.cat([matching_negatives(pres, generator=g).labels for _ in range(10)])
    freq = torch.bincount(labels, minlength=5).float() / len(labels)
    assert torch.allclose(freq, torch.full((5,), 0.2), atol=0.03), freq
    neg = matching_negatives(pres, probs=[0.5, 0, 0, 0, 0.5], generator=seeded_generator(1))
    assert set(neg.labels.unique().tolist()) == {0, 4}


def test_matching_with_missing_modalities():
    pres = {VIDEO: torch.tensor([1, 1, 1, 1, 1, 1]).bool(), AUDIO: torch.tensor([1, 0, 1, 1, 0, 1]).bool(),
            TEXT: torch.ones(6, dtype=torch.bool)}
    for s in range(20):
        neg = matching_negatives(pres, generator=seeded_generator(s))
        assert (neg.labels[~pres[AUDIO]] == -1).all()  # items lacking a role are not usable
        ok = neg.labels >= 0
        assert pres[AUDIO][neg.src[AUDIO][ok]].all()  # donors have the modality
        assert torch.equal(matching_label_of(neg.src)[ok], neg.labels[ok])


def test_matching_batch_shuffles_data(synth_batch):
    b, _ = synth_batch
    sb, labels = matching_batch(b, generator=seeded_generator(0))
    neg = matching_negatives(b.present, VAT, b.y, generator=seeded_generator(0))
    assert torch.equal(labels, neg.labels)
    for m in VAT:
        assert torch.equal(sb.x[m], b.x[m][neg.src[m]])
        assert torch.equal(sb.mask[m], b.mask[m][neg.src[m]])


def test_matching_bad_input():
    pres = {m: torch.ones(4, dtype=torch.bool) for m in VAT}
    with pytest.raises(ValueError, match='at least 2'): matching_negatives({m: torch.ones(1, dtype=torch.bool) for m in VAT})
    with pytest.raises(ValueError, match='roles'): matching_negatives(pres, roles=(VIDEO, AUDIO))
    with pytest.raises(ValueError, match='presence'): matching_negatives({VIDEO: pres[VIDEO]})
    with pytest.raises(ValueError, match='probs'): matching_negatives(pres, probs=[1, 2])


# ---------------------------------------------------------------- modality masking
@pytest.mark.parametrize('k', [2, 3, 5])
@pytest.mark.parametrize('p', [0.1, 0.3])
@pytest.mark.parametrize('calibrate', [True, False])
def test_modality_dropout_rate_and_never_all(k, p, calibrate):
    N = 20000
    pres = {f'm{i}': torch.ones(N, dtype=torch.bool) for i in range(k)}
    keep = modality_dropout(pres, p, generator=seeded_generator(k, int(p * 10)), calibrate=calibrate)
    K = torch.stack(list(keep.values()), 1)
    assert K.any(1).all()  # never all dropped
    rate = 1 - K.float().mean().item()
    expected = p if calibrate else (p - p**k) / (1 - p**k)
    assert abs(rate - expected) < 0.01, (rate, expected)


def test_modality_dropout_respects_presence():
    N = 6000
    g = seeded_generator(9)
    pres = {m: torch.rand(N, generator=g) < 0.7 for m in VAT}
    pres[TEXT] = pres[TEXT] | ~(pres[VIDEO] | pres[AUDIO])  # every item has something
    keep = modality_dropout(pres, 0.3, generator=seeded_generator(10))
    P, K = torch.stack([pres[m] for m in VAT], 1), torch.stack([keep[m] for m in VAT], 1)
    assert not (K & ~P).any()  # never keeps an absent modality
    assert K.any(1).all()
    one = P.sum(1) == 1
    assert torch.equal(K[one], P[one])  # a lone modality is always kept
    multi = P.sum(1) >= 2
    rate = 1 - K[multi].sum() / P[multi].sum()
    assert abs(rate.item() - 0.3) < 0.015


def test_calibrated_q_bounds():
    assert _calibrated_q(0.3, 1) == 0.
    with pytest.raises(ValueError, match='unreachable'): _calibrated_q(0.6, 2)


def test_token_mask_rate_and_validity():
    valid = torch.rand(300, 40, generator=seeded_generator(0)) < 0.8
    valid[0] = False
    tm = token_mask(valid, 0.15, generator=seeded_generator(1), min_one=False)
    assert not (tm & ~valid).any()
    assert abs(tm.sum().item() / valid.sum().item() - 0.15) < 0.01
    tm = token_mask(valid, 0.0, generator=seeded_generator(2))
    assert torch.equal(tm.sum(1), valid.any(1).long())  # min_one: exactly one where p = 0
    with pytest.raises(ValueError): token_mask(valid, 1.5)


# ---------------------------------------------------------------- masked-modelling losses
def test_masked_losses_values():
    lg = torch.tensor([[[0., math.log(3.)], [5., 0.]]])
    assert torch.isclose(masked_ce(lg, torch.tensor([[1, 0]]), torch.tensor([[True, False]])), torch.tensor(-math.log(.75)))
    assert torch.isclose(masked_l2(torch.tensor([[[1., 2.]]]), torch.zeros(1, 1, 2), torch.tensor([[True]])), torch.tensor(2.5))
    tg = torch.tensor([[[1., 0.], [0., 1.], [7., 7.]]])
    v = masked_nce(tg, tg, torch.tensor([[True, False, False]]), torch.tensor([[True, True, False]]), tau=1.)
    assert torch.isclose(v, torch.tensor(-math.log(math.e / (math.e + 1))))


def test_masked_nce_gradcheck():
    g = seeded_generator(0)
    pred = torch.randn(2, 4, 3, generator=g, dtype=torch.double, requires_grad=True)
    tgt = torch.randn(2, 4, 3, generator=g, dtype=torch.double)
    sel = torch.tensor([[True, False, True, False], [False, True, False, False]])
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    assert torch.autograd.gradcheck(lambda p: masked_nce(p, tgt, sel, valid, tau=0.5).double(), (pred,))


# ---------------------------------------------------------------- fusion encoder
def test_fusion_param_count_and_padding_invariance():
    D = 16
    fe = FusionEncoder(D, 2, 1, modalities=VAT, max_len=8).eval()
    assert sum(p.numel() for p in fe.parameters()) == 3552
    g = seeded_generator(0)
    toks = {m: torch.randn(3, 5, D, generator=g) for m in VAT}
    mask = {TEXT: torch.tensor([[1, 1, 1, 0, 0]] * 3).bool()}
    pres = {AUDIO: torch.tensor([True, False, True])}
    out = fe(toks, mask, pres)
    t2 = {m: v.clone() for m, v in toks.items()}
    t2[TEXT][:, 3:] = 1e3; t2[AUDIO][1] = -1e3
    out2 = fe(t2, mask, pres)
    assert torch.allclose(out.cls, out2.cls, atol=1e-5)
    assert out.tokens[AUDIO][1].abs().sum() == 0 and out.tokens[TEXT][:, 3:].abs().sum() == 0


def test_fusion_item_without_any_modality_is_finite():
    fe = FusionEncoder(8, 2, 1, modalities=VAT, max_len=4)
    toks = {m: torch.randn(2, 3, 8) for m in VAT}
    pres = {m: torch.tensor([True, False]) for m in VAT}
    out = fe(toks, None, pres)
    assert torch.isfinite(out.cls).all()


# ---------------------------------------------------------------- absent modality: finite losses, no gradient
def test_absent_modality_finite_losses_no_gradient(synth_batch):
    b, ds = synth_batch
    nb = b.drop(AUDIO)  # audio absent from every item
    model = tiny_opt(b, ds)
    out = model(nb, pseudo={VIDEO: b.extra['frame_labels']}, generator=seeded_generator(0))
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert not any(k.startswith(AUDIO) for k in out.losses)
    assert 'match' not in out.losses  # matching needs all three roles
    head = SCALEHead(VAT, 16, proj_dim=8)
    so = head(out.summaries, nb.present, out.modality_losses)
    assert torch.isfinite(so.loss) and so.weights[1].abs().sum() == 0 and so.weights[:, 1].abs().sum() == 0
    (out.loss + so.loss).backward()
    for p in model.encoders[AUDIO].parameters():
        assert p.grad is None or p.grad.abs().max() == 0
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.encoders[VIDEO].parameters())
    for p in head.proj[AUDIO].parameters():
        assert p.grad is None or p.grad.abs().max() == 0


def test_partially_absent_modality_gets_no_gradient(synth_batch):
    "Items without audio: their (zero-imputed) audio inputs receive exactly zero gradient"
    b, ds = synth_batch
    pres = dict(b.present); pres[AUDIO] = torch.tensor([True, False] * 6)
    x = dict(b.x); x[AUDIO] = b.x[AUDIO].clone().requires_grad_(True)
    pb = ModalityBatch(x, b.mask, pres, b.ids, b.y, b.extra)
    model = tiny_opt(b, ds)
    out = model(pb, pseudo={VIDEO: b.extra['frame_labels']}, generator=seeded_generator(1))
    so = SCALEHead(VAT, 16)(out.summaries, pres, out.modality_losses)
    assert all(torch.isfinite(v) for v in out.losses.values()) and torch.isfinite(so.loss)
    (out.loss + so.loss).backward()
    g = x[AUDIO].grad
    assert g[~pres[AUDIO]].abs().max() == 0 and g[pres[AUDIO]].abs().max() > 0


def test_opt_accepts_fastai_tuple_and_mask_inputs(synth_batch):
    b, ds = synth_batch
    model = tiny_opt(b, ds, mask_inputs=True)
    out = model((b,), pseudo={VIDEO: b.extra['frame_labels']}, generator=seeded_generator(0))
    assert torch.isfinite(out.loss) and out.match_logits.shape == (12, 5)
    assert opt_loss(out) is out.loss and 0 <= match_accuracy(out).item() <= 1


def test_opt_bad_config(synth_batch):
    b, ds = synth_batch
    fe = FusionEncoder(16, 2, 1, max_len=16)
    with pytest.raises(ValueError, match='unknown tasks'): OPT({}, fe, tasks=('mlm', 'foo'))
    with pytest.raises(ValueError, match='vocab_size'): OPT({}, fe, tasks=('mlm',))
    with pytest.raises(ValueError, match='feat_dims'): OPT({}, fe, tasks=('mfr',))
    with pytest.raises(ValueError, match='roles'): OPT({}, fe, roles={VIDEO: 'smell'}, tasks=('match',))
    with pytest.raises(ValueError, match='unknown modalities'): fe({'table': torch.randn(1, 2, 16)})


def test_opt_warns_once_without_pseudo_labels(synth_batch):
    b, ds = synth_batch
    model = tiny_opt(b, ds)
    with pytest.warns(UserWarning, match='pseudo-labels'):
        out = model(b, generator=seeded_generator(0))
    assert f'{VIDEO}.mfc' not in out.losses


# ---------------------------------------------------------------- SCALE weights
def test_scale_weights_hand_checked_3x3():
    e = math.exp
    S = torch.tensor([[1., .5, 0.], [.5, 1., .2], [0., .2, 1.]])
    r = [e(1) + e(.5) + 1, e(.5) + e(1) + e(.2), 1 + e(.2) + e(1)]
    A = torch.tensor([[e(1), e(.5), 1.], [e(.5), e(1), e(.2)], [1., e(.2), e(1)]]) / torch.tensor(r)[:, None]
    assert torch.allclose(matching_weights(S), S * A, atol=1e-7)
    assert torch.allclose(matching_weights(S)[0], torch.tensor([0.506480, 0.153595, 0.]), atol=1e-5)
    assert torch.allclose(matching_weights(S, mode='matmul'), S @ A, atol=1e-6)
    assert torch.allclose(matching_weights(S, dim=0), S * A.T, atol=1e-7)  # S symmetric: column softmax = A^T
    with pytest.raises(ValueError, match='mode'): matching_weights(S, mode='hadamard')
    with pytest.raises(ValueError, match='square'): matching_weights(S[:2])


def test_scale_scores_ignore_absent_pairs():
    g = seeded_generator(0)
    summ = {m: torch.randn(5, 4, generator=g) for m in VAT}
    pres = {VIDEO: torch.ones(5).bool(), AUDIO: torch.tensor([1, 1, 0, 0, 0]).bool(), TEXT: torch.tensor([0, 0, 1, 1, 1]).bool()}
    S, valid = modality_scores(summ, pres, VAT)
    assert not valid[1, 2] and not valid[2, 1] and valid[0, 1] and valid[0, 2]
    cos = torch.nn.functional.cosine_similarity(summ[VIDEO][:2], summ[AUDIO][:2]).mean()
    assert torch.isclose(S[0, 1], (1 + cos) / 2) and torch.isclose(S[0, 0], torch.tensor(1.))  # default kind='cos01'
    S_raw, _ = modality_scores(summ, pres, VAT, kind='cos')
    assert torch.isclose(S_raw[0, 1], cos)
    with pytest.raises(ValueError, match='kind'): modality_scores(summ, pres, VAT, kind='dot')
    head = SCALEHead(VAT, 4)
    so = head(summ, pres, {m: torch.tensor(1.) for m in VAT})
    assert f'cl.{AUDIO}-{TEXT}' not in so.losses and so.weights[1, 2] == 0
    assert torch.isfinite(so.loss)


@pytest.mark.parametrize('detach', [True, False])
def test_scale_detach_option(detach):
    g = seeded_generator(1)
    summ = {m: torch.randn(6, 4, generator=g, requires_grad=True) for m in VAT}
    pres = {m: torch.ones(6, dtype=torch.bool) for m in VAT}
    head = SCALEHead(VAT, 4, detach_weights=detach, min_weight=None)
    ml = {m: torch.tensor(2.) for m in VAT}
    so = head(summ, pres, ml)
    so.loss.backward()
    # with constant L_M, gradients reach the summaries through the contrastive terms either way;
    # the weights themselves carry a gradient only when not detached
    assert so.weights.requires_grad == (not detach)


# ---------------------------------------------------------------- gradient reversal
@pytest.mark.parametrize('lam', [0., 0.25, 1., 3.])
def test_grl_reverses_and_scales_exactly(lam):
    g = seeded_generator(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.double, requires_grad=True)
    up = torch.randn(4, 5, generator=g, dtype=torch.double)
    y = grad_reverse(x, lam)
    assert torch.equal(y, x)
    y.backward(up)
    assert torch.equal(x.grad, -lam * up)
    x.grad = None
    GradientReversal(lam)(x).backward(up)
    assert torch.equal(x.grad, -lam * up)


def test_grl_inside_graph_equals_negated_plain_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.randn(5, 3, requires_grad=True)
    (lin(grad_reverse(x * 2, 0.7)) ** 2).sum().backward()
    g_rev, w_rev = x.grad.clone(), lin.weight.grad.clone()
    x.grad = None; lin.weight.grad = None
    (lin(x * 2) ** 2).sum().backward()
    assert torch.allclose(g_rev, -0.7 * x.grad, atol=0, rtol=1e-6)
    assert torch.allclose(w_rev, lin.weight.grad)  # layers after the GRL are unaffected


def test_grl_lambda_schedule():
    assert grl_lambda(0.) == 0.
    for p in (0.1, 0.5, 0.9):
        assert math.isclose(grl_lambda(p), 2 / (1 + math.exp(-10 * p)) - 1)
    assert grl_lambda(2.) == grl_lambda(1.)  # clamped progress
    assert grl_lambda(0.4, 'constant', lam_max=0.3) == 0.3
    with pytest.raises(ValueError): grl_lambda(0.5, 'cosine')


def test_grl_schedule_callback_sets_lambda():
    class FakeLearn:
        pass
    learn = FakeLearn()
    learn.model = nn.Sequential(nn.Linear(2, 2), GradientReversal(0.), nn.Sequential(GradientReversal(0.)))
    cb = GRLSchedule(lam_max=0.5)
    cb.learn = learn
    learn.pct_train = 0.5
    cb.before_batch()
    lams = [m.lam for m in learn.model.modules() if isinstance(m, GradientReversal)]
    assert lams == [pytest.approx(0.5 * (2 / (1 + math.exp(-5)) - 1))] * 2


def test_discriminator_and_shared_towers():
    torch.manual_seed(0)
    disc = ModalityDiscriminator(8, VAT, hidden=8)
    assert sum(p.numel() for p in disc.parameters()) == 8 * 8 + 8 + 8 * 3 + 3
    embs = {VIDEO: torch.randn(3, 8), TEXT: torch.randn(2, 8)}
    ao = modality_adversarial_loss(disc, embs, {VIDEO: torch.tensor([True, False, True])})
    assert ao.target.tolist() == [0, 0, 2, 2] and torch.isfinite(ao.loss)
    with pytest.raises(ValueError, match='no present'): modality_adversarial_loss(disc, {'table': torch.randn(2, 8)})
    st = SharedTowers({VIDEO: nn.Linear(5, 6), AUDIO: nn.Linear(7, 6)}, 6, 4, n_classes=3, normalize=True)
    out = st({VIDEO: torch.randn(2, 5), AUDIO: torch.randn(2, 7)}, {AUDIO: torch.zeros(2, dtype=torch.bool)})
    assert list(out.emb) == [VIDEO] and torch.allclose(out.emb[VIDEO].norm(dim=-1), torch.ones(2))
    # the shared layer receives gradient from both towers
    out = st({VIDEO: torch.randn(2, 5), AUDIO: torch.randn(2, 7)})
    out.emb[AUDIO].sum().backward()
    assert st.shared.weight.grad.abs().sum() > 0 and st.towers[VIDEO].weight.grad is None


# ---------------------------------------------------------------- learning: 5-way matching above chance
def test_matching_learns_above_chance_fast():
    res = train_matching_demo(n_train=256, n_valid=128, steps=FAST_STEPS)
    print(res)
    assert res['valid_acc'] > 0.2 + FAST_MARGIN, res


FAST_STEPS, FAST_MARGIN = 120, 0.08


@pytest.mark.slow
def test_matching_learns_above_chance_full():
    res = train_matching_demo()
    print(res)
    assert res['valid_acc'] > 0.3, res
