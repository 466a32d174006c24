"""Collect the device check of the main job (issue 13, item 6) into `benchmarks/device_main_job.json`.

The check (`benchmarks/device/device.sh`, run on a GPU machine) trains the main job (`cmrl` with its defaults: Uni-Code on
Tux Paint, French) twice, in fp32 and in bf16, and brings back each run's checkpoint, config, `metrics.json` and log.
Here each checkpoint is scored on the items it did not train on with `cmrl eval` (CPU), and the figures that matter are
written to one JSON file that the results tutorial renders.

How the data and packages reach a machine without network is `prepare.py`'s docstring: the stamps folder there is
the installed one file for file, with the frozen image features and file hashes computed here, so the run there sees
the same train / valid / test items as a run here (a one-epoch CPU run through that folder repeats a run on the installed
stamps to the last digit). Each run comes back as a tar in parts (a file back is at most 16 MiB); `cmrl eval` scores
its checkpoint here on the installed stamps, on every item the run did not train on.

    python benchmarks/device/collect.py DEVICE_OUT_DIR [--eval]   # --eval: score the checkpoints with `cmrl eval` first
"""
import argparse, json, os, re, subprocess, sys, tarfile, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

def timed_line(log: Path) -> dict:
    "wall, peak RSS and peak CUDA memory from `timed.py`'s line"
    m = re.search(r"\[timed\] train .*?: wall ([\d.]+) s, peak RSS (\d+) MiB(?:, peak CUDA memory (\d+) MiB)?", log.read_text())
    return {} if not m else {'wall_s': float(m[1]), 'peak_rss_mib': int(m[2]), 'peak_cuda_mib': int(m[3]) if m[3] else None}

def device_lines(log: Path) -> list:
    return [l for l in log.read_text().splitlines()[:3]]

def collect_run(d: Path, prec: str, tmp: Path, evaluate: bool, stamps=None) -> dict | None:
    "The figures of the `prec` run in the device's output folder `d` (unpacked and scored in `tmp`), or None if it did not come back"
    run, parts = d / f'run_{prec}', sorted(d.glob(f'run_{prec}.tar.part-*'))
    if parts:  # the run's tar, in parts: joined and unpacked here
        (tmp / 'run.tar').write_bytes(b''.join(q.read_bytes() for q in parts))
        with tarfile.open(tmp / 'run.tar') as t: t.extractall(tmp, filter='data')
        run = tmp / f'run_{prec}'
    if not (run / 'metrics.json').exists(): return None
    m = json.loads((run / 'metrics.json').read_text())
    r = {k: m.get(k) for k in ('device', 'precision', 'epochs', 'n_train', 'n_valid', 'n_test', 'n_params', 'fit_seconds', 'total_seconds',
                               'train_loss', 'valid_loss', 'nan_skipped')}
    r['best'] = m.get('best')
    r['valid_R@10'] = {k: v['R@10'] for k, v in (m.get('retrieval') or {}).items()}  # the kept weights, on the valid part
    r.update(timed_line(d / f'log_{prec}.txt'))
    r['checkpoint_back'] = (run / 'checkpoint.pt').exists()  # False: no held-out scores for this run
    if not (evaluate and r['checkpoint_back']): return r
    ev = tmp / f'run_{prec}-eval'  # the device's output folder may be read-only
    env = {k: v for k, v in os.environ.items() if k != 'CMRL_TUXPAINT'} | ({'CMRL_TUXPAINT': stamps} if stamps else {})
    subprocess.run([sys.executable, '-c', 'import sys; from cmrl.cli import main; sys.exit(main())', 'eval', '--ckpt', str(run),
                    '--bits', '0', '--out', str(ev)], env=env, check=True, capture_output=True)
    e = json.loads((ev / 'metrics.json').read_text())
    r['held_out_items'] = e.get('n_items')  # every item the run did not train on (its valid and test parts)
    r['held_out_R@10'] = {k: round(v['R@10'], 2) for k, v in e.get('embedding', {}).items() if isinstance(v, dict) and 'R@10' in v}
    cb = e.get('codebook') or {}
    r['held_out_perplexity'] = {k: round(v, 2) for k, v in (cb.get('perplexity') or {}).items()}
    r['held_out_kappa'] = {k: round(v['kappa'], 3) for k, v in (cb.get('agreement') or {}).items()}
    return r

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('dir', help="the device call's output folder (log_fp32.txt, log_bf16.txt, run_fp32.tar.part-*, run_bf16.tar.part-* or run_fp32/, run_bf16/)")
    p.add_argument('--eval', action='store_true', help='score each checkpoint with `cmrl eval` (CPU) before collecting')
    p.add_argument('--stamps', default=None, help='stamps folder for `cmrl eval` (CMRL_TUXPAINT); default: the installed stamps')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'device_main_job.json'))
    a = p.parse_args(argv)
    d = Path(a.dir)
    res = {'device': device_lines(d / 'log_fp32.txt'), 'command': 'cmrl train --precision {fp32,bf16} (defaults otherwise)', 'runs': {}}
    with tempfile.TemporaryDirectory(prefix='cmrl-device-') as tmp:
        for prec in ('fp32', 'bf16'):
            if (r := collect_run(d, prec, Path(tmp), a.eval, a.stamps)) is not None: res['runs'][prec] = r
    if {'fp32', 'bf16'} <= set(res['runs']):
        f, b = res['runs']['fp32'], res['runs']['bf16']
        res['bf16_over_fp32_fit_time'] = round(b['fit_seconds'] / f['fit_seconds'], 3)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))

if __name__ == '__main__': main()
