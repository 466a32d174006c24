"""Precomputed features in manifests (issue 12, "what to add"): `"<modality>_features": "x.npy"` -> float `[B, T, D]` batches with
padding masks; bad feature files skipped with their reason (never unpickled); a model trains on them for one epoch."""
import json, os, pickle, warnings
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.core import IMAGE, SPEECH, TEXT, ModalityBatch
from cmrl.data.audio import DecodeError
from cmrl.data.cache import load_features, feature_shape
from cmrl.data.manifest import ManifestError
from cmrl.data.loaders import get_source, source_dls


def write(p: Path, rows):
    p.write_text(''.join(json.dumps(r) + '\n' for r in rows), encoding='utf-8')
    return p


@pytest.fixture
def feats(tmp_path):
    "12 items: image features [T, 16] (T = 1..4, item 0 a [16] vector), speech features [5 + i % 3, 8], text; labels a/b"
    d = tmp_path / 'feats'; d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        np.save(d / f"img{i}.npy", rng.standard_normal(16 if i == 0 else (1 + i % 4, 16)).astype('float32'))
        np.save(d / f"sp{i}.npy", rng.standard_normal((5 + i % 3, 8)))  # float64: loaded as float32
        rows.append({'id': f"x{i}", 'image_features': f"img{i}.npy", 'speech_features': f"sp{i}.npy", 'text': f"item {i}",
                     'label': 'ab'[i % 2], 'split': 'valid' if i >= 9 else 'train'})
    return d, rows


def test_batches_hold_float_BTD_with_masks(feats, tmp_path):
    d, rows = feats
    src = get_source(write(d / 'm.jsonl', rows))
    assert src.feature_dims == {IMAGE: 16, SPEECH: 8} and src.modalities == (IMAGE, SPEECH, TEXT)
    assert src.shapes[IMAGE] == ((16,), torch.float32) and src.shapes[SPEECH] == ((8,), torch.float32)
    dls = source_dls(src, bs=3, cache=tmp_path / 'c', shuffle_train=False)
    b = ModalityBatch.of(dls.train.one_batch())
    assert b.x[IMAGE].dtype == torch.float32 and b.x[IMAGE].shape == (3, 3, 16)  # items 0, 1, 2: T = 1, 2, 3
    assert b.mask[IMAGE].sum(1).tolist() == [1, 2, 3] and b.x[SPEECH].shape == (3, 7, 8) and b.mask[SPEECH].sum(1).tolist() == [5, 6, 7]
    assert torch.equal(b.x[IMAGE][1, :2], torch.from_numpy(np.load(d / 'img1.npy'))) and (b.x[IMAGE][0, 1:] == 0).all()
    assert b.x[TEXT].dtype == torch.long and b.present[IMAGE].all()
    assert not list((tmp_path / 'c').rglob('*.npy'))  # features are not copied into the cache
    assert len(dls.valid_ds) == 3 and src.summary()['feature_dims'] == {IMAGE: 16, SPEECH: 8}


class Boom:
    def __reduce__(self): return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize('kind,reason', [
    ('pickle', 'pickle'), ('npz', '.npz archive'), ('int', 'dtype int64'), ('3d', 'shape (2, 2, 16)'), ('empty', 'shape (0, 16)'),
    ('text', 'unreadable .npy')])
def test_bad_feature_files_skipped_with_reason(feats, tmp_path, kind, reason):
    d, rows = feats
    bad = d / 'img3.npy'
    if kind == 'pickle':
        b = Boom(); b.marker = str(tmp_path / 'ran')
        np.save(bad, np.array([b, 1], dtype=object), allow_pickle=True)
    elif kind == 'npz': np.savez(d / 'img3.npz', a=np.zeros((2, 16), 'float32')); (d / 'img3.npz').rename(bad)
    elif kind == 'int': np.save(bad, np.zeros((2, 16), 'int64'))
    elif kind == '3d': np.save(bad, np.zeros((2, 2, 16), 'float32'))
    elif kind == 'empty': np.save(bad, np.zeros((0, 16), 'float32'))
    else: bad.write_text('not numpy')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); src = get_source(write(d / 'm.jsonl', rows))
    assert [p for p, _ in src.skipped] == [str(bad)] and reason in src.skipped[0][1] and "line 4, field 'image_features'" in src.skipped[0][1]
    assert any('img3.npy' in str(x.message) for x in w)
    assert next(r for r in src.records if r['id'] == 'x3')[IMAGE] is None  # its other modalities stay
    with pytest.raises(DecodeError, match=reason.split(' ')[0]): load_features(bad)
    assert not (tmp_path / 'ran').exists()  # nothing in the file ran


def test_non_finite_features_refused_at_load(feats, tmp_path):
    d, rows = feats
    a = np.ones((3, 16), 'float32'); a[1, 2] = np.nan; np.save(d / 'img5.npy', a)
    np.save(d / 'img6.npy', np.full((2, 16), 1e300))  # finite float64, inf in float32
    src = get_source(write(d / 'm.jsonl', rows))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); dls = source_dls(src, bs=12, cache=False)
    fails = dls.train.dataset.failures
    assert set(fails) == {str(d / 'img5.npy'), str(d / 'img6.npy')} and all('non-finite' in v for v in fails.values())
    b = ModalityBatch.of(dls.train.one_batch())
    assert torch.isfinite(b.x[IMAGE]).all() and b.present[IMAGE].sum() == 9 - 2


def test_width_mismatch_and_mixing_refused(feats, tmp_path):
    d, rows = feats
    np.save(d / 'img7.npy', np.zeros((2, 12), 'float32'))
    with pytest.raises(ManifestError, match=r"the feature widths differ: D=16 on 11 line\(s\).*D=12 on 1 line\(s\) \(e.g. line 8\)"):
        get_source(write(d / 'm.jsonl', rows))
    np.save(d / 'img7.npy', np.zeros((2, 16), 'float32'))
    (d / 'x.png').write_bytes(b'a picture')
    rows[2] = {**rows[2], 'image': 'x.png'}; rows[2].pop('image_features')
    with pytest.raises(ManifestError, match=r"modality 'image': 11 item\(s\) give 'image_features' but 1 give only 'image' \(lines 3\)"):
        get_source(write(d / 'm.jsonl', rows))
    assert feature_shape(d / 'img0.npy') == (1, 16)


def test_trains_one_epoch_on_features(feats, tmp_path):
    train = pytest.importorskip('cmrl.train')
    d, rows = feats
    write(d / 'm.jsonl', rows)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train.train(data=str(d / 'm.jsonl'), model='unicode', epochs=1, bs=4, d=16, n_codes=8, n_layers=1, out=str(tmp_path / 'run'),
                        device='cpu', quiet=True)
    assert s['modalities'] == [IMAGE, SPEECH, TEXT] and (s['n_train'], s['n_valid'], s['n_test']) == (9, 3, 0)
    assert np.isfinite(s['train_loss']) and np.isfinite(s['valid_loss']) and s['nan_skipped'] == 0
