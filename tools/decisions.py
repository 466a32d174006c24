"""The decision log `benchmarks/decisions.jsonl`: one JSON line per lever tried, its numbers read from the results JSON.

    python tools/decisions.py            # fill in / refresh every line's derived fields and rewrite the log
    python tools/decisions.py --check    # exit 1, naming the line, if the log differs from what its JSON files give
    python tools/decisions.py --print    # print the log as it would be written

A line holds the log's own facts, written by hand: `lever` (a short name), `what` (one sentence), `file` (the
results JSON, e.g. `benchmarks/results_valid.json`), `row` (the row measured with the lever), `base` (the row it is
compared with, the settings of the time), `kept` (whether it became a default), optionally `read` (`{"retrieval":
"retrieval_semantic"}`: read the lever's metric paths under another first key of the same results, for a lever that
changes the scoring and not the training) and `commit` (the commit that first committed both rows; found with
`git log` when missing). The script derives the rest from the JSON file: `part` (its `scored_part`), `lang`, `seeds`
(the seeds both rows ran) and `delta`: for each metric of `METRICS`, over those seeds, the mean, min and max of the
lever row's value minus the base row's (paired by seed; null where a row lacks the metric). So a delta is never typed.
Bad input (a line that is not JSON, a missing field, a row the file lacks) is one line naming the log line and the
field, exit status 2.
"""
from __future__ import annotations
import argparse, functools, json, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / 'benchmarks' / 'decisions.jsonl'
METRICS = ['retrieval/image->speech/R@10', 'retrieval/speech->image/R@10', 'retrieval/image->text/R@10',
           'retrieval/text->image/R@10', 'retrieval/speech->text/R@10', 'probe/image->speech/acc',
           'probe/speech->image/acc', 'kappa/image-speech/kappa']  # the columns of every line's delta
GIVEN = ['lever', 'what', 'file', 'row', 'base', 'kept']  # fields a line must have
ORDER = ['lever', 'what', 'file', 'part', 'lang', 'seeds', 'row', 'base', 'read', 'delta', 'kept', 'commit']


class BadLog(ValueError): "A decision-log line that cannot be read: the message names the line and the field"


def metric(seed_result: dict, path: str, read: dict | None = None):
    "The value at `path` ('retrieval/image->speech/R@10') of one seed's result (first key renamed by `read`), or None"
    first, *rest = path.split('/')
    try: return functools.reduce(lambda d, p: d[p], [(read or {}).get(first, first), *rest], seed_result)
    except (KeyError, TypeError): return None


def _results(file: str, root: Path, cache: dict, where: str) -> dict:
    "The results JSON `file` (read once per `cache`)"
    if file not in cache:
        try: cache[file] = json.loads((Path(root) / file).read_text())
        except json.JSONDecodeError as e: raise BadLog(f"{where}: field 'file': {file} is not JSON ({e})") from None
    return cache[file]


def derive(line: dict, root: Path = ROOT, where: str = 'line', cache: dict | None = None) -> dict:
    "`line` with its derived fields (`part`, `lang`, `seeds`, `delta`) computed from the results JSON it names"
    for k in GIVEN:
        if k not in line: raise BadLog(f'{where}: field {k!r} missing (a line needs {", ".join(GIVEN)})')
    f = Path(root) / line['file']
    if not f.exists(): raise BadLog(f"{where}: field 'file': {line['file']} does not exist")
    res = _results(line['file'], root, {} if cache is None else cache, where)
    rows = res.get('rows', {})
    for k in ('row', 'base'):
        if not rows.get(line[k], {}).get('per_seed'):
            raise BadLog(f"{where}: field {k!r}: {line['file']} has no measured row {line[k]!r}")
    a, b = rows[line['row']]['per_seed'], rows[line['base']]['per_seed']
    seeds = sorted(set(a) & set(b), key=int)
    if not seeds: raise BadLog(f"{where}: rows {line['row']!r} and {line['base']!r} share no seed in {line['file']}")
    delta = {}
    for m in METRICS:
        d = [(metric(a[s], m, line.get('read')), metric(b[s], m)) for s in seeds]
        d = [x - y for x, y in d if x is not None and y is not None]
        r = lambda x: round(x, 3) + 0.0  # + 0.0: no -0.0
        delta[m] = {'mean': r(sum(d) / len(d)), 'min': r(min(d)), 'max': r(max(d))} if len(d) == len(seeds) else None
    out = dict(line, part=res['scored_part'], lang=res['lang'], seeds=[int(s) for s in seeds], delta=delta)
    return {k: out[k] for k in ORDER if k in out} | {k: v for k, v in out.items() if k not in ORDER}


def _git(*args, root: Path = ROOT) -> str:
    return subprocess.run(['git', *args], cwd=root, text=True, capture_output=True, check=True).stdout


def first_commit(file: str, row: str, base: str, root: Path = ROOT) -> str | None:
    "The short hash of the first commit whose `file` has measured rows `row` and `base` (None outside a git checkout)"
    try: commits = _git('log', '--reverse', '--format=%h', '--', file, root=root).split()
    except (OSError, subprocess.CalledProcessError): return None
    for c in commits:
        try: rows = json.loads(_git('show', f'{c}:{file}', root=root)).get('rows', {})
        except (subprocess.CalledProcessError, json.JSONDecodeError): continue
        if all(rows.get(r, {}).get('per_seed') for r in (row, base)): return c
    return None


def read_log(path: Path = LOG) -> list[dict]:
    "The lines of the decision log (BadLog naming the line if one is not a JSON object)"
    out = []
    for i, t in enumerate(path.read_text().splitlines(), 1):
        if not t.strip(): continue
        try: d = json.loads(t)
        except json.JSONDecodeError as e:
            raise BadLog(f'{path.name} line {i}: not JSON ({e.msg}); one JSON object per line') from None
        if not isinstance(d, dict): raise BadLog(f'{path.name} line {i}: not a JSON object')
        out.append(d)
    return out


def build(lines: list[dict], root: Path = ROOT, name: str = LOG.name, find_commits: bool = True) -> list[dict]:
    "Every line derived from its JSON; a missing `commit` looked up in git when `find_commits`"
    out, cache = [], {}
    for i, l in enumerate(lines, 1):
        d = derive(l, root, where=f'{name} line {i} ({l.get("lever", "?")})', cache=cache)
        if find_commits and not d.get('commit'):
            d['commit'] = first_commit(d['file'], d['row'], d['base'], root)
        out.append(d)
    return out


def dumps(lines: list[dict]) -> str: return ''.join(json.dumps(l, ensure_ascii=False) + '\n' for l in lines)


def check(path: Path = LOG, root: Path = ROOT) -> list[str]:
    "Lines (`lever`: field) whose stored fields differ from what their JSON gives; empty when the log is current"
    have = read_log(path)
    want = build(have, root, path.name, find_commits=False)
    return [f"{path.name} line {i} ({h.get('lever')}): field {k!r} is {h.get(k)!r}, the JSON gives {w.get(k)!r}"
            for i, (h, w) in enumerate(zip(have, want), 1) for k in w if h.get(k) != w.get(k)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if a line differs from what its JSON gives')
    ap.add_argument('--print', action='store_true', help='print the log instead of writing it')
    ap.add_argument('--log', type=Path, default=LOG, help='the decision log')
    a = ap.parse_args(argv)
    try:
        if a.check:
            bad = check(a.log)
            for b in bad: print(b, file=sys.stderr)
            if bad: print(f'{a.log} is stale: run `.venv/bin/python tools/decisions.py` and commit it', file=sys.stderr)
            return 1 if bad else 0
        text = dumps(build(read_log(a.log), ROOT, a.log.name))
    except (BadLog, FileNotFoundError) as e:
        print(f'decisions: {e}', file=sys.stderr); return 2
    if a.print: print(text, end='')
    elif a.log.read_text() != text: a.log.write_text(text)
    return 0


if __name__ == '__main__': sys.exit(main())
