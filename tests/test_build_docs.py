"tools/build_docs.py's execution cache: a notebook re-runs when what it depends on changes"
import importlib.util
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
