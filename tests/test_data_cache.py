"Feature cache: keys, invalidation, exactness, damaged entries, env override, cached epoch speed on fake stamps."
import os, time, warnings
from pathlib import Path
import numpy as np, pytest, soundfile as sf, torch
from cmrl.core import IMAGE, AUDIO, SPEECH, TEXT, collate_items
from cmrl.data.cache import *
from cmrl.data.tuxpaint import TuxPaint, fake_stamps

torch.set_num_threads(1)


@pytest.fixture
def src(tmp_path):
    return TuxPaint(fake_stamps(tmp_path / 'stamps', n_cats=2, per_cat=3), langs=['fr', 'es'])


def items(ds): return [ds[i] for i in range(len(ds))]


def same(a, b):
    for x, y in zip(a, b):
        assert x['id'] == y['id']
        for m in (IMAGE, AUDIO, SPEECH, TEXT):
            assert (x[m] is None) == (y[m] is None)
            if x[m] is not None: assert torch.equal(x[m], y[m]), (x['id'], m)


def test_cached_equals_uncached(src, tmp_path):
    c = FeatureCache(tmp_path / 'c')
    ref = items(src.dataset('train', cache=False))
    first = items(src.dataset('train', cache=c))
    n_files = c.size()[0]
    second = items(src.dataset('train', cache=c))
    same(ref, first); same(ref, second)
    assert n_files > 0 and c.size()[0] == n_files  # nothing new written on the second pass
    assert c.hits > 0


def test_config_change_invalidates(src, tmp_path):
    c = FeatureCache(tmp_path / 'c')
    items(src.dataset('train', cache=c)); n = c.size()[0]
    src80 = TuxPaint(src.root, langs=['fr', 'es'], n_mels=80, size=32)
    it = items(src80.dataset('train', cache=c))
    assert c.size()[0] == 2 * n  # every feature made again under new keys
    assert all(x[SPEECH].shape[-1] == 80 and x[IMAGE].shape == (1, 3, 32, 32) for x in it if x[SPEECH] is not None)


def test_file_change_invalidates(src, tmp_path):
    c = FeatureCache(tmp_path / 'c')
    ds = src.dataset('train', cache=c)
    r = next(r for r in ds.records if r[SPEECH])
    i = ds.records.index(r)
    before = ds[i][SPEECH]
    time.sleep(0.02)
    sf.write(r[SPEECH], np.zeros(16000, 'float32'), 16000)  # one second of silence instead
    after = src.dataset('train', cache=c)[i][SPEECH]
    assert after.shape == (101, 64) and not torch.equal(before[:1], after[:1])


def test_damaged_cache_entry_is_remade(src, tmp_path):
    c = FeatureCache(tmp_path / 'c')
    ref = items(src.dataset('train', cache=c))
    for f in (tmp_path / 'c').rglob('*.npy'): f.write_bytes(f.read_bytes()[:20])  # truncate every cached file
    same(ref, items(src.dataset('train', cache=c)))


def test_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv('CMRL_CACHE', str(tmp_path / 'env'))
    assert default_cache_dir() == tmp_path / 'env' and FeatureCache.of(True).root == tmp_path / 'env'
    assert FeatureCache.of(str(tmp_path / 'arg')).root == tmp_path / 'arg'
    monkeypatch.delenv('CMRL_CACHE')
    assert default_cache_dir() == Path('~/.cache/cmrl/features').expanduser()


def test_memory_layer(src, tmp_path):
    c = FeatureCache(tmp_path / 'c', memory=True)
    items(src.dataset('train', cache=c))
    for f in (tmp_path / 'c').rglob('*.npy'): f.unlink()
    h = c.hits
    items(src.dataset('train', cache=c))  # served from RAM
    assert c.hits > h


def test_bad_file_remembered(src, tmp_path):
    r = next(r for r in src.split('train') if r[SPEECH])
    Path(r[SPEECH]).write_bytes(b'OggS not really')
    c = FeatureCache(tmp_path / 'c')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        it1 = items(src.dataset('train', cache=c))
        it2 = items(src.dataset('train', cache=c))
    assert len([x for x in w if 'cannot decode' in str(x.message)]) == 2  # one per data set, not per item or epoch
    assert len(list((tmp_path / 'c').rglob('*.err'))) == 1
    bad = [x for x in it2 if x['id'] == r['id']][0]
    assert bad[SPEECH] is None and bad[IMAGE] is not None


def test_cached_epoch_faster(tmp_path):
    src = TuxPaint(fake_stamps(tmp_path / 's', n_cats=2, per_cat=6, sr=44100), langs=['fr', 'es'])
    c = FeatureCache(tmp_path / 'c')
    t0 = time.perf_counter(); collate_items(items(src.dataset('train', cache=c))); t1 = time.perf_counter() - t0
    t0 = time.perf_counter(); collate_items(items(src.dataset('train', cache=c))); t2 = time.perf_counter() - t0
    assert t2 < t1 * .8, (t1, t2)  # loose: the machines are shared; the real ratio is in benchmarks/data_cache.py
