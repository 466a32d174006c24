"tools/build_docs.py's execution cache (a notebook re-runs when what it depends on changes) and the sidebar it renders"
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('build_docs', ROOT / 'tools' / 'build_docs.py')
B = importlib.util.module_from_spec(spec); spec.loader.exec_module(B)


def test_notebooks_that_read_the_results_rerun_when_the_results_change(tmp_path, monkeypatch):
    (tmp_path / 'nbs').mkdir(); (tmp_path / 'benchmarks').mkdir()
    (tmp_path / 'nbs' / 'reads.ipynb').write_text('{"cells": ["json.loads((ROOT / \'benchmarks\' / \'results.json\').read_text())"]}')
    (tmp_path / 'nbs' / 'plain.ipynb').write_text('{"cells": ["1 + 1"]}')
    (tmp_path / 'benchmarks' / 'results.json').write_text('{"a": 1}')
    monkeypatch.setattr(B, 'ROOT', tmp_path); monkeypatch.setattr(B, 'NBS', tmp_path / 'nbs')
    before = {n: B._nb_key(Path(n), 'src', B._benchmarks_key()) for n in ('reads.ipynb', 'plain.ipynb')}
    (tmp_path / 'benchmarks' / 'results.json').write_text('{"a": 2}')  # a re-measured benchmark
    after = {n: B._nb_key(Path(n), 'src', B._benchmarks_key()) for n in ('reads.ipynb', 'plain.ipynb')}
    assert after['reads.ipynb'] != before['reads.ipynb']  # the page rendering the results is executed again
    assert after['plain.ipynb'] == before['plain.ipynb']  # the others keep their cached execution
    assert B._nb_key(Path('plain.ipynb'), 'other src', B._benchmarks_key()) != after['plain.ipynb']  # and every page re-runs when the package changes


def test_the_decision_log_counts_as_results(tmp_path, monkeypatch):
    "The Results page renders benchmarks/decisions.jsonl: a new line in the log re-runs it"
    (tmp_path / 'benchmarks').mkdir()
    (tmp_path / 'benchmarks' / 'decisions.jsonl').write_text('{"lever": "a"}\n')
    monkeypatch.setattr(B, 'ROOT', tmp_path)
    before = B._benchmarks_key()
    (tmp_path / 'benchmarks' / 'decisions.jsonl').write_text('{"lever": "a"}\n{"lever": "b"}\n')
    assert B._benchmarks_key() != before


def test_sidebar_results_on_top_walkthrough_first(tmp_path):
    "The generated sidebar: the index, the Results page, then Tutorials with the walkthrough first, then the API"
    S = B.sys.modules['sidebar']
    for f in ('index.ipynb', 'results.ipynb', '00_core.ipynb', '10_codebook.ipynb',
              'tutorials/generation_tuxpaint.ipynb', 'tutorials/01_walkthrough.ipynb', '_hidden.ipynb'):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True); (tmp_path / f).write_text('{}')
    items = [l.strip('- ').strip() for l in S.sidebar_yml(tmp_path).splitlines() if l.strip().startswith('- ')]
    assert items == ['index.ipynb', 'results.ipynb', 'section: Tutorials', 'tutorials/01_walkthrough.ipynb',
                     'tutorials/generation_tuxpaint.ipynb', 'section: Data', '00_core.ipynb', 'section: Models',
                     '10_codebook.ipynb']


def test_committed_sidebar_has_the_walkthrough_and_results():
    "The committed sidebar (and the notebooks): the Results page at the top, the walkthrough first under Tutorials"
    yml = (ROOT / 'nbs' / 'sidebar.yml').read_text()
    assert (ROOT / 'nbs' / 'results.ipynb').exists() and (ROOT / 'nbs' / 'tutorials' / '01_walkthrough.ipynb').exists()
    tut = yml.split('section: Tutorials')[1].split('section:')[0]
    assert tut.split()[2] == 'tutorials/01_walkthrough.ipynb', tut
    assert yml.index('- results.ipynb') < yml.index('section:')
    nb = json.loads((ROOT / 'nbs' / 'results.ipynb').read_text())
    assert B.nb_title(nb) == 'Results'
