"benchmarks/device: the pieces of the GPU check that run here (packing the word vectors, collecting what came back), on small known inputs"
import importlib.util, io, json, tarfile
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.data.text import read_uint_map, WordVectors, murmurhash64a

ROOT = Path(__file__).resolve().parent.parent
def load(name):
    spec = importlib.util.spec_from_file_location(f'device_{name}', ROOT / 'benchmarks' / 'device' / f'{name}.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); return m
P, C = load('prepare'), load('collect')


@pytest.mark.parametrize('d', [{}, {1: 0, 127: 128, 2**40: 70000}, {k * 2**33: k % 300 for k in range(70000)}], ids=['empty', 'widths', 'map32'])
def test_pack_uint_map_round_trips(tmp_path, d):
    f = tmp_path / 'key2row'; f.write_bytes(P.pack_uint_map(d))
    assert read_uint_map(f) == d  # fixint, uint32 and uint64 keys and values; map16 and map32 headers


def test_trimmed_vectors_match_the_full_ones(tmp_path, monkeypatch):
    full = tmp_path / 'full'; full.mkdir()
    words = ['une', 'chose', 'Le', 'chat', "l'"]
    vec = np.arange(len(words) * 3 + 3, dtype=np.float32).reshape(-1, 3)  # one extra row no text uses
    np.save(full / 'v.npy', vec); (full / 'v.npy').rename(full / 'vectors')
    (full / 'key2row').write_bytes(P.pack_uint_map({murmurhash64a(w.encode()): i for i, w in enumerate(words)}))
    monkeypatch.setattr(P, 'word_vectors', lambda package: WordVectors(full))
    texts = ["Une chose.", "Le chat de l'école", 'rien ici']
    rows, keys = P.trimmed_vectors(texts, 'pkg', tmp_path / 'out')  # exits if any text's features differ
    small = WordVectors(tmp_path / 'out' / 'pkg' / 'pkg-trimmed' / 'vocab')
    assert rows == 5 and keys == 5 and len(small.vectors) == 5  # 'Une' reaches 'une' through lower case; the extra row is left out
    assert all(torch.equal(small.per_byte(s), WordVectors(full).per_byte(s)) for s in texts)


def test_collect_joins_the_parts(tmp_path):
    m = {'device': 'cuda', 'precision': 'fp32', 'epochs': 2, 'n_train': 3, 'n_valid': 1, 'n_test': 1, 'n_params': 10, 'fit_seconds': 4.0,
         'total_seconds': 5.0, 'train_loss': 1.0, 'valid_loss': 2.0, 'nan_skipped': 0, 'best': {'metric': 'valid_R@10', 'value': 50.0, 'epoch': 1},
         'retrieval': {'image->speech': {'R@10': 40.0, 'R@1': 10.0}}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w') as t:
        for name, data in [('run_fp32/metrics.json', json.dumps(m).encode()), ('run_fp32/checkpoint.pt', bytes(3000))]:
            ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    b = buf.getvalue()
    for k, i in enumerate(range(0, len(b), 2048)): (tmp_path / f'run_fp32.tar.part-a{chr(97 + k)}').write_bytes(b[i:i + 2048])  # as `split` names them
    (tmp_path / 'log_fp32.txt').write_text("GPU X\ntorch Y\n16\nepoch 1/2 ...\n[timed] train --precision fp32 --out /tmp/run_fp32: wall 6.5 s, peak RSS 100 MiB, peak CUDA memory 20 MiB\n")
    C.main([str(tmp_path), '--out', str(tmp_path / 'out.json')])
    r = json.loads((tmp_path / 'out.json').read_text())
    assert r['device'] == ['GPU X', 'torch Y', '16'] and list(r['runs']) == ['fp32']
    f = r['runs']['fp32']
    assert f['fit_seconds'] == 4.0 and f['valid_R@10'] == {'image->speech': 40.0} and f['checkpoint_back']
    assert (f['wall_s'], f['peak_rss_mib'], f['peak_cuda_mib']) == (6.5, 100, 20)
    assert 'bf16_over_fp32_fit_time' not in r  # one precision only
