"""Time a first (uncached) and a second (cached) epoch over the Tux Paint training split.

Usage: python benchmarks/data_cache.py [--langs fr,es,ca] [--bs 32] [--threads 1] [--cache DIR]
The first epoch decodes every file (Ogg/PNG/SVG -> log-mel / 64x64 image) into a fresh temporary
feature cache; the second reads the cached .npy files. Prints one JSON object.
"""
import argparse, json, shutil, tempfile, time, warnings
from pathlib import Path
import torch


def epoch(dl) -> tuple[float, int, int]:
    t0, n, frames = time.perf_counter(), 0, 0
    for (b,) in dl:
        n += b.bs
        frames += int(b.mask['speech'].sum()) if 'speech' in b.mask else 0
    return time.perf_counter() - t0, n, frames


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--langs', default='fr,es,ca')
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--threads', type=int, default=1, help='torch threads (the dev machines are shared)')
    p.add_argument('--cache', default=None, help='cache folder (default: a fresh temporary folder, deleted afterwards)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from cmrl.data.loaders import get_source, source_dl
    tmp = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix='cmrl-cache-bench-'))
    try:
        t0 = time.perf_counter()
        src = get_source('tuxpaint', langs=a.langs.split(','))
        t_src = time.perf_counter() - t0
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            dl = source_dl(src, 'train', bs=a.bs, shuffle=True, cache=tmp, validate=False, device='cpu')
            t1, n1, f1 = epoch(dl)
            t2, n2, f2 = epoch(dl)
        from cmrl.data.cache import FeatureCache
        files, size = FeatureCache(tmp).size()
        res = {'split': 'train', 'items': len(dl.dataset), 'items_seen_per_epoch': n1, 'batch_size': a.bs, 'langs': src.langs,
               'torch_threads': a.threads, 'source_scan_s': round(t_src, 2),
               'first_epoch_uncached_s': round(t1, 2), 'second_epoch_cached_s': round(t2, 2), 'speedup': round(t1 / t2, 1),
               'cache_files': files, 'cache_mb': round(size / 2**20, 1), 'decode_failures': dl.dataset.failures,
               'warnings': [str(x.message)[:200] for x in w if 'cmrl' in str(x.message)]}
        assert (n1, f1) == (n2, f2), "the two epochs saw different data"
        print(json.dumps(res, indent=1, ensure_ascii=False))
        return res
    finally:
        if not a.cache: shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
