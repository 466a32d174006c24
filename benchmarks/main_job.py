"""The main job's cost: `cmrl` with its defaults, from an empty feature cache, under `/usr/bin/time -v`.

The goal (issue 13): at most 8 minutes of wall-clock time and 4 GB of peak memory on 2 CPU cores. This runs the
main job exactly as a user would (`cmrl`, no arguments) in a fresh folder with `CMRL_CACHE` pointing at an empty
cache, so the pictures, recordings and texts are decoded and the frozen image features computed inside the timed
run, and writes `benchmarks/main_job.json`: the wall time and peak resident memory that `time -v` reports, the
run's own summary (`metrics.json`: items per part, training seconds, best validation retrieval) and the machine.
Run it on a quiet machine: other jobs beside it inflate the time.

    python benchmarks/main_job.py                     # writes benchmarks/main_job.json
"""
from __future__ import annotations
import argparse, json, os, re, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOALS = {'wall_s': 8 * 60, 'peak_rss_mb': 4000}


def parse_time_v(text: str) -> dict:
    "Wall seconds and peak resident memory (MB) from the report of GNU `time -v`"
    wall = re.search(r'Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)', text)
    rss = re.search(r'Maximum resident set size \(kbytes\): (\d+)', text)
    if not wall or not rss: raise ValueError("no `time -v` report in the output (is /usr/bin/time GNU time?)")
    secs = 0.
    for part in wall.group(1).split(':'): secs = secs * 60 + float(part)
    return {'wall_s': round(secs, 1), 'peak_rss_mb': round(int(rss.group(1)) / 1000, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'main_job.json'))
    p.add_argument('--time', default='/usr/bin/time', help='GNU time')
    a = p.parse_args(argv)
    if not Path(a.time).exists(): sys.exit(f"{a.time} not found: apt-get install time")
    cmrl = Path(sys.executable).parent / 'cmrl'
    with tempfile.TemporaryDirectory(prefix='cmrl-main-job-') as tmp:
        env = dict(os.environ, CMRL_CACHE=str(Path(tmp) / 'cache'))
        load, t = os.getloadavg()[0], time.time()
        r = subprocess.run([a.time, '-v', str(cmrl)], cwd=tmp, env=env, capture_output=True, text=True)
        if r.returncode != 0: sys.exit(f"the main job failed ({r.returncode}):\n{r.stderr[-3000:]}")
        res = parse_time_v(r.stderr)
        run = next(Path(tmp, 'runs').glob('*/metrics.json'))
        m = json.loads(run.read_text())
    keep = ('n_train', 'n_valid', 'n_test', 'epochs', 'n_params', 'fit_seconds', 'total_seconds', 'best', 'device', 'precision')
    out = {'command': 'CMRL_CACHE=<empty folder> /usr/bin/time -v cmrl', **res, 'goals': GOALS,
           'met': {k: res[k] <= v for k, v in GOALS.items()}, 'run': {k: m.get(k) for k in keep},
           'machine': {'cpus': os.cpu_count(), 'load_before': round(load, 2)}, 'measured_at': time.strftime('%Y-%m-%d %H:%M'),
           'outer_seconds': round(time.time() - t, 1)}
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
