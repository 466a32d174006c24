"A store's batches read at once (issue 30): the same tensors as collating item by item, the same training numbers."
import importlib.util, json, warnings
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.core import collate_items, modality_dl
from cmrl.data.store import FeatureStore, StoreDataset, StoreSource, pack, store_dl
from cmrl.data.loaders import get_source
from cmrl.testing import feature_items

torch.set_num_threads(1)
ROOT = Path(__file__).parents[1]


def scale_module():
    spec = importlib.util.spec_from_file_location('scale', ROOT / 'benchmarks' / 'scale.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


@pytest.fixture
def manifest(tmp_path):
    "24 items: image and audio features of varying length (some missing), texts, languages and groups on some"
    d = tmp_path / 'data'; d.mkdir()
    rows = []
    for i, it in enumerate(feature_items(24, dims={'image': 8, 'audio': 6}, missing_rate=0.3)):
        r = {'id': it['id'], 'label': str(it['label']), 'text': f"item {i}" * (1 + i % 3)}
        if i % 3: r['lang'] = ['fr', 'es'][i % 2]
        if i % 4 == 1: r['group'] = f"g{i % 5}"
        for m in ('image', 'audio'):
            if it[m] is None: continue
            np.save(d / f"{m}{i}.npy", it[m].numpy()[:2 + i % 9]); r[f"{m}_features"] = f"{m}{i}.npy"
        rows.append(r)
    (d / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return d / 'm.jsonl'


def same_batch(a, b):
    assert (a.ids, a.extra, list(a.x), list(a.mask), list(a.present)) == \
           (b.ids, b.extra, list(b.x), list(b.mask), list(b.present))
    for t, u in [(a.y, b.y)] + [(a[k][m], b[k][m]) for k in ('x', 'mask', 'present') for m in a[k]]:
        assert t.dtype == u.dtype and t.shape == u.shape and torch.equal(t, u), (t.shape, u.shape)


def _packed(manifest, tmp_path, shard_size):
    "The manifest's source, packed into `tmp_path / 'st'` in shards of `shard_size` items"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        src = get_source(str(manifest))
        pack(src, tmp_path / 'st', shard_size=shard_size, cache=tmp_path / 'c')
    return src


def test_read_batch_is_collate_items(manifest, tmp_path):
    "Any batch (shards mixed, out of order, repeats, truncation, absent modalities) as `collate_items` makes it"
    src = _packed(manifest, tmp_path, 7)
    fs = FeatureStore(tmp_path / 'st')
    assert len(fs.meta['shards']) == 4
    g = np.random.default_rng(0)
    kws = [dict(modalities=src.modalities, shapes=src.shapes),
           dict(modalities=src.modalities, shapes=src.shapes, max_len={'text': 5, 'audio': 40}),
           dict(modalities=('audio', 'text'), shapes=src.shapes, pad_value=-1.)]
    batches = [g.integers(0, fs.n, k) for k in (1, 3, 8, 24, 40)] + [np.arange(fs.n)]
    batches += [[i for i in range(fs.n) if fs.item(i)['audio'] is None][:3]]  # no item has audio: shapes' zeros
    for kw in kws:
        for p in batches:
            same_batch(fs.read_batch(p, **kw), collate_items([fs.item(int(i), kw['modalities']) for i in p], **kw))
    b = fs.read_batch(np.arange(fs.n), **kws[0])
    assert None in b.extra['lang'] and not b.present['audio'].all() and not b.mask['audio'].all()


def test_store_dl_yields_modality_dl_batches(manifest, tmp_path):
    "The same batches as `modality_dl` over the same items, shuffled with the same generator, with workers too"
    src = _packed(manifest, tmp_path, 10)
    st = StoreSource(tmp_path / 'st')
    ds, kw = st.dataset('all'), dict(modalities=st.modalities, shapes=st.shapes, max_len={'text': 8})
    for nw in (0, 1):
        a = store_dl(ds, bs=5, shuffle=True, drop_last=True, num_workers=nw, **kw)
        b = modality_dl(ds, bs=5, shuffle=True, drop_last=True, num_workers=nw, **kw)
        b.rng.setstate(a.rng.getstate())
        got, want = list(a), list(b)
        assert len(got) == len(want) == 4
        for (x,), (y,) in zip(got, want): same_batch(x, y)


def _run(store, out, **kw):
    from cmrl.train import train
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train(data=str(store), out=str(out), quiet=True, threads=1, seed=3, **kw)
    sd = torch.load(Path(out) / 'checkpoint.pt', map_location='cpu', weights_only=False)
    cfg = sd['config']
    return s, {**sd, 'config': json.loads(cfg) if isinstance(cfg, str) else cfg}


def _same_model(a, b):
    ka, kb = a['model'], b['model']
    assert list(ka) == list(kb) and all(torch.equal(ka[k], kb[k]) for k in ka)


@pytest.mark.parametrize('planted', [True, False])
def test_training_numbers_are_unchanged(planted, manifest, tmp_path, monkeypatch):
    "Uni-Code (defaults, augmentation on): batches read at once train exactly as item-by-item batches (the old "
    "path), on a planted store of 4 shards and on a store of features of varying length: same losses, same weights"
    import cmrl.data.loaders as loaders
    if planted: scale_module().pack_planted(1600, tmp_path / 'st', shard_size=400)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            pack(get_source(str(manifest)), tmp_path / 'st', shard_size=10, cache=tmp_path / 'c')
    kw = dict(bs=64, epochs=1) if planted else dict(bs=8, epochs=2, text_frontend='bytes')
    new, new_sd = _run(tmp_path / 'st', tmp_path / 'new', **kw)
    monkeypatch.setattr(loaders, '_dl', lambda ds, *a, **k: modality_dl(ds, *a, **k))
    monkeypatch.delattr(StoreSource, 'step_counts')  # and every record read to look for long features
    old, old_sd = _run(tmp_path / 'st', tmp_path / 'old', **kw)
    assert new_sd['config']['max_len'] == old_sd['config']['max_len']
    assert new['n_train'] == old['n_train'] == (600 if planted else 19)
    assert (new['train_loss'], new.get('valid_loss')) == (old['train_loss'], old.get('valid_loss'))
    _same_model(new_sd, old_sd)


def test_finite_check_is_exact():
    "NaNGuard's check: a finite sum is enough, and a sum that overflows falls back to checking every element"
    from cmrl.callbacks import _finite
    assert _finite(torch.full((4,), 3e38)) and _finite(torch.full((70000,), 60000., dtype=torch.float16))
    assert not _finite(torch.tensor([1., float('nan')])) and not _finite(torch.tensor([float('inf'), -float('inf')]))
    assert not _finite({'a': [torch.ones(3), torch.tensor([0., float('-inf')])]}) and _finite(torch.arange(3))


def test_memory_does_not_grow_with_steps(tmp_path):
    "Training on a store keeps nothing per step but fastai's per-step loss: tracked objects and RssAnon stay flat"
    import gc
    from fastai.callback.core import Callback
    from cmrl.train import train
    def rss_anon():
        return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('RssAnon:'))
    class Count(Callback):
        order = 1000
        def before_fit(self): self.objs, self.rss = [], []
        def after_batch(self):
            if self.training: self.objs.append(len(gc.get_objects())); self.rss.append(rss_anon())
    scale_module().pack_planted(1600, tmp_path / 'st', shard_size=300)
    c = Count()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        train(data=str(tmp_path / 'st'), bs=16, epochs=1, out=str(tmp_path / 'run'), quiet=True, threads=1, cbs=[c])
    steps = len(c.objs) - 5
    assert steps >= 30
    assert c.objs[-1] - c.objs[4] <= 2 * steps, c.objs  # fastai's Recorder keeps one loss per step
    assert max(c.rss[5:]) - c.rss[4] < 30, c.rss


def test_padded_tensors_are_reused_only_when_free(tmp_path):
    "A batch's padded tensor is reused once nothing holds it (no reference, no view), reset to padding even when it "
    "was changed in place; every batch equals `collate_items`"
    scale_module().pack_planted(1300, tmp_path / 'st', shard_size=500)
    fs = FeatureStore(tmp_path / 'st')
    ds, ml = StoreDataset(fs, np.arange(fs.n), ('image', 'audio', 'text')), {'image': 512, 'audio': 40, 'text': 12}
    def check(b, p): same_batch(b, collate_items([ds[int(i)] for i in p], modalities=ds.modalities, max_len=ml))
    p = [np.arange(k, k + 8) * 37 % fs.n for k in range(6)]
    b = ds.batch(p[0], max_len=ml); ptr = b.x['image'].data_ptr(); del b
    b = ds.batch(p[1], max_len=ml); check(b, p[1]); assert b.x['image'].data_ptr() == ptr  # reused
    view, held = b.x['image'][:, :3], b.x['audio']; del b
    b = ds.batch(p[2], max_len=ml); check(b, p[2])
    assert b.x['image'].data_ptr() != view.data_ptr() and b.x['audio'].data_ptr() != held.data_ptr()
    assert view.abs().sum() > 0 and held.abs().sum() > 0  # what they hold was not overwritten
    b.x['text'].fill_(7.); ptr = b.x['text'].data_ptr(); del b
    b = ds.batch(p[3], max_len=ml); check(b, p[3]); assert b.x['text'].data_ptr() == ptr  # reused, all of it reset
    kept = [ds.batch(q, max_len=ml) for q in p]  # all held: all distinct
    assert len({k.x['image'].data_ptr() for k in kept}) == len(p)
    for k, q in zip(kept, p): check(k, q)


def test_epoch_order_is_an_array(manifest, tmp_path):
    "A store's training loader hands fastai its epoch order as an int64 array (8 bytes an item), every item once"
    from cmrl.data.loaders import source_dls
    _packed(manifest, tmp_path, 10)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        dls = source_dls(str(tmp_path / 'st'), bs=5, cache=False)
    idx = dls.train.get_idxs()
    assert isinstance(idx, np.ndarray) and idx.dtype == np.int64
    assert sorted(idx.tolist()) == list(range(len(dls.train.dataset)))
    assert sum(len(b.ids) for (b,) in dls.train) == len(dls.train.dataset) // 5 * 5  # drop_last: whole batches
