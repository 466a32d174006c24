"Feature store (issue 30): pack, resume, append, settings, order across ranks, HDF5 input, `cmrl pack`, torchrun."
import inspect, json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.data.store import *
from cmrl.data.pack import pack_cmd, pack_cli
from cmrl.data.loaders import get_source, source_dls
from cmrl.testing import feature_items

torch.set_num_threads(1)


@pytest.fixture
def manifest(tmp_path):
    "A manifest of 24 items with precomputed image and audio features (some missing) and texts"
    d = tmp_path / 'data'; d.mkdir()
    rows = []
    for i, it in enumerate(feature_items(24, dims={'image': 8, 'audio': 6})):
        r = {'id': it['id'], 'label': str(it['label']), 'text': f"item {i}", 'lang': ['fr', 'es'][i % 2]}
        for m in ('image', 'audio'):
            if it[m] is not None: np.save(d / f"{m}{i}.npy", it[m].numpy()); r[f"{m}_features"] = f"{m}{i}.npy"
        rows.append(r)
    (d / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return d / 'm.jsonl'


def same_items(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert (x['id'], x['label'], x['extra']) == (y['id'], y['label'], y['extra'])
        for m in ('image', 'audio', 'text'):
            assert (x.get(m) is None) == (y.get(m) is None), (i, m)
            if x.get(m) is not None: assert x[m].dtype == y[m].dtype and torch.equal(x[m], y[m]), (i, m)


def test_store_reads_like_its_manifest(manifest, tmp_path):
    src = get_source(str(manifest))
    m = pack(src, tmp_path / 'st', shard_size=10, cache=tmp_path / 'c')
    assert m['complete'] and m['n'] == 24 and len(m['shards']) == 3
    st = get_source(str(tmp_path / 'st'))  # recognised by store.json
    assert isinstance(st, StoreSource) and st.split_ids() == src.split_ids()
    what = lambda s: (s.shapes, s.feature_dims, s.class_names, s.text_vocab_size)
    assert what(st) == what(src)
    same_items(src.dataset('all', cache=tmp_path / 'c'), st.dataset('all'))
    same_items(src.dataset('valid', cache=tmp_path / 'c'), st.dataset('valid'))
    r, q = st.records[1], src.records[1]  # records name what each modality was made from (`cmrl retrieve` shows them)
    assert (r['id'], r['text'], r['image'], r.get('audio')) == (q['id'], q['text'], q['image'], q.get('audio'))
    assert len(get_source(str(tmp_path / 'st'), langs='es')) == 12
    assert get_source(str(tmp_path / 'st'), modalities='audio').modalities == ('audio',)


def test_float16_halves_the_features(manifest, tmp_path):
    src = get_source(str(manifest))
    pack(src, tmp_path / 'a', cache=tmp_path / 'c'); pack(src, tmp_path / 'h', float16=True, cache=tmp_path / 'c')
    a, h = FeatureStore(tmp_path / 'a'), FeatureStore(tmp_path / 'h')
    fa, fh = (sum((s.path / 'shard-00000' / f"{m}.bin").stat().st_size for m in ('image', 'audio')) for s in (a, h))
    assert fh * 2 == fa
    x, y = a.feature(0, 'image'), h.feature(0, 'image')
    assert y.dtype == torch.float32 and torch.allclose(x, y, atol=1e-2) and not torch.equal(x, y)


def test_interrupted_pack_never_reads_complete_and_resumes(manifest, tmp_path):
    src = get_source(str(manifest))
    ds = src.dataset('all', validate=True, cache=tmp_path / 'c')
    meta, items = source_meta(src, records=ds.records), source_items(ds, src)
    def cut(start=0):
        for k, x in enumerate(items(start)):
            if k == 13: raise KeyboardInterrupt
            yield x
    with pytest.raises(KeyboardInterrupt): pack_items(cut, tmp_path / 'st', meta, shard_size=5)
    assert not read_meta(tmp_path / 'st')['complete'] and read_meta(tmp_path / 'st')['n'] == 10
    with pytest.raises(StoreError, match='unfinished pack'): FeatureStore(tmp_path / 'st')
    with pytest.raises(StoreError, match='unfinished pack'): get_source(str(tmp_path / 'st'))
    other = dict(meta, key='another', source='other')
    with pytest.raises(StoreError, match='an unfinished pack of another source'):
        pack_items(items, tmp_path / 'st', other)
    pack_items(items, tmp_path / 'st', meta, shard_size=5)  # resumes after the 2 whole shards
    pack(src, tmp_path / 'whole', shard_size=5, cache=tmp_path / 'c')
    r, w = FeatureStore(tmp_path / 'st'), FeatureStore(tmp_path / 'whole')
    assert r.n == w.n == 24 and not list(r.path.glob('.*.part'))
    mods = ('image', 'audio', 'text')
    same_items(StoreDataset(r, range(24), mods), StoreDataset(w, range(24), mods))


def test_append_and_refusals(manifest, tmp_path):
    src = get_source(str(manifest))
    pack(src, tmp_path / 'st', cache=tmp_path / 'c')
    with pytest.raises(StoreError, match='already a complete store of 24 items; add --append'):
        pack(src, tmp_path / 'st', cache=tmp_path / 'c')
    with pytest.raises(StoreError, match="item id .* is already in the store"):
        pack(src, tmp_path / 'st', append=True, cache=tmp_path / 'c')
    assert len(FeatureStore(tmp_path / 'st')) == 24  # refused before writing: the store is as it was
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    for r in rows: r['id'] = 'new-' + r['id']; r['label'] = 'z' + r['label']
    m2 = manifest.with_name('m2.jsonl'); m2.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    pack(get_source(str(m2)), tmp_path / 'st', append=True, cache=tmp_path / 'c')
    st = get_source(str(tmp_path / 'st'))
    assert len(st) == 48 and len(st.class_names) == 2 * len(src.class_names)
    it = st.dataset('all')[30]
    assert it['id'].startswith('new-') and st.class_names[it['label']].startswith('z')
    for r in rows:  # other feature widths: refused before anything is written
        r['id'] = 'w-' + r['id']
        if 'audio_features' in r: np.save(manifest.parent / r['audio_features'], np.zeros((2, 7), 'f4'))
    m2.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    with pytest.raises(StoreError, match=r"feature widths differ from the store's \({'audio': \(6, 7\)}\)"):
        pack(get_source(str(m2)), tmp_path / 'st', append=True, cache=tmp_path / 'c')
    assert len(FeatureStore(tmp_path / 'st')) == 48
    (tmp_path / 'junk').mkdir(); (tmp_path / 'junk' / 'x').write_text('x')
    with pytest.raises(StoreError, match='exists and is not a store'):
        pack(src, tmp_path / 'junk', cache=tmp_path / 'c')


def test_settings_mismatch_is_one_line(manifest, tmp_path):
    src = get_source(str(manifest), modalities='image,text')  # text through the byte tokenizer: its setting counts
    pack(src, tmp_path / 'st', cache=tmp_path / 'c')
    get_source(str(tmp_path / 'st'), size=32)  # the image is precomputed: the image size does not matter
    with pytest.raises(StoreError) as e: get_source(str(tmp_path / 'st'), size=32, text_kind='wordvec')
    msg = str(e.value)
    assert '\n' not in msg and "store vs run: text.kind 'bytes' vs 'wordvec'" in msg


def test_shuffle_is_shard_by_shard_and_ranks_split_an_epoch(manifest, tmp_path):
    "The union of what the ranks read in an epoch is every training item once (fastai's `DistributedDL` slicing)"
    from fastai.distributed import DistributedDL
    src = get_source(str(manifest))
    pack(src, tmp_path / 'st', shard_size=4, cache=tmp_path / 'c')
    st = get_source(str(tmp_path / 'st'))
    dls = source_dls(st, bs=2)
    ds = dls.train.dataset
    class Local(DistributedDL):  # the ranks simulated in one process: rank 0's order is every rank's
        def _broadcast(self, t, rank): return t
    for epoch in range(2):
        dls.train.rng.seed(epoch)
        seen = []
        for r in range(3):
            dls.train.rng.seed(epoch)  # every rank draws the same order (rank 0's, broadcast)
            seen.append(list(Local(dls.train, rank=r, world_size=3).get_idxs()))
        flat = [i for s in seen for i in s]
        n = len(ds)
        assert set(flat) == set(range(n)) and len(flat) - n < 3  # every item; fastai pads with at most world-1 repeats
        assert len(set(flat[:n])) == n  # before the padding, each item once
        sh = ds.shards()
        order = dls.train.shuffle_fn(list(range(n)))
        runs = sum(1 for a, b in zip(order, order[1:]) if sh[a] != sh[b]) + 1
        assert runs == len(set(sh.tolist()))  # one contiguous run per shard: each rank reads few shards


def test_hdf5_ave_style(tmp_path):
    h5py = pytest.importorskip('h5py')
    rng = np.random.default_rng(0)
    v, a = rng.standard_normal((9, 10, 3, 3, 8)).astype('f4'), rng.standard_normal((9, 10, 5)).astype('f4')
    lab = np.zeros((9, 10, 4), 'f4')
    lab[np.arange(9), :, np.arange(9) % 4] = 1
    for f, x in (('visual.h5', v), ('audio.h5', a), ('labels.h5', lab)):
        with h5py.File(tmp_path / f, 'w') as h: h.create_dataset('avadataset', data=x)
    m = pack_h5(tmp_path, tmp_path / 'st', 'image=visual.h5:avadataset,audio=audio.h5:avadataset',
                labels='labels.h5:avadataset', pool='max', chunk=4)
    st = get_source(str(tmp_path / 'st'))
    assert st.feature_dims == {'image': 8, 'audio': 5} and m['n'] == 9
    it = st.dataset('all')[5]
    assert torch.allclose(it['image'], torch.from_numpy(v[5].max(axis=(1, 2))))
    assert torch.equal(it['audio'], torch.from_numpy(a[5]))
    assert st.class_names[it['label']] == '1'
    assert len(get_source(str(tmp_path / 'st'), langs='fr')) == 0  # no language column: no item is French
    assert pack_cli([str(tmp_path), str(tmp_path / 's3'), '--h5', 'audio=audio.h5:avadataset', '--pool', 'max']) == 0
    assert FeatureStore(tmp_path / 's3').meta['npy_dims'] == {'audio': 5}
    assert pack_cli([str(tmp_path), str(tmp_path / 's4'), '--h5', 'audio=audio.pkl:x']) == 2  # pickles: refused
    with pytest.raises(ValueError, match='expected MODALITY=FILE:DATASET'): parse_h5_spec('pictures=visual.h5')
    with pytest.raises(ValueError, match="no dataset 'x'"): pack_h5(tmp_path, tmp_path / 's2', 'image=visual.h5:x')


def test_pack_defaults_are_train_defaults():
    from cmrl.train import TrainConfig
    p = inspect.signature(pack_cmd).parameters
    assert (p['size'].default, p['image_frontend'].default, p['text_kind'].default, p['speech_frontend'].default) == \
        (TrainConfig.image_size, TrainConfig.image_frontend, TrainConfig.text_frontend, TrainConfig.speech_frontend)


def test_pack_cli(manifest, tmp_path, capsys):
    assert pack_cli([str(manifest), str(tmp_path / 'st'), '--shard-size', '7', '--cache', str(tmp_path / 'c')]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out['items'] == 24 and out['shards'] == 4 and sum(out['splits'].values()) == 24
    assert pack_cli([str(tmp_path / 'nope.jsonl'), str(tmp_path / 's2')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('cmrl pack: no such file') and '\n' not in err



def test_store_keeps_its_packed_split(manifest, tmp_path):
    "A manifest that leaves the split to be drawn holds out other items at --seed 3 than the store packed from it "
    "(which keeps its seed-0 part); one that names every item's split trains the same numbers either way at seed 3"
    from cmrl.train import train
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    named = manifest.with_name('named.jsonl')
    named.write_text(''.join(json.dumps({**r, 'split': 'valid' if i % 5 == 0 else 'train'}) + '\n' for i, r in enumerate(rows)))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for m, st in ((manifest, 'st'), (named, 'st2')): assert pack_cli([str(m), str(tmp_path / st)]) == 0
        drawn = get_source(str(manifest), seed=3).split_ids()['train']
        assert drawn != get_source(str(tmp_path / 'st'), seed=3).split_ids()['train']
        assert get_source(str(manifest)).split_ids()['train'] == get_source(str(tmp_path / 'st')).split_ids()['train']
        kw = dict(bs=8, epochs=1, quiet=True, threads=1, seed=3)
        a = train(data=str(named), out=str(tmp_path / 'r1'), cache=str(tmp_path / 'c'), **kw)
        b = train(data=str(tmp_path / 'st2'), out=str(tmp_path / 'r2'), **kw)
    assert (a['n_train'], a['train_loss'], a['valid_loss']) == (b['n_train'], b['train_loss'], b['valid_loss'])

TUX = Path(os.environ.get('CMRL_TUXPAINT') or '/usr/share/tuxpaint/stamps')


@pytest.mark.skipif(not TUX.is_dir(), reason='Tux Paint stamps not installed')
def test_tuxpaint_through_a_store_gives_the_same_numbers(tmp_path, monkeypatch):
    "40 real stamps: one epoch through their manifest and through a store packed from it, same seed, same losses"
    from cmrl.data.tuxpaint import TuxPaint
    from cmrl.train import train
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tux = TuxPaint(modalities=['image', 'text'])
        rows = [{'id': r['id'], 'image': r['image'], 'text': r['text'], 'label': tux.class_names[r['label']],
                 'lang': r['lang'], 'group': r['group']} for r in tux.records[:40]]
        Path('m.jsonl').write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
        assert pack_cli(['m.jsonl', 'st']) == 0
        a = train(data='m.jsonl', epochs=1, out='r1', quiet=True, threads=1)
        b = train(data='st', epochs=1, out='r2', quiet=True, threads=1)
    assert a['n_train'] == b['n_train'] == 32
    assert (a['train_loss'], a['valid_loss'], a['best']) == (b['train_loss'], b['valid_loss'], b['best'])


def test_torchrun_trains_on_a_store(tmp_path):
    "`torchrun --nproc_per_node 2 cmrl train --data STORE` (gloo, CPU): both ranks read the store, end with one model"
    import importlib.util, subprocess
    spec = importlib.util.spec_from_file_location('scale', Path(__file__).parents[1] / 'benchmarks' / 'scale.py')
    scale = importlib.util.module_from_spec(spec); spec.loader.exec_module(scale)
    scale.pack_planted(1400, tmp_path / 'st', shard_size=300)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', '-m', 'cmrl.cli',
           'train',
           '--data', 'st', '--epochs', '1', '--bs', '64', '--n-layers', '1', '--n-codes', '16', '--out', 'run']
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:]
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    assert m['ranks_agree']['world'] == 2 and m['ranks_agree']['same'] and m['n_train'] == 400


def test_speech_frontend_is_checked(tmp_path):
    "A store whose speech was made by the log-mel front-end is refused to a run that asks for Whisper features"
    import soundfile as sf
    d = tmp_path / 'd'; d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        sf.write(d / f"{i}.wav", rng.standard_normal(4000).astype('float32') * .1, 8000)
        rows.append({'id': f"s{i}", 'speech': f"{i}.wav", 'text': f"mot {i}", 'label': 'a'})
    (d / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    pack(get_source(str(d / 'm.jsonl')), tmp_path / 'st', cache=tmp_path / 'c')
    assert 'speech' in frontend_parts(read_meta(tmp_path / 'st'))
    get_source(str(tmp_path / 'st'), size=32)  # a run on log-mel speech (`cmrl train --speech-frontend logmel`)
    with pytest.raises(StoreError, match=r"speech\.frontend 'logmel' vs 'whisper_base'"):
        get_source(str(tmp_path / 'st'), size=32, speech_frontend='whisper_base')
