"Tests of cmrl.losses: hand-computed values, loop references, option matrices, gradchecks, bad input."
import itertools, math
import pytest
import torch
from cmrl.losses import *

sp = lambda x: math.log1p(math.exp(x))  # -log(e^a / (e^a + e^b)) = softplus(b - a)


from cmrl.testing import rnd


def dist(B, K, seed=0):
    return rnd(B, K, seed=seed).softmax(-1)


# ---------- loop references (written from the formulas, independent of the vectorised code) ----------
def ref_scores(pa, pb):
    B, K = pa.shape
    return torch.tensor([[sum(pa[i, k] * math.log(pb[j, k]) + pb[j, k] * math.log(pa[i, k]) for k in range(K))
                          for j in range(B)] for i in range(B)], dtype=torch.float64)


def ref_row_softmax_nll(S, neg_ok, diag_shift=0.):
    "mean_i -log e^{S_ii - δ} / (e^{S_ii - δ} + sum_{j != i, neg_ok[i,j]} e^{S_ij})"
    B, out = len(S), 0.
    for i in range(B):
        num = math.exp(S[i, i] - diag_shift)
        den = num + sum(math.exp(S[i, j]) for j in range(B) if j != i and neg_ok[i, j])
        out += -math.log(num / den)
    return out / B


# ---------- Cross-Modal Code Matching ----------
def test_cmcm_hand_2x2():
    P = torch.tensor([[.8, .2], [.2, .8]])
    # S_12 - S_11 = 1.2 ln .25, so each row costs ln(1 + 4^-1.2)
    S = code_match_scores(P, P)
    assert torch.allclose(S[0, 1] - S[0, 0], torch.tensor(1.2 * math.log(.25)), atol=1e-6)
    assert cmcm_loss(P, P).item() == pytest.approx(math.log(1 + 4 ** -1.2), abs=1e-6)
    assert cmcm_loss(P, P, symmetric=True).item() == pytest.approx(math.log(1 + 4 ** -1.2), abs=1e-6)


def test_cmcm_hand_3x3_uniform_is_log_b():
    U = torch.full((3, 5), .2)
    assert cmcm_loss(U, U).item() == pytest.approx(math.log(3), abs=1e-6)


@pytest.mark.parametrize('symmetric', [False, True])
def test_cmcm_matches_loop_reference(symmetric):
    pa, pb = dist(4, 3, 1), dist(4, 3, 2)
    S = ref_scores(pa, pb)
    assert torch.allclose(code_match_scores(pa, pb), S, atol=1e-10)
    ok = torch.ones(4, 4, dtype=torch.bool)
    want = ref_row_softmax_nll(S, ok)
    if symmetric: want = (want + ref_row_softmax_nll(S.T, ok)) / 2
    assert cmcm_loss(pa, pb, symmetric).item() == pytest.approx(want, abs=1e-10)


def test_cmcm_valid_drops_rows_and_columns():
    pa, pb = dist(5, 3, 3), dist(5, 3, 4)
    v = torch.tensor([True, False, True, True, False])
    assert cmcm_loss(pa, pb, valid=v).item() == pytest.approx(cmcm_loss(pa[v], pb[v]).item(), abs=1e-12)


def test_cmcm_pairs_presence_and_breakdown():
    d = {m: dist(4, 3, s) for s, m in enumerate(['video', 'audio', 'text'])}
    present = {'audio': torch.tensor([True, True, False, True]), 'text': torch.zeros(4, dtype=torch.bool)}
    loss, parts = cmcm_pairs_loss(d, present)
    assert sorted(parts) == ['video-audio']  # text is absent everywhere: its pairs contribute nothing
    v = present['audio']
    assert loss.item() == pytest.approx(cmcm_loss(d['video'][v], d['audio'][v]).item(), abs=1e-12)
    loss, parts = cmcm_pairs_loss(d, pairs=[('audio', 'text')], symmetric=True)
    assert list(parts) == ['audio-text'] and loss.item() == pytest.approx(cmcm_loss(d['audio'], d['text'], True).item())
    with pytest.raises(KeyError, match='speech'): cmcm_pairs_loss(d, pairs=[('audio', 'speech')])


def test_cmcm_no_items_is_attached_zero():
    pa = dist(3, 2).requires_grad_()
    loss, parts = cmcm_pairs_loss({'a': pa, 'b': dist(3, 2, 1)}, {'b': torch.zeros(3, dtype=torch.bool)})
    assert parts == {} and loss.item() == 0. and loss.requires_grad
    loss.backward()
    assert torch.all(pa.grad == 0)


def test_cmcm_bad_input():
    with pytest.raises(ValueError, match='same shape'): cmcm_loss(dist(3, 2), dist(3, 4))
    with pytest.raises(ValueError, match=r'\[B, K\]'): code_match_scores(dist(3, 2)[None], dist(3, 2)[None])


# ---------- Masked Margin Softmax ----------
@pytest.mark.parametrize('margin,use_fn,directions', list(itertools.product([0., .3], [False, True], ['both', 'rows', 'cols'])))
def test_mms_matches_loop_reference(margin, use_fn, directions):
    S = rnd(4, 4, seed=5)
    fn = false_negative_mask([0, 1, 0, 2]) if use_fn else torch.zeros(4, 4, dtype=torch.bool)
    want = 0.
    if directions in ('both', 'rows'): want += ref_row_softmax_nll(S, ~fn, margin)
    if directions in ('both', 'cols'): want += ref_row_softmax_nll(S.T, ~fn.T, margin)
    got = mms_loss(S, margin, fn if use_fn else None, directions=directions)
    assert got.item() == pytest.approx(want, abs=1e-10)


def test_mms_module_cosine_and_scale():
    ha, hb = rnd(3, 4, seed=1), rnd(3, 4, seed=2)
    S = 5 * torch.nn.functional.normalize(ha, dim=-1) @ torch.nn.functional.normalize(hb, dim=-1).T
    assert MMSLoss(.1, scale=5, normalize=True)(ha, hb).item() == pytest.approx(mms_loss(S, .1).item(), abs=1e-10)


def test_false_negative_mask_two_key_lists():
    m = false_negative_mask(['x', 'y', 'z'], ['y', 'y', 'x'])
    assert m.tolist() == [[False, False, True], [True, False, False], [False, False, False]]
    with pytest.raises(ValueError, match='length'): false_negative_mask([1, 2], [1, 2, 3])


# ---------- InfoNCE ----------
def test_info_nce_hand():
    "(the I_3 / I_2 worked values are in 11_losses)"
    # 3x3, rows only, a non-symmetric case: row i costs log(sum_j e^{S_ij/τ}) - S_ii/τ
    S = torch.tensor([[1., 0., .5], [0., 2., 0.], [1., 1., 0.]])
    want = sum(math.log(sum(math.exp(S[i, j] / .5) for j in range(3))) - S[i, i] / .5 for i in range(3)) / 3
    assert info_nce(S, .5, symmetric=False).item() == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize('symmetric,use_fn', list(itertools.product([False, True], [False, True])))
def test_info_nce_matches_loop_reference(symmetric, use_fn):
    S, tau = rnd(4, 4, seed=7), .3
    fn = false_negative_mask([0, 0, 1, 2]) if use_fn else torch.zeros(4, 4, dtype=torch.bool)
    want = ref_row_softmax_nll(S / tau, ~fn)
    if symmetric: want = (want + ref_row_softmax_nll(S.T / tau, ~fn.T)) / 2
    assert info_nce(S, tau, fn if use_fn else None, symmetric=symmetric).item() == pytest.approx(want, abs=1e-10)


def test_info_nce_module_temperature_learns_and_clamps():
    m = InfoNCELoss(temperature=.07)
    assert m.temperature.item() == pytest.approx(.07)
    ha = rnd(6, 8, seed=1, dtype=torch.float32)
    opt = torch.optim.SGD(m.parameters(), lr=1.)
    before = m.log_temperature.item()
    for _ in range(3):
        opt.zero_grad(); m(ha, ha + .01 * rnd(6, 8, seed=2, dtype=torch.float32)).backward(); opt.step()
    assert m.log_temperature.item() < before  # well-separated pairs: the temperature goes down
    with torch.no_grad(): m.log_temperature.fill_(5.)
    assert m.temperature.item() == pytest.approx(1.)  # open_clip: logit scale >= 1
    with torch.no_grad(): m.log_temperature.fill_(-9.)
    assert m.temperature.item() == pytest.approx(.01)  # CLIP: logit scale <= 100
    assert not InfoNCELoss(learnable=False).log_temperature.requires_grad
    with pytest.raises(ValueError, match='temperature'): InfoNCELoss(temperature=2.)


# ---------- triplet ----------
def ref_triplet(S, margin, hardest, fn, symmetric):
    B, per = len(S), []
    for i in range(B):
        r = [max(0., margin - S[i, i] + S[i, j]) for j in range(B) if j != i and not fn[i, j]]
        c = [max(0., margin - S[i, i] + S[j, i]) for j in range(B) if j != i and not fn[j, i]]
        agg = (lambda v: max(v, default=0.)) if hardest else sum
        per.append(agg(r) + (agg(c) if symmetric else 0.))
    return sum(per) / B


@pytest.mark.parametrize('hardest,use_fn,symmetric', list(itertools.product([False, True], repeat=3)))
def test_triplet_matches_loop_reference(hardest, use_fn, symmetric):
    S = rnd(5, 5, seed=9)
    fn = false_negative_mask([0, 1, 0, 2, 1]) if use_fn else torch.zeros(5, 5, dtype=torch.bool)
    got = triplet_loss(S, .5, hardest, fn if use_fn else None, symmetric=symmetric)
    assert got.item() == pytest.approx(float(ref_triplet(S, .5, hardest, fn, symmetric)), abs=1e-10)


def test_triplet_hand_2x2():
    S = torch.tensor([[1., .5], [.2, 1.]])
    assert triplet_loss(S, .6).item() == pytest.approx(.1, abs=1e-6)
    assert triplet_loss(S, .6, hardest=True, reduction='sum').item() == pytest.approx(.2, abs=1e-6)


# ---------- label loss ----------
def test_label_loss_hand_and_ignore():
    logits = torch.tensor([[0., math.log(3)], [5., 0.], [0., 0.]])
    assert label_loss(logits, torch.tensor([1, -1, 0])).item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, abs=1e-6)
    z = label_loss(logits.requires_grad_(), torch.full((3,), -1))
    assert z.item() == 0. and z.requires_grad
    with pytest.raises(ValueError, match='disagree'): label_loss(logits, torch.tensor([0, 1]))


def test_label_classifier_learns():
    torch.manual_seed(0)
    x = torch.randn(64, 6); y = (x[:, 0] > 0).long(); y[::4] = -1
    clf = LabelClassifier(6, 2)
    opt = torch.optim.Adam(clf.parameters(), lr=.05)
    for _ in range(100): opt.zero_grad(); clf(x, y).backward(); opt.step()
    acc = (clf.predict(x).argmax(-1) == (x[:, 0] > 0).long()).float().mean().item()
    assert acc > .9, acc


# ---------- empty batches, valid masks ----------
def test_no_valid_item_gives_attached_zero_and_bad_shapes():
    s = rnd(3, 3).requires_grad_()
    for f in (mms_loss, info_nce, triplet_loss):
        loss = f(s, valid=torch.zeros(3, dtype=torch.bool))
        assert loss.item() == 0. and loss.requires_grad
    with pytest.raises(ValueError, match=r'\[B\]'): mms_loss(s, valid=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match='square'): info_nce(s[:2])
    with pytest.raises(ValueError, match='shape of sim'): triplet_loss(s, fn_mask=torch.zeros(2, 2, dtype=torch.bool))


# ---------- gradient checks (float64) ----------
@pytest.mark.parametrize('symmetric,use_valid', list(itertools.product([False, True], repeat=2)))
def test_gradcheck_cmcm(symmetric, use_valid):
    pa, pb = dist(3, 4, 1).requires_grad_(), dist(3, 4, 2).requires_grad_()
    v = torch.tensor([True, False, True]) if use_valid else None
    assert torch.autograd.gradcheck(lambda a, b: cmcm_loss(a, b, symmetric, v), (pa, pb))


def test_gradcheck_cmcm_pairs():
    d = [dist(3, 4, s).requires_grad_() for s in range(3)]
    present = {'c': torch.tensor([True, True, False])}
    assert torch.autograd.gradcheck(lambda a, b, c: cmcm_pairs_loss({'a': a, 'b': b, 'c': c}, present, symmetric=True)[0], tuple(d))


@pytest.mark.parametrize('directions', ['both', 'rows', 'cols'])
def test_gradcheck_mms(directions):
    s = rnd(3, 3, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mms_loss(x, .2, false_negative_mask([0, 1, 0]), directions=directions), (s,))


def test_gradcheck_info_nce_with_temperature():
    s, t = rnd(3, 3, seed=4).requires_grad_(), torch.tensor(.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, tau: info_nce(x, tau, false_negative_mask([0, 0, 1])), (s, t))
    m = InfoNCELoss(temperature=.2).double()
    ha, hb = rnd(3, 4, seed=5).requires_grad_(), rnd(3, 4, seed=6).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: m(a, b), (ha, hb))


@pytest.mark.parametrize('hardest', [False, True])
def test_gradcheck_triplet(hardest):
    s = rnd(3, 3, seed=8).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: triplet_loss(x, 1.5, hardest), (s,))


def test_gradcheck_label_loss():
    lg = rnd(4, 3, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: label_loss(x, torch.tensor([0, -1, 2, 1])), (lg,))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    pa, pb, S = dist(4, 3, 1).float(), dist(4, 3, 2).float(), rnd(4, 4, dtype=torch.float32)
    fn, v = false_negative_mask([0, 1, 0, 2]), torch.tensor([True, True, False, True])
    for f, args in [(cmcm_loss, (pa, pb, True, v)), (mms_loss, (S, .1, fn, v)), (info_nce, (S, .2, fn, v)), (triplet_loss, (S, .2, True, fn, v))]:
        cpu = f(*args)
        gpu = f(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


@pytest.mark.parametrize('symmetric', [True, False])
def test_info_nce_batched_masks_match_selection(symmetric):
    "a [T, B, B] stack with per-slice `valid`/`candidates` equals the loop over slices with the rows/columns selected"
    g = torch.Generator().manual_seed(0)
    S = torch.randn(4, 5, 5, generator=g, dtype=torch.float64)
    valid = torch.rand(4, 5, generator=g) > 0.3
    got = info_nce(S, .3, valid=valid, symmetric=symmetric, reduction='sum')
    want = sum(info_nce(S[t][valid[t]][:, valid[t]], .3, symmetric=symmetric) * int(valid[t].sum()) for t in range(4) if valid[t].any())
    assert got.item() == pytest.approx(float(want), abs=1e-10)
    # candidates wider than the anchors: row i's softmax runs over every candidate, only anchors count
    cand = valid | (torch.rand(4, 5, generator=g) > 0.5)
    rows = valid & cand
    ref = 0.
    for t in range(4):
        for i in range(5):
            if rows[t, i]: ref += -(S[t, i, i] / .3 - torch.logsumexp(S[t, i][cand[t]] / .3, 0))
    got = info_nce(S, .3, valid=valid, candidates=cand, symmetric=False)
    assert got.item() == pytest.approx(float(ref) / int(rows.sum()), abs=1e-10)

def test_info_nce_bad_masks():
    with pytest.raises(ValueError, match='valid must be'): info_nce(torch.eye(3), valid=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match='candidates must be'): info_nce(torch.eye(3)[None], candidates=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match='reduction'): info_nce(torch.eye(3), reduction='max')
