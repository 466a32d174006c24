"Cross-modal generalisation and localisation protocol: pooling, the linear head, scores, and the synthetic set."
import math, numpy as np, pytest, torch, torch.nn.functional as F
from cmrl.core import collate_items
from cmrl.core import pool_steps, resample_steps
from cmrl.eval.generalization import (LinearProbe, probe_scores, cross_modal_generalization, localization)


def fixed_steps(ds):
    "Fixed (untrained) per-step encoders for SynthEvents: video colour RFF, audio mean log-mel per step, text one-hot"
    b = collate_items([ds[i] for i in range(len(ds))])
    N, T = b.bs, ds.cfg.steps
    v = b.x['video']; fg = ((v - v.median(1, keepdim=True).values).abs().sum(2, keepdim=True) > 0.3).float()
    colour = (v * fg).sum((3, 4)) / fg.sum((3, 4)).clamp(min=1)
    W = 4 * torch.randn(3, 128, generator=torch.Generator().manual_seed(0)); ph = 6.283 * torch.rand(128, generator=torch.Generator().manual_seed(1))
    feats = {'video': torch.cos(colour @ W + ph) * (fg.sum((2, 3, 4)) > 0)[..., None],
             'audio': b.x['audio'].view(N, T, -1, b.x['audio'].shape[-1]).mean(2),
             'text': F.one_hot(b.x['text'], len(ds.vocab)).float()}
    masks = {'video': b.mask['video'][:, :T], 'audio': torch.ones(N, T, dtype=torch.bool), 'text': b.mask['text']}
    return b, feats, masks


def stand_in(train_ds, test_ds, K=64):
    "Shared space by ridge regression onto caption bags of words (pairs only, no labels), then a k-means codebook"
    from sklearn.linear_model import Ridge
    from sklearn.cluster import KMeans
    (btr, ftr, mtr), (bte, fte, mte) = fixed_steps(train_ds), fixed_steps(test_ds)
    target = pool_steps(ftr['text'], mtr['text']).numpy()
    maps = {m: Ridge(alpha=0.1).fit(pool_steps(ftr[m], mtr[m]).numpy(), target) for m in ('video', 'audio')}
    def to_space(f):
        return {m: (torch.tensor(maps[m].predict(x.reshape(-1, x.shape[-1]).numpy()), dtype=torch.float32).view(*x.shape[:2], -1)
                    if m in maps else x) for m, x in f.items()}
    ptr, pte = to_space(ftr), to_space(fte)
    E = torch.tensor(KMeans(K, n_init=1, random_state=0).fit(torch.cat([ptr[m][mtr[m]] for m in ptr]).numpy()).cluster_centers_, dtype=torch.float32)
    def quantise(p): return {m: E[torch.cdist(x.reshape(-1, x.shape[-1]), E).argmin(1).view(x.shape[:2])] for m, x in p.items()}
    return (btr, quantise(ptr), mtr), (bte, quantise(pte), mte)


@pytest.fixture(scope='module')
def synth():
    pytest.importorskip('sklearn')
    from cmrl.data.synth import SynthEvents
    return stand_in(SynthEvents(120, seed=0), SynthEvents(80, seed=1))


def test_generalization_every_pair_above_chance(synth):
    (btr, qtr, mtr), (bte, qte, mte) = synth
    how = 'mean'
    res = cross_modal_generalization({m: pool_steps(x, mtr[m], how) for m, x in qtr.items()}, btr.y,
                                     {m: pool_steps(x, mte[m], how) for m, x in qte.items()}, bte.y,
                                     train_ids=btr.ids, test_ids=bte.ids)
    assert len(res) == 9
    for k, v in res.items():
        assert v['n'] == 80 and v['n_train'] == 120 and v['chance'] == 1 / 8
        assert v['bacc'] > v['chance'] + 0.25 and v['acc'] > v['majority'] + 0.2, (k, v)


def test_max_pooling(synth):
    "Max pooling runs the same protocol; on this stand-in the in-modality heads stay far above chance (cross-modal ones vary)"
    (btr, qtr, mtr), (bte, qte, mte) = synth
    res = cross_modal_generalization({m: pool_steps(x, mtr[m], 'max') for m, x in qtr.items()}, btr.y,
                                     {m: pool_steps(x, mte[m], 'max') for m, x in qte.items()}, bte.y)
    for m in ('video', 'audio', 'text'): assert res[f'{m}->{m}']['bacc'] > 0.7
    assert res['audio->text']['bacc'] > 0.5


def test_localization_video_audio_above_chance(synth):
    (btr, qtr, mtr), (bte, qte, mte) = synth
    res = localization({m: qtr[m] for m in ('video', 'audio')}, mtr, btr.extra['frame_labels'],
                       {m: qte[m] for m in ('video', 'audio')}, mte, bte.extra['frame_labels'],
                       train_ids=btr.ids, test_ids=bte.ids)
    assert set(res) == {'video->video', 'video->audio', 'audio->video', 'audio->audio'}
    for k, v in res.items():
        assert v['n'] == 800 and v['chance'] == pytest.approx(1 / 9)
        assert v['bacc'] > v['chance'] + 0.2, (k, v)


def test_unaligned_modality_is_at_chance(synth):
    "A modality mapped by an unrelated random rotation does not share the space: the head must not transfer"
    (btr, qtr, mtr), (bte, qte, mte) = synth
    ptr = {m: pool_steps(x, mtr[m]) for m, x in qtr.items()}; pte = {m: pool_steps(x, mte[m]) for m, x in qte.items()}
    R = torch.linalg.qr(torch.randn(ptr['audio'].shape[1], ptr['audio'].shape[1], generator=torch.Generator().manual_seed(3)))[0]
    ptr['rot'], pte['rot'] = ptr['audio'] @ R, pte['audio'] @ R
    res = cross_modal_generalization(ptr, btr.y, pte, bte.y, pairs=[('rot', 'rot'), ('video', 'rot')])
    assert res['rot->rot']['bacc'] > 0.6 and res['video->rot']['bacc'] < res['rot->rot']['bacc'] - 0.3


def test_never_fit_and_score_on_same_items():
    f = {'a': torch.randn(10, 3)}; y = torch.arange(10) % 2
    with pytest.raises(ValueError, match='same items'):
        cross_modal_generalization(f, y, f, y, train_ids=[f'i{k}' for k in range(10)], test_ids=['i3', 'x'] + [f'z{k}' for k in range(8)])
    with pytest.raises(ValueError, match='same items'):
        localization({'a': torch.randn(4, 5, 3)}, {'a': torch.ones(4, 5, dtype=torch.bool)}, torch.zeros(4, 5, dtype=torch.long),
                     {'a': torch.randn(4, 5, 3)}, {'a': torch.ones(4, 5, dtype=torch.bool)}, torch.zeros(4, 5, dtype=torch.long),
                     train_ids=['a', 'b', 'c', 'd'], test_ids=['d', 'e', 'f', 'g'])


def test_pool_and_align_bad_input_and_audio_grid():
    x = torch.arange(12.).view(1, 4, 3); m = torch.tensor([[1, 1, 0, 1]]).bool()
    assert pool_steps(x, m).tolist() == [[(0 + 3 + 9) / 3, (1 + 4 + 10) / 3, (2 + 5 + 11) / 3]]
    assert pool_steps(x, m, 'max').tolist() == [[9., 10., 11.]]
    with pytest.raises(ValueError, match="'mean' or 'max'"): pool_steps(x, m, 'median')
    with pytest.raises(ValueError, match='does not match'): pool_steps(x, m[:, :3])
    xa, ma = resample_steps(torch.arange(10.).view(1, 10, 1), torch.ones(1, 10, dtype=torch.bool), 5, by='time')
    assert xa.flatten().tolist() == [0.5, 2.5, 4.5, 6.5, 8.5] and ma.all()
    # 100 audio frames onto 10 label steps (frames 10s..10s+9 -> step s)
    xa, _ = resample_steps(torch.arange(100.).view(1, 100, 1), torch.ones(1, 100, dtype=torch.bool), 10, by='time')
    assert xa.flatten().tolist() == [4.5 + 10 * s for s in range(10)]


def test_probe_scores_hand_computed():
    s = probe_scores([1, 1, 1, 1, 2, 3], [1, 1, 2, 2, 2, 1], y_train=[3, 3, 1])
    assert s['acc'] == pytest.approx(3 / 6) and s['bacc'] == pytest.approx((2 / 4 + 1 + 0) / 3)
    assert s['majority'] == pytest.approx(1 / 6) and s['chance'] == pytest.approx(1 / 3) and s['n'] == 6


@pytest.mark.parametrize('backend', ['sklearn', 'torch'])
@pytest.mark.parametrize('standardize', [True, False])
def test_linear_probe_backends(backend, standardize):
    if backend == 'sklearn': pytest.importorskip('sklearn')
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    X = F.one_hot(y, 3).float() * 2 + torch.randn(300, 3, generator=g) * 0.7
    p = LinearProbe(backend=backend, standardize=standardize).fit(X[:200], y[:200])
    assert (p.predict(X[200:]) == y[200:].numpy()).mean() > 0.85
    assert p.decision_function(X[:4]).shape == (4, 3)


def test_binary_probe_and_labels_not_zero_based():
    X = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, .1, (40, 2)); y = np.r_[[5] * 20, [9] * 20]
    for be in ('sklearn', 'torch'):
        p = LinearProbe(backend=be).fit(X, y)
        assert set(p.predict(X)) == {5, 9} and (p.predict(X) == y).mean() == 1.


def test_unknown_labels_and_missing_modalities_are_left_out():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (40,), generator=g); y[:5] = -1
    f = {'a': y[:, None].float() + 0.1 * torch.randn(40, 1, generator=g), 'b': y[:, None].float()}
    pres = {'b': torch.arange(40) % 2 == 0}
    r = cross_modal_generalization(f, y, f, y, pairs=[('a', 'b'), ('b', 'a')], train_present=pres, test_present=pres)
    assert r['a->b']['n_train'] == 35 and r['a->b']['n'] == sum(1 for i in range(5, 40) if i % 2 == 0)
    assert r['b->a']['n_train'] == sum(1 for i in range(5, 40) if i % 2 == 0)


def test_probe_C_by_cross_validation_on_fit_items_only():
    "C='cv' (the default) picks C from Cs by stratified folds of the fitting modality's items; the result says which C"
    g = torch.Generator().manual_seed(3)
    y = torch.arange(90) % 3
    X = F.one_hot(y, 3).float() + torch.randn(90, 3, generator=g)
    p = LinearProbe().fit(X[:60], y[:60])
    assert p.cv_['k'] == 5 and set(p.cv_['scores']) == set(p.Cs) and p.C_ in p.Cs
    assert p.C_ == max(p.Cs, key=lambda c: (p.cv_['scores'][c], -c))
    # the choice depends only on the fit items: other test items change nothing
    r1 = cross_modal_generalization({'a': X[:60]}, y[:60], {'a': X[60:]}, y[60:], pairs=[('a', 'a')])
    r2 = cross_modal_generalization({'a': X[:60]}, y[:60], {'a': -X[60:]}, y[60:], pairs=[('a', 'a')])
    assert r1['a->a']['C'] == r2['a->a']['C'] == p.C_ and 0 <= r1['a->a']['bacc'] <= 1


def test_probe_cv_falls_back_for_tiny_classes():
    X = np.array([[0.], [0.2], [1.], [1.2], [2.], [3.]]); y = [0, 0, 1, 1, 2, 3]
    p = LinearProbe().fit(X, y)  # two classes of one item: kept out of the folds, k = 2
    assert p.cv_['k'] == 2 and '2 item(s) of single-item classes' in p.cv_['note']
    q = LinearProbe().fit(X[[0, 2, 4]], [0, 1, 2])  # nothing splittable: C = 1, with the reason
    assert q.C_ == 1. and q.cv_['k'] == 0 and 'no cross-validation' in q.cv_['note']
    with pytest.raises(ValueError, match='positive'): LinearProbe(C=0)
