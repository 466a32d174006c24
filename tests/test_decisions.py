"The decision log benchmarks/decisions.jsonl matches the results JSON it names (tools/decisions.py)"
import importlib.util, json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('decisions', ROOT / 'tools' / 'decisions.py')
D = importlib.util.module_from_spec(spec); spec.loader.exec_module(D)
LINES = D.read_log()
NOT_LEVERS = {'benchmarks/results_valid.json': {'reference', 'plain_codebook:frozen-image', 'liu2022:frozen-image'}}


def test_log_matches_the_results_json():
    "Every line's part, language, seeds and deltas are what its results JSON gives (`tools/decisions.py --check`)"
    assert len(LINES) >= 40
    assert D.check() == []
    assert D.main(['--check']) == 0


def test_a_delta_is_mean_min_max_of_the_paired_differences():
    "One line recomputed by hand from the results JSON: the lever row minus the base row, seed by seed"
    l = next(l for l in LINES if l['lever'] == 'text n-gram 5')
    rows = json.loads((ROOT / l['file']).read_text())['rows']
    a, b = rows[l['row']]['per_seed'], rows[l['base']]['per_seed']
    r10 = lambda r: r['retrieval']['image->text']['R@10']
    d = [r10(a[s]) - r10(b[s]) for s in map(str, l['seeds'])]
    got = l['delta']['retrieval/image->text/R@10']
    assert got == pytest.approx({'mean': sum(d) / len(d), 'min': min(d), 'max': max(d)}, abs=1e-3)
    assert l['seeds'] == [0, 1, 2] and l['part'] == 'valid' and l['kept'] is True


def test_a_typed_delta_is_caught(tmp_path, capsys):
    "A delta edited by hand (or a results JSON re-measured) makes the check fail, naming the line and the field"
    log = tmp_path / 'decisions.jsonl'
    lines = [dict(l) for l in LINES]
    typed = {'retrieval/image->speech/R@10': {'mean': 99.0, 'min': 99.0, 'max': 99.0}}
    lines[3] = dict(lines[3], delta=dict(lines[3]['delta'], **typed))
    log.write_text(D.dumps(lines))
    bad = D.check(log)
    assert len(bad) == 1 and 'line 4' in bad[0] and "'delta'" in bad[0]
    assert D.main(['--check', '--log', str(log)]) == 1
    assert 'stale' in capsys.readouterr().err


def test_every_valid_row_is_in_the_log():
    "Each row of the French valid results is a lever or the base of one (the reference and two other models aside)"
    for f, skip in NOT_LEVERS.items():
        rows = {n for n, r in json.loads((ROOT / f).read_text())['rows'].items() if r.get('per_seed')}
        logged = {l[k] for l in LINES if l['file'] == f for k in ('row', 'base')}
        assert rows - logged - skip == set(), f'rows of {f} with no line in the decision log'


def test_lines_are_complete():
    "Each line names what, where (part, seeds), the delta, whether kept and the commit; levers are unique"
    assert len({l['lever'] for l in LINES}) == len(LINES)
    for l in LINES:
        assert l['what'] and l['part'] in ('valid', 'test') and l['seeds'] and isinstance(l['kept'], bool), l['lever']
        assert set(l['delta']) == set(D.METRICS) and l['delta']['retrieval/image->speech/R@10'] is not None, l['lever']
        assert len(l['commit']) >= 7 and int(l['commit'], 16) >= 0, l['lever']
    assert {l['part'] for l in LINES} == {'valid', 'test'}
    assert any(l['kept'] for l in LINES) and not all(l['kept'] for l in LINES)


@pytest.mark.skipif(not (ROOT / '.git').exists() or shutil.which('git') is None, reason='not a git checkout')
def test_commits_hold_both_rows():
    "Each line's commit is the first whose results file holds both of its rows"
    shallow = subprocess.run(['git', 'rev-parse', '--is-shallow-repository'], cwd=ROOT, capture_output=True,
                             text=True).stdout
    if shallow.strip() == 'true': pytest.skip('shallow clone: the history is not there')
    for l in LINES[:3] + LINES[-3:]:  # a sample: each look-up reads the file at every commit that touched it
        assert D.first_commit(l['file'], l['row'], l['base']) == l['commit'], l['lever']


@pytest.mark.parametrize('text,msg', [
    ('{"lever": "x"', 'line 1: not JSON'),
    ('{"lever": "x", "what": "y", "file": "benchmarks/results_valid.json", "row": "nope", "base": "reference", '
     '"kept": false}',
     "field 'row'"),
    ('{"lever": "x", "what": "y", "row": "a", "base": "b", "kept": false}', "field 'file' missing"),
])
def test_bad_line_is_one_clear_message(tmp_path, text, msg):
    "A bad line: one message naming the line and the field, exit status 2, the log left as it was"
    log = tmp_path / 'decisions.jsonl'
    log.write_text(text + '\n')
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'decisions.py'), '--log', str(log)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and log.read_text() == text + '\n'
