"""How pack, load and one epoch of training grow with N (issue 30): synthetic planted feature sets of N items.

Each item has a latent z ~ N(0, I_16); each of 3 modalities is a fixed random linear map of z to `[10, 128]` plus
Gaussian noise of the same variance as the signal per element, stored float16; 1,000 held-out items (split 'test')
form the R@10 gallery. Per size: pack (`cmrl.data.store.pack_items`), random-access load (`load_items_per_s`: batches
of 256 random items read at once, as the training loader reads them, the store in the page cache; `_cold`: the same
read from the disk; `item_load_items_per_s`: one by one), one epoch
of the feature-only Uni-Code model with its default settings except batch size 256 (`cmrl.train.train`, 1 thread),
held-out cross-modal R@10, and a linear CCA fitted on the same training items as a peer. Prints per size

    scale: n=... pack_s=... store_mb=... raw_mb=... load_items_per_s=... train_items_per_s_per_core=...
           peak_rss_mb=... loader_share=... heldout_R@10=...

(one line), then a `goal:` line per goal of issue 30 the sizes speak to (met or missed, by how much), and writes every
number to `--json` (default benchmarks/scale.json). `--train-kw` measures other `cmrl train` settings (not defaults).
`peak_rss_mb` is the peak anonymous RSS (`RssAnon`, the store's memory-mapped pages excluded) of the training process,
a fresh Python process that does nothing else.
Times are wall-clock; the JSON also has them in CPU seconds of the process (`train_items_per_cpu_s`,
`loader_share_cpu`), which other processes on the same cores do not inflate.

    python benchmarks/scale.py --sizes 10000,100000 [--work /tmp/scale] [--json benchmarks/scale.json]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, threading, time, warnings
from pathlib import Path
import numpy as np

MODS, T, D, Z, HELD = ('image', 'audio', 'text'), 10, 128, 16, 1000


def rss_anon_mb() -> float:
    for line in open('/proc/self/status'):
        if line.startswith('RssAnon:'): return int(line.split()[1]) / 1024
    return float('nan')


class PeakRss:
    "Peak `RssAnon` of this process, sampled every 0.1 s in a thread"
    def __enter__(self):
        self.peak, self.stop = rss_anon_mb(), threading.Event()
        def run():
            while not self.stop.wait(0.1): self.peak = max(self.peak, rss_anon_mb())
        self.t = threading.Thread(target=run, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        self.stop.set(); self.t.join(); self.peak = max(self.peak, rss_anon_mb())


def maps(seed: int = 0):
    "The fixed random linear maps `[16, T*D]` of the 3 modalities, and each element's signal standard deviation"
    g = np.random.default_rng(seed)
    W = {m: (g.standard_normal((Z, T * D)) / np.sqrt(Z)).astype(np.float32) for m in MODS}
    return W, {m: np.sqrt((w ** 2).sum(0)) for m, w in W.items()}


def planted(n: int, chunk: int = 4096, seed: int = 0):
    "Chunks `(start, {m: [b, T, D] float16})` of the planted set of n items (the last `HELD` are held out)"
    W, sd = maps(seed)
    for a in range(0, n, chunk):
        b = min(a + chunk, n)
        g = np.random.default_rng([seed, a])
        z = g.standard_normal((b - a, Z)).astype(np.float32)
        yield a, {m: (z @ W[m] + g.standard_normal((b - a, T * D)).astype(np.float32) * sd[m]).reshape(-1, T, D)
                  .astype(np.float16) for m in MODS}


def pack_planted(n: int, store: Path, shard_size: int = 100_000) -> tuple[float, float]:
    "Pack the planted set; (seconds spent packing, seconds spent generating)"
    from cmrl.data.cache import FrontendConfig
    from cmrl.data.store import pack_items, frontend_key
    cfg, gen = FrontendConfig(), [0.0]
    meta = {'source': f"planted:{n}", 'modalities': list(MODS), 'frontends': cfg.to_dict(),
            'tokenizer': {'kind': 'bytes', 'max_len': cfg.text.max_len}, 'npy_dims': {m: D for m in MODS},
            'classes': [], 'split_names': ['train', 'test'], 'float16': True, 'frontend_key': frontend_key(cfg, []),
            'key': f"planted-{n}"}
    def items(start=0):
        t = time.perf_counter()
        for a, x in planted(n):
            gen[0] += time.perf_counter() - t
            for i in range(max(a, start), a + len(x[MODS[0]])):
                yield {m: x[m][i - a] for m in MODS}, {'id': f"p{i}", 'split': 'test' if i >= n - HELD else 'train'}
            t = time.perf_counter()
    t0 = time.perf_counter()
    pack_items(items, store, meta, shard_size=shard_size)
    return time.perf_counter() - t0 - gen[0], gen[0]


def page_cache(store: Path, warm: bool):
    "Every file of `store` read once into the page cache (`warm`), or dropped from it (a sync, then `POSIX_FADV_DONTNEED`)"
    if not warm: os.sync()
    for f in sorted(p for p in store.rglob('*') if p.is_file()):
        with open(f, 'rb', buffering=0) as fh:
            if not warm: os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while fh.read(1 << 24): pass


def load_rate(store: Path, k: int = 20000, seed: int = 0, bs: int = 256) -> dict:
    "Random-access reads in one process (the default `num_workers=0`), items/s of wall clock and of CPU: in batches of "
    "`bs` random items read at once as the training loader reads them (`StoreDataset.batch`), and one by one; each "
    "through its own fresh memory maps (the first touch of a page is part of a random read). First from the disk "
    "(`_cold`: the store dropped from the page cache, as the first epoch over a store larger than memory reads it), "
    "then with the store in the page cache (the goal's figure: a store that fits in memory, once read)"
    import torch
    from cmrl.data.store import FeatureStore, StoreDataset
    torch.set_num_threads(1)  # as training runs (`--threads 1`)
    idx = np.random.default_rng(seed).integers(0, FeatureStore(store).n, k)
    def rate(read):
        fs = FeatureStore(store)
        ds = StoreDataset(fs, np.arange(fs.n), MODS)
        t0, c0 = time.perf_counter(), time.process_time()
        read(ds)
        return k / (time.perf_counter() - t0), k / (time.process_time() - c0)
    r = {}
    batches = lambda ds: [ds.batch(idx[a:a + bs]) for a in range(0, k, bs)]
    page_cache(store, warm=False)
    r['load_items_per_s_cold'], r['load_items_per_cpu_s_cold'] = rate(batches)
    page_cache(store, warm=True)
    r['load_items_per_s'], r['load_items_per_cpu_s'] = rate(batches)
    r['item_load_items_per_s'], r['item_load_items_per_cpu_s'] = rate(lambda ds: [ds[int(i)] for i in idx])
    return r


def train_epoch(store: Path, out: Path, **kw) -> dict:
    "One epoch of Uni-Code (defaults, bs 256, 1 thread; `kw`: other `cmrl train` settings): items/s, loader share, "
    "peak RssAnon"
    import torch
    from fastai.callback.core import Callback
    from cmrl.train import train
    torch.set_num_threads(1)
    class Start(Callback):  # first of every callback at the start of a batch
        order = -1000
        def before_fit(self):
            self.waits, self.steps, self.t_end, self.t_start, self.cpu0 = [], [], None, None, time.process_time()
        def before_batch(self):
            now = (time.perf_counter(), time.thread_time())  # wall clock, and this thread's CPU time
            if self.training and self.t_end is not None:
                self.waits.append(np.subtract(now, self.t_end)); self.steps.append(np.subtract(now, self.t_start))
            self.t_start = now
    class End(Callback):  # last of every callback at the end of a batch: from here to `Start` is waiting for data
        order = 1000
        def after_batch(self):
            if self.training: clock.t_end = (time.perf_counter(), time.thread_time())
        def after_fit(self): clock.cpu = time.process_time() - clock.cpu0
    clock = Start()
    with PeakRss() as rss, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        t0 = time.perf_counter()
        s = train(data=str(store), bs=256, epochs=1, out=str(out), quiet=True, threads=1, cbs=[clock, End()], **kw)
        fit = s.get('fit_seconds') or (time.perf_counter() - t0)
    share = np.sum(clock.waits, 0) / np.sum(clock.steps, 0) if clock.steps else [float('nan')] * 2
    # the steady rate: a batch over the median time from one batch's start to the next (wall, and this thread's CPU);
    # the whole-fit rate above also carries the run's fixed costs (building the model, the first steps, validation)
    step = np.median(clock.steps, 0) if clock.steps else [float('nan')] * 2
    steady = {'steps_timed': len(clock.steps), 'step_s_median': float(step[0]), 'step_cpu_s_median': float(step[1]),
              'train_items_per_s_steady': 256 / float(step[0]), 'train_items_per_cpu_s_steady': 256 / float(step[1]),
              # the median step (wall seconds) in each tenth of the epoch: warm-up, then the steady pace
              'step_s_by_tenth': [float(np.median(c[:, 0])) for c in np.array_split(np.asarray(clock.steps), 10)]
                                 if len(clock.steps) >= 10 else []}
    return {**steady, 'n_train': s['n_train'], 'fit_s': fit, 'train_items_per_s_per_core': s['n_train'] / fit,
            'loader_share': float(share[0]), 'peak_rss_mb': rss.peak, 'train_loss': s.get('train_loss'),
            # the same measured in CPU seconds of the process (steady when other processes share the cores)
            'fit_cpu_s': clock.cpu, 'train_items_per_cpu_s': s['n_train'] / clock.cpu,
            'loader_share_cpu': float(share[1])}


def train_epoch_fresh(store: Path, out: Path, item_loader: bool = False, **kw) -> dict:
    "`train_epoch` in a new Python process, so that its peak RssAnon is that of a process that only trains (not one "
    "that also generated and packed the planted set)"
    cmd = [sys.executable, str(Path(__file__).resolve()), '--train-epoch', str(store), str(out), '--train-kw',
           json.dumps(kw)] + (['--item-loader'] if item_loader else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode: raise RuntimeError(f"training process failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def heldout_r10(store: Path, out: Path) -> float:
    "Mean cross-modal R@10 of the trained model on the held-out items (every ordered pair of modalities)"
    import torch
    from cmrl.checkpoint import load_model
    from cmrl.data.loaders import get_source
    from cmrl.eval.ckpt import records_features
    from cmrl.metrics import cross_modal_retrieval
    model, _ = load_model(out / 'checkpoint.pt')
    src = get_source(str(store))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        f = records_features(model, src, list(src.split('test')), MODS, bs=256)
    r = cross_modal_retrieval(f.emb, ids=f.ids, chance=False)
    return float(np.mean([v['R@10'] for v in r.values()]))


def cca_r10(store: Path, k: int = Z, eps: float = 1e-3) -> float:
    "A linear CCA peer: per pair of modalities, fit on the time-mean features of the training items, R@10 held out"
    from cmrl.data.store import FeatureStore
    fs = FeatureStore(store)
    n, tr = fs.n, fs.n - HELD
    def pooled(a, b):
        out = {}
        for m in MODS:
            rows = []
            for s in range(len(fs.meta['shards'])):
                lo, hi = int(fs.starts[s]), int(fs.starts[s + 1])
                if hi <= a or lo >= b: continue
                data = fs.shard(s)['mods'][m][0]
                x = np.asarray(data[(max(a, lo) - lo) * T:(min(b, hi) - lo) * T], dtype=np.float32)
                rows.append(x.reshape(-1, T, D).mean(1))
            out[m] = np.concatenate(rows)
        return out
    S, mu, cnt = {}, {m: np.zeros(D) for m in MODS}, 0
    for a in range(0, tr, 20000):
        x = pooled(a, min(a + 20000, tr)); cnt += len(x[MODS[0]])
        for m in MODS: mu[m] += x[m].sum(0)
        for i, p in enumerate(MODS):
            for q in MODS[i:]: S[p, q] = S.get((p, q), 0) + x[p].T.astype(np.float64) @ x[q]
    mu = {m: v / cnt for m, v in mu.items()}
    C = {(p, q): S[p, q] / cnt - np.outer(mu[p], mu[q]) for p, q in S}
    def isqrt(c):
        w, v = np.linalg.eigh(c + eps * np.trace(c) / len(c) * np.eye(len(c)))
        return v @ np.diag(w ** -.5) @ v.T
    held = pooled(tr, n)
    rs = []
    for i, p in enumerate(MODS):
        for q in MODS[i + 1:]:
            Wp, Wq = isqrt(C[p, p]), isqrt(C[q, q])
            U, s, Vt = np.linalg.svd(Wp @ C[p, q] @ Wq)
            ep, eq = (held[p] - mu[p]) @ Wp @ U[:, :k], (held[q] - mu[q]) @ Wq @ Vt.T[:, :k]
            ep /= np.linalg.norm(ep, axis=1, keepdims=True); eq /= np.linalg.norm(eq, axis=1, keepdims=True)
            sim = ep @ eq.T
            for s_ in (sim, sim.T):
                rank = (s_ > np.diag(s_)[:, None]).sum(1)
                rs.append(100 * float((rank < 10).mean()))
    return float(np.mean(rs))


def run_size(n: int, work: Path, keep: bool = False, pack_only: bool = False, train_kw: dict | None = None,
             item_loader: bool = False) -> dict:
    store, out = work / f"store-{n}", work / f"run-{n}"
    for p in (store, out): shutil.rmtree(p, ignore_errors=True)
    pack_s, gen_s = pack_planted(n, store)
    from cmrl.data.store import FeatureStore
    r = {'n': n, 'load_avg_before': os.getloadavg()[0], 'pack_s': pack_s, 'generate_s': gen_s,
         'store_mb': FeatureStore(store).nbytes() / 1e6,
         'raw_mb': n * len(MODS) * T * D * 2 / 1e6}
    r.update(load_rate(store))
    if pack_only:
        shutil.rmtree(store, ignore_errors=True)
        return r
    r.update(train_epoch_fresh(store, out, item_loader, **(train_kw or {})))
    r['heldout_R@10'] = heldout_r10(store, out)
    r['cca_heldout_R@10'] = cca_r10(store)
    r['load_avg_after'] = os.getloadavg()[0]  # 1-minute load average: above the 2 cores, wall-clock rates are inflated
    if not keep: shutil.rmtree(store, ignore_errors=True); shutil.rmtree(out, ignore_errors=True)
    return r


def goals(res: list[dict]) -> list[str]:
    "Each goal of issue 30 that the measured sizes speak to, met or missed, and by how much"
    out = []
    def say(name, ok, how): out.append(f"goal: {name}: {'met' if ok else 'MISSED'} ({how})")
    for r in res:
        n = r['n']
        say(f"store <= 1.1 x raw bytes (n={n})", r['store_mb'] <= 1.1 * r['raw_mb'],
            f"{r['store_mb'] / r['raw_mb']:.3f} x")
        say(f"random reads >= 20,000 items/s (n={n})", r['load_items_per_s'] >= 20000,
            f"in batches {r['load_items_per_s']:.0f} items/s, {r['load_items_per_cpu_s']:.0f} per CPU second; "
            f"one by one "
            f"{r['item_load_items_per_s']:.0f}, {r['item_load_items_per_cpu_s']:.0f}"
            + (f"; the store's pages in the page cache; from the disk: {r['load_items_per_s_cold']:.0f} items/s"
               if 'load_items_per_s_cold' in r else ''))
        if n >= 1_000_000: say("pack 1 M items <= 10 min", r['pack_s'] <= 600, f"{r['pack_s']:.0f} s")
        if 'loader_share' not in r: continue
        say(f"loader <= 10 % of a step (n={n})", r['loader_share'] <= .1,
            f"{r['loader_share']:.3f}; {r['loader_share_cpu']:.3f} of its CPU time")
        v = r['train_items_per_s_per_core']
        say(f"training >= 2,000 items/s/core (n={n})", v >= 2000, f"{v:.0f}: {v / 2000:.2f} x the goal; "
            f"{r['train_items_per_cpu_s']:.0f} per CPU second"
            + (f"; steady (median step) {r['train_items_per_s_steady']:.0f}, {r['train_items_per_cpu_s_steady']:.0f} per "
               f"CPU second" if 'train_items_per_s_steady' in r else ''))
        if n >= 1_000_000: say("held-out R@10 >= 90 at 1 M", r['heldout_R@10'] >= 90, f"{r['heldout_R@10']:.1f}")
    tr = sorted((r for r in res if 'loader_share' in r), key=lambda r: r['n'])
    if len(tr) > 1:
        a, b = tr[0], tr[-1]
        q = b['peak_rss_mb'] / a['peak_rss_mb']
        say(f"peak RssAnon at n={b['n']} <= 1.2 x at n={a['n']}", q <= 1.2,
            f"{b['peak_rss_mb']:.0f} / {a['peak_rss_mb']:.0f} MB = {q:.2f} x")
        v, c = ([r[k] for r in tr] for k in ('train_items_per_s_per_core', 'train_items_per_cpu_s'))
        say(f"training items/s constant within 10 % (n={a['n']}..{b['n']}), whole fit", max(v) / min(v) - 1 <= .1,
            f"max / min - 1 = {100 * (max(v) / min(v) - 1):.0f} %; per CPU second {100 * (max(c) / min(c) - 1):.0f} %; "
            f"the fit's fixed costs weigh on the small sizes")
        if all('train_items_per_s_steady' in r for r in tr):
            v, c = ([r[k] for r in tr] for k in ('train_items_per_s_steady', 'train_items_per_cpu_s_steady'))
            say(f"training items/s constant within 10 % (n={a['n']}..{b['n']}), steady (median step)",
                max(v) / min(v) - 1 <= .1,
                f"max / min - 1 = {100 * (max(v) / min(v) - 1):.1f} %; per CPU second "
                f"{100 * (max(c) / min(c) - 1):.1f} %; {' / '.join(f'{x:.0f}' for x in v)} items/s")
    return out


def line(r: dict) -> str:
    return (f"scale: n={r['n']} pack_s={r['pack_s']:.1f} store_mb={r['store_mb']:.1f} raw_mb={r['raw_mb']:.1f} "
            f"load_items_per_s={r['load_items_per_s']:.0f} "
            f"train_items_per_s_per_core={r['train_items_per_s_per_core']:.0f} peak_rss_mb={r['peak_rss_mb']:.0f} "
            f"loader_share={r['loader_share']:.3f} heldout_R@10={r['heldout_R@10']:.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', default='10000,100000,1000000', help='comma-separated item counts (each > 1000)')
    p.add_argument('--work', default=None, help='folder for the stores and runs (default: a temporary folder)')
    p.add_argument('--json', default='benchmarks/scale.json', help="where to write the numbers ('' for nowhere)")
    p.add_argument('--keep', action='store_true', help='keep the stores and runs')
    p.add_argument('--pack-only', action='store_true', help='only pack and load (a `scale-pack:` line per size)')
    p.add_argument('--item-loader', action='store_true',
                   help="train with the loader that reads and collates item by item (the old path), to compare")
    p.add_argument('--train-epoch', nargs=2, metavar=('STORE', 'OUT'),
                   help='(internal) one epoch on STORE into OUT in this process; prints its numbers as JSON')
    p.add_argument('--train-kw', default='{}', help='other `cmrl train` settings as JSON, e.g. \'{"max_speech": 10}\'')
    a = p.parse_args(argv)
    try: train_kw = json.loads(a.train_kw); assert isinstance(train_kw, dict)
    except (ValueError, AssertionError):
        p.error(f"--train-kw: give a JSON object of `cmrl train` settings, not {a.train_kw!r}")
    sizes = [int(s) for s in a.sizes.split(',') if s.strip()]
    if a.item_loader:
        import cmrl.data.loaders as loaders
        from cmrl.core import modality_dl
        loaders._dl = lambda ds, *args, **kw: modality_dl(ds, *args, **kw)
    if a.train_epoch:
        print(json.dumps(train_epoch(Path(a.train_epoch[0]), Path(a.train_epoch[1]), **train_kw)))
        return
    if any(n <= HELD + 256 for n in sizes):
        p.error(f"--sizes: each size must exceed {HELD + 256} (1,000 held out, one batch)")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-scale-'))
    work.mkdir(parents=True, exist_ok=True)
    res = []
    for n in sizes:
        r = run_size(n, work, a.keep, a.pack_only, train_kw, a.item_loader)
        res.append(r)
        if a.pack_only:
            print(f"scale-pack: n={n} pack_s={r['pack_s']:.1f} generate_s={r['generate_s']:.1f} "
                  f"store_mb={r['store_mb']:.1f} raw_mb={r['raw_mb']:.1f} load_items_per_s={r['load_items_per_s']:.0f}",
                  flush=True)
            continue
        print(f"cca: n={n} heldout_R@10={r['cca_heldout_R@10']:.1f}", flush=True)
        print(line(r), flush=True)
    gl = goals(res)
    print('\n'.join(gl), flush=True)
    if a.json:
        cmd = 'python benchmarks/scale.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
        Path(a.json).write_text(json.dumps({'command': cmd, 'cores': os.cpu_count(), 'threads': 1,
                                            'train_kw': train_kw, 'item_loader': a.item_loader, 'sizes': res,
                                            'goals': gl},
                                           indent=1) + '\n')
    if not a.work and not a.keep: shutil.rmtree(work, ignore_errors=True)
    return res


if __name__ == '__main__': main()
