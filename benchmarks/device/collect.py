"""Collect the device check of the main job (issue 13, item 6) into `benchmarks/device_main_job.json`.

The check (`benchmarks/device/device.sh`, run on a GPU machine) trains the main job (`cmrl` with its defaults: Uni-Code on
Tux Paint, French) twice, in fp32 and in bf16, and brings back each run's checkpoint, config, `metrics.json` and log.
Here each checkpoint is scored on the items it did not train on with `cmrl eval` (CPU), and the figures that matter are
written to one JSON file that the results tutorial renders.

How the check was carried (the device has no network, PyTorch but not fastai, and 64 MiB of files travel with a call):
`.gpu/` (ignored by git) held the Tux Paint pictures (PNG, at most 256 px a side), the French spoken descriptions, the
texts and stamp settings; the pure-Python packages the device lacks (fastai, fastcore, fastprogress, plum, soundfile
with libsndfile, cffi for Python 3.12, ...); and the frozen EfficientNet-Lite0 features of those pictures, computed
here (the weights package alone is 18 MB), keyed by path, size and a fixed mtime that `device.sh` sets again there.
Speech features were computed on the device. SVG-only stamps and sound effects were not carried, so the item counts
differ from a run on the installed stamps.

    python benchmarks/device/collect.py DEVICE_OUT_DIR [--eval]   # --eval: score the checkpoints with `cmrl eval` first
"""
import argparse, json, os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

def timed_line(log: Path) -> dict:
    "wall, peak RSS and peak CUDA memory from `timed.py`'s line"
    m = re.search(r"\[timed\] train .*?: wall ([\d.]+) s, peak RSS (\d+) MiB(?:, peak CUDA memory (\d+) MiB)?", log.read_text())
    return {} if not m else {'wall_s': float(m[1]), 'peak_rss_mib': int(m[2]), 'peak_cuda_mib': int(m[3]) if m[3] else None}

def device_lines(log: Path) -> list:
    return [l for l in log.read_text().splitlines()[:3]]

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('dir', help="the device call's output folder (run_fp32/, run_bf16/, log_fp32.txt, log_bf16.txt)")
    p.add_argument('--eval', action='store_true', help='score each checkpoint with `cmrl eval` (CPU) before collecting')
    p.add_argument('--stamps', default=str(ROOT / '.gpu' / 'stamps'), help='the carried stamps folder (CMRL_TUXPAINT for `cmrl eval`)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'device_main_job.json'))
    a = p.parse_args(argv)
    d = Path(a.dir)
    res = {'device': device_lines(d / 'log_fp32.txt'), 'command': 'cmrl train --precision {fp32,bf16} (defaults otherwise)', 'runs': {}}
    for prec in ('fp32', 'bf16'):
        run = d / f'run_{prec}'
        if not (run / 'metrics.json').exists(): continue
        m = json.loads((run / 'metrics.json').read_text())
        r = {k: m.get(k) for k in ('device', 'precision', 'epochs', 'n_train', 'n_valid', 'n_test', 'n_params', 'fit_seconds', 'total_seconds',
                                   'train_loss', 'valid_loss', 'nan_skipped')}
        r['best'] = m.get('best')
        r.update(timed_line(d / f'log_{prec}.txt'))
        ev = Path(str(run) + '-eval')
        if a.eval:
            env = dict(os.environ, CMRL_TUXPAINT=a.stamps)
            subprocess.run([sys.executable, '-c', 'import sys; from cmrl.cli import main; sys.exit(main())', 'eval', '--ckpt', str(run),
                            '--bits', '0', '--out', str(ev)], env=env, check=True, capture_output=True)
        if (ev / 'metrics.json').exists():
            e = json.loads((ev / 'metrics.json').read_text())
            r['held_out_items'] = e.get('n_items')  # every item the run did not train on (its valid and test parts)
            r['held_out_R@10'] = {k: round(v['R@10'], 2) for k, v in e.get('embedding', {}).items() if isinstance(v, dict) and 'R@10' in v}
            cb = e.get('codebook') or {}
            r['held_out_perplexity'] = {k: round(v, 2) for k, v in (cb.get('perplexity') or {}).items()}
            r['held_out_kappa'] = {k: round(v['kappa'], 3) for k, v in (cb.get('agreement') or {}).items()}
        res['runs'][prec] = r
    if {'fp32', 'bf16'} <= set(res['runs']):
        f, b = res['runs']['fp32'], res['runs']['bf16']
        res['bf16_over_fp32_fit_time'] = round(b['fit_seconds'] / f['fit_seconds'], 3)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))

if __name__ == '__main__': main()
