"""Feature store formats on the same data (issue 30): cmrl's `.npy`-memmap store against HDF5 through h5py.

The data: N planted items of `benchmarks/scale.py` (3 modalities, `[10, 128]` float16 each). For each format, in its
own process: ingest seconds (generated chunks written item by item, as a pack from a source does), bytes on disk,
random-access items/s (one item = its 3 modalities as float32 tensors, uniform random order, one process) and the
peak anonymous RSS (`RssAnon`) of the reading process. Writes benchmarks/store_formats.json.

    python benchmarks/store_formats.py [--n 20000] [--json benchmarks/store_formats.json]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np

HERE = Path(__file__).parent


def one(fmt: str, n: int, work: Path, reads: int = 20000) -> dict:
    import torch
    import importlib.util
    spec = importlib.util.spec_from_file_location('scale', HERE / 'scale.py')
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    MODS, T, D = scale.MODS, scale.T, scale.D
    import h5py
    from cmrl.data.cache import FrontendConfig
    from cmrl.data.store import pack_items, frontend_key, FeatureStore, StoreDataset
    chunks = list(scale.planted(n))  # generated (and the libraries imported) before timing
    path = work / fmt
    t0 = time.perf_counter()
    if fmt == 'cmrl-store':
        cfg = FrontendConfig()
        meta = {'source': 'planted', 'modalities': list(MODS), 'frontends': cfg.to_dict(),
                'tokenizer': {'kind': 'bytes'},
                'npy_dims': {m: D for m in MODS}, 'classes': [], 'split_names': ['train'], 'float16': True,
                'frontend_key': frontend_key(cfg, []), 'key': 'planted'}
        def items(start=0):
            for a, x in chunks:
                for i in range(a, a + len(x[MODS[0]])):
                    yield {m: x[m][i - a] for m in MODS}, {'id': f"p{i}", 'split': 'train'}
        pack_items(items, path, meta)
        ingest = time.perf_counter() - t0
        del chunks
        fs = FeatureStore(path); ds = StoreDataset(fs, np.arange(n), MODS)
        get = lambda i: ds[i]
        size = fs.nbytes()
    elif fmt == 'hdf5':
        path.mkdir(parents=True)
        with h5py.File(path / 'features.h5', 'w') as h:
            dss = {m: h.create_dataset(m, (n, T, D), dtype='f2', chunks=(1, T, D)) for m in MODS}
            ids = h.create_dataset('id', (n,), dtype=h5py.string_dtype())
            for a, x in chunks:
                for i in range(a, a + len(x[MODS[0]])):
                    for m in MODS: dss[m][i] = x[m][i - a]
                    ids[i] = f"p{i}"
        ingest = time.perf_counter() - t0
        del chunks
        h = h5py.File(path / 'features.h5', 'r')
        dss = {m: h[m] for m in MODS}
        def get(i):
            return {'id': h['id'][i], **{m: torch.from_numpy(np.asarray(dss[m][i], dtype=np.float32)) for m in MODS}}
        size = (path / 'features.h5').stat().st_size
    else: raise ValueError(fmt)
    idx = np.random.default_rng(0).integers(0, n, reads)
    rss0 = scale.rss_anon_mb()  # opened, before the reads
    with scale.PeakRss() as rss:
        t0 = time.perf_counter()
        for i in idx: get(int(i))
        rate = reads / (time.perf_counter() - t0)
    return {'format': fmt, 'n': n, 'ingest_s': round(ingest, 2), 'bytes': size, 'raw_bytes': n * len(MODS) * T * D * 2,
            'random_items_per_s': round(rate), 'peak_rss_anon_mb_while_reading': round(rss.peak, 1),
            'rss_anon_growth_mb_while_reading': round(rss.peak - rss0, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=20000)
    p.add_argument('--json', default=str(HERE / 'store_formats.json'))
    p.add_argument('--one', default=None, help=argparse.SUPPRESS)
    p.add_argument('--work', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one: print(json.dumps(one(a.one, a.n, Path(a.work)))); return
    work = Path(tempfile.mkdtemp(prefix='cmrl-formats-'))
    res = []
    try:
        for fmt in ('cmrl-store', 'hdf5'):
            r = subprocess.run([sys.executable, __file__, '--one', fmt, '--n', str(a.n), '--work', str(work)],
                               capture_output=True, text=True)
            if r.returncode: sys.exit(f"{fmt}: {r.stderr.strip().splitlines()[-1]}")
            res.append(json.loads(r.stdout.strip().splitlines()[-1])); print(res[-1], flush=True)
    finally: shutil.rmtree(work, ignore_errors=True)
    if a.json:
        cmd = 'python benchmarks/store_formats.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
        Path(a.json).write_text(json.dumps({'command': cmd, 'formats': res}, indent=1) + '\n')


if __name__ == '__main__': main()
