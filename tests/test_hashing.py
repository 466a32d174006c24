"""Binary hash codes (issue 14 item 5): the worked examples of the losses, codes and packing, Hamming search against a
brute-force numpy search, the scores against float retrieval's rules, and learned codes against LSH at the same bits on
paired items (synthetic items through a tiny trained shared space, and Tux Paint)."""
import math, os, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cmrl.eval.index import BinaryIndex, hamming_distances
from cmrl.heads.hashing import (to_binary, pack_codes, unpack_codes, lsh_codes, HashHead,
                                pairwise_likelihood_loss, quantization_loss, bit_balance_loss, HashLoss, fit_hash_head)
from cmrl.eval.hashing import hash_retrieval, hash_retrieval_report, hash_report_table
from cmrl.metrics import cross_modal_retrieval
from cmrl.losses import info_nce
from cmrl.testing import feature_items

TUX = Path(os.environ.get('CMRL_TUXPAINT') or '/usr/share/tuxpaint/stamps')
L1 = math.log(1 + math.exp(-1))  # 0.3133


# worked examples -------------------------------------------------------------------------------------------------------

def test_pairwise_likelihood_worked_example():
    u, v = torch.tensor([[1., 1.]]), torch.tensor([[1., 1.], [-1., -1.]])
    assert pairwise_likelihood_loss(u, v, torch.tensor([[1, 0]])).item() == pytest.approx(0.31326, abs=1e-4)
    v2 = torch.tensor([[1., 1.], [1., -1.]])  # theta_12 = 0: the non-pair costs log 2
    assert pairwise_likelihood_loss(u, v2, torch.tensor([[1, 0]])).item() == pytest.approx((L1 + math.log(2)) / 2, abs=1e-6)
    assert pairwise_likelihood_loss(u, v, torch.tensor([[1, 0]]), torch.tensor([[False, False]])).item() == 0.
    with pytest.raises(ValueError, match='same bits'): pairwise_likelihood_loss(u, torch.ones(2, 3), torch.ones(1, 2))


def test_pairwise_likelihood_matches_formula():
    "-[s theta - log(1 + e^theta)], pairs and non-pairs averaged apart, against a direct computation"
    g = torch.Generator().manual_seed(0)
    u, v = torch.tanh(torch.randn(5, 8, generator=g)), torch.tanh(torch.randn(5, 8, generator=g))
    s = torch.eye(5)
    th = (u @ v.T / 2).double()
    ell = -(s * th - torch.log1p(torch.exp(th)))
    want = (ell[s.bool()].mean() + ell[~s.bool()].mean()) / 2
    assert pairwise_likelihood_loss(u, v, s).item() == pytest.approx(want.item(), rel=1e-5)


def test_quantization_and_balance_worked_examples():
    assert quantization_loss(torch.tensor([[0.5, -0.9]])).item() == pytest.approx(0.13, abs=1e-6)
    assert bit_balance_loss(torch.tensor([[1., 1.], [1., -1.]])).item() == pytest.approx(0.5, abs=1e-6)
    u = torch.tensor([[[1., 1.], [1., 1.]], [[-1., -1.], [-1., -1.]]])
    p = HashLoss().parts(u)
    assert (p['sim'].item(), p['q'].item(), p['bal'].item()) == (pytest.approx(L1, abs=1e-6), 0., 0.)
    assert HashLoss(gamma=1., eta=1.)(u, torch.tensor([[True, True], [True, False]])).item() == pytest.approx(L1 + 0.5, abs=1e-6)


def test_quantization_gradient_pulls_towards_the_sign():
    u = torch.tensor([[0.5, -0.9]], requires_grad=True)
    quantization_loss(u).backward()
    # d/du mean (b - u)^2 = -(b - u) for 2 bits: descent moves 0.5 up towards +1 and -0.9 down towards -1
    assert u.grad[0].tolist() == pytest.approx([-0.5, 0.1])


# codes, packing, Hamming search ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('bits', [8, 16, 64, 136])
def test_codes_are_pm1_and_pack_round_trips(bits):
    h = torch.randn(50, bits, generator=torch.Generator().manual_seed(bits))
    h[0, :3] = 0.  # sign(0) = +1
    c = to_binary(h)
    assert c.dtype == torch.int8 and set(c.unique().tolist()) <= {-1, 1} and (c[0, :3] == 1).all()
    p = pack_codes(c)
    assert p.dtype == np.uint8 and p.shape == (50, bits // 8)
    assert np.array_equal(unpack_codes(p), c.numpy())
    e = torch.randn(20, 7)
    lc = lsh_codes(e, bits, seed=3)
    assert lc.shape == (20, bits) and set(lc.unique().tolist()) <= {-1, 1}
    assert np.array_equal(unpack_codes(pack_codes(lc)), lc.numpy())
    head = HashHead(['a', 'b'], 7, bits)
    hc = head.encode({'a': e, 'b': e})
    assert all(set(v.unique().tolist()) <= {-1, 1} and v.shape == (20, bits) for v in hc.values())


def test_pack_rejects_bad_codes():
    with pytest.raises(ValueError, match='-1 or \\+1'): pack_codes(np.zeros((2, 8)))
    with pytest.raises(ValueError, match='multiple of 8'): pack_codes(np.ones((2, 12)))
    with pytest.raises(ValueError, match='uint8'): unpack_codes(np.ones((2, 1), dtype=np.int64))
    with pytest.raises(ValueError, match='multiple of 8'): BinaryIndex(12)
    with pytest.raises(ValueError, match='empty'): BinaryIndex(8).search(np.ones((1, 8)), 1)
    with pytest.raises(ValueError, match=r'\[N, 16\]'): BinaryIndex(16).add(np.ones((3, 8)))


def test_hamming_search_matches_brute_force_numpy():
    rng = np.random.default_rng(0)
    B, G, Q, k = 64, 500, 30, 10
    g = rng.choice([-1, 1], (G, B)).astype(np.int8)
    q = rng.choice([-1, 1], (Q, B)).astype(np.int8)
    q[0] = g[17]  # an exact hit
    brute = (q[:, None, :] != g[None, :, :]).sum(-1)  # [Q, G] numpy Hamming distances
    assert np.array_equal(hamming_distances(q, g).numpy(), brute)
    ix = BinaryIndex(B).add(pack_codes(g))  # packed input works too
    D, I = ix.search(q, k)
    assert np.array_equal(D, np.sort(brute, 1)[:, :k])  # the k smallest distances, ascending
    assert np.array_equal(np.take_along_axis(brute, I, 1), D)  # each returned item is at its reported distance
    assert I[0, 0] == 17 and D[0, 0] == 0
    assert np.array_equal(q.astype(int) @ g.T.astype(int), B - 2 * brute)  # <b, b'> = B - 2 d_H


# scoring: the rules of float retrieval ---------------------------------------------------------------------------------

def test_hash_retrieval_scores_like_float_retrieval():
    "Same relevance, false-negative mask and tie rule as cross_modal_retrieval on the codes' inner products"
    rng = np.random.default_rng(1)
    N, B = 60, 16
    c = {'image': rng.choice([-1, 1], (N, B)), 'text': rng.choice([-1, 1], (N, B))}
    c['text'][:30] = c['image'][:30] * np.where(rng.random((30, B)) < 0.1, -1, 1)  # half the pairs close in Hamming
    groups = [i // 3 for i in range(N)]
    present = {'text': np.arange(N) % 7 != 0}
    for ties in ('pessimistic', 'optimistic', 'mean'):
        r = hash_retrieval(c, groups=groups, present=present, ties=ties)
        ref = cross_modal_retrieval({m: torch.tensor(v).float() for m, v in c.items()}, groups=groups, present=present, metric='dot', ties=ties)
        assert set(r) == set(ref) == {'image->text', 'text->image'}
        for d in r:
            for key in ('R@1', 'R@5', 'R@10', 'medr', 'meanr', 'n', 'skipped', 'tied'):
                assert r[d][key] == pytest.approx(ref[d][key]), (ties, d, key)
            assert r[d]['chance'] == pytest.approx(ref[d]['chance'])
    assert r['image->text']['skipped'] > 0  # images whose text is absent have no hit: counted, not scored


# learned codes against LSH at the same bits ----------------------------------------------------------------------------

def _shared_space(fit: dict, new: dict, d: int = 32, steps: int = 200, lr: float = 1e-2, wd: float = 0., seed: int = 0):
    "A tiny trained shared space: one linear map per modality to `d`, InfoNCE over every modality pair on the fit items"
    torch.manual_seed(seed); g = torch.Generator().manual_seed(seed)
    mu = {m: v.mean(0) for m, v in fit.items()}; sd = {m: v.std(0) + 1e-3 for m, v in fit.items()}
    z = lambda x: {m: (v - mu[m]) / sd[m] for m, v in x.items()}
    fit, new = z(fit), z(new)
    mods = list(fit); n = len(fit[mods[0]])
    enc = torch.nn.ModuleDict({m: torch.nn.Linear(v.shape[1], d) for m, v in fit.items()})
    opt = torch.optim.AdamW(enc.parameters(), lr, weight_decay=wd)
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[:128]
        e = {m: F.normalize(enc[m](v[idx]), dim=-1) for m, v in fit.items()}
        loss = sum(info_nce(e[a] @ e[b].T, 0.1) for i, a in enumerate(mods) for b in mods[i + 1:])
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad(): return {m: enc[m](v) for m, v in fit.items()}, {m: enc[m](v) for m, v in new.items()}


def _r10(rep, which): return {d: v['R@10'] for d, v in rep[which].items()}


def test_learned_codes_beat_lsh_on_synthetic_pairs():
    "SynthEvents video/audio per-step features (fixed random projections: cmrl.testing.feature_items), a shared space trained on 400 items, 200 new items scored"
    items = feature_items(600, seed=0, dims={'video': 24, 'audio': 20})
    X = {m: torch.stack([it[m].flatten() for it in items]) for m in ('video', 'audio')}
    fit, new = _shared_space({m: v[:400] for m, v in X.items()}, {m: v[400:] for m, v in X.items()})
    for B in (16, 32):
        rep = hash_retrieval_report(fit, new, bits=B)
        h, l, f = _r10(rep, 'hash'), _r10(rep, 'lsh'), _r10(rep, 'float')
        print(hash_report_table(rep))
        for d in h: assert h[d] > l[d], (B, d, h[d], l[d])
        assert rep['bytes_per_item'] == {'float': 128, 'hash': B // 8, 'lsh': B // 8}
        assert all(f[d] > rep['float'][d]['chance']['R@10'] for d in f)  # the float space has something to keep


def _tux_features(src, split):
    "Cheap frozen features: 8x8 average-pooled pixels, and hashed byte unigram + bigram counts of the text"
    ds = src.dataset(split)
    items = [ds[i] for i in range(len(ds))]
    items = [it for it in items if it.get('image') is not None and it.get('text') is not None]
    img = torch.stack([F.adaptive_avg_pool2d(it['image'][0].float(), 8).flatten() for it in items])
    txt = torch.zeros(len(items), 1024)
    for i, it in enumerate(items):
        ids = it['text'].tolist()
        for a, b in zip([0] + ids, ids + [0]): txt[i, (a * 31 + b) % 1024] += 1
        for a in ids: txt[i, (a * 7919) % 1024] += 1
    return {'image': img, 'text': txt}, [it['id'] for it in items], [it['extra']['group'] for it in items]


@pytest.mark.skipif(not TUX.is_dir(), reason='Tux Paint stamps not installed')
def test_learned_codes_beat_lsh_on_tuxpaint_pairs():
    """French Tux Paint, image <-> text: a linear shared space on cheap frozen features trained on the training part, the hash
    head fitted on the same items' embeddings. Asserted on those paired items (the pairs the codes are fitted to keep); the
    held-out test part is scored too and printed, not asserted: with these features float R@10 there is ~15-20 % (chance 8 %)
    and learned codes and LSH are within noise of each other on 125 items."""
    from cmrl.data.loaders import get_source
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        src = get_source('tuxpaint', langs='fr', modalities=('image', 'text'), size=32)
    tr, trid, trg = _tux_features(src, 'train')
    te, teid, teg = _tux_features(src, 'test')
    (fit, new) = _shared_space(tr, te, d=64, steps=100, lr=1e-3, wd=1e-2)
    for B in (16, 32):
        head = fit_hash_head(fit, bits=B)
        rep = hash_retrieval_report(fit, fit, bits=B, head=head, ids=trid, groups=trg)
        held = hash_retrieval_report(fit, new, bits=B, head=head, ids=teid, groups=teg)
        print(f"train part ({rep['n_eval']} items):\n{hash_report_table(rep)}\ntest part ({held['n_eval']} items):\n{hash_report_table(held)}")
        h, l = _r10(rep, 'hash'), _r10(rep, 'lsh')
        for d in h: assert h[d] > l[d] + 10, (B, d, h[d], l[d])
        assert all(v > held['float'][d]['chance']['R@10'] for d, v in _r10(held, 'float').items())


# the fastai fit ---------------------------------------------------------------------------------------------------------

def test_fit_hash_head_seeded_and_validates():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 8, generator=g)
    embs = {'a': z @ torch.randn(8, 16, generator=g), 'b': z @ torch.randn(8, 16, generator=g)}
    nt = torch.get_num_threads()
    h1, learn = fit_hash_head(embs, bits=16, epochs=5, return_learner=True)
    assert torch.get_num_threads() == nt  # restored
    h2 = fit_hash_head(embs, bits=16, epochs=5)
    assert all(torch.equal(h1.encode(embs)[m], h2.encode(embs)[m]) for m in embs)
    vals = [v[0] for v in learn.recorder.values]
    assert vals[-1] < vals[0]
    pres = {'b': torch.arange(200) % 2 == 0}
    bad = {'a': embs['a'], 'b': embs['b'].clone()}; bad['b'][1] = float('nan')
    fit_hash_head(bad, present=pres, bits=16, epochs=1)  # NaN rows that are marked absent are fine
    with pytest.raises(ValueError, match='not finite'): fit_hash_head(bad, bits=16, epochs=1)
    with pytest.raises(ValueError, match='at least 2 modalities'): fit_hash_head({'a': embs['a']})
    with pytest.raises(ValueError, match='2 items present'): fit_hash_head(embs, present={'a': torch.zeros(200, dtype=torch.bool)})
    with pytest.raises(ValueError, match='has 16 bits'): hash_retrieval_report(embs, embs, bits=32, head=h1)
