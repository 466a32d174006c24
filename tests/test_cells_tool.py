"tools/cells.py: the exported-cell size goal (none over 80 lines; at most 10 over 60, each a single definition)"
import importlib.util, json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('cells_tool', ROOT / 'tools' / 'cells.py')
cells = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(cells)


def nb(path: Path, *sources: str):
    path.write_text(json.dumps({'cells': [{'cell_type': 'code', 'id': f'c{i}', 'metadata': {}, 'outputs': [],
                                           'execution_count': None, 'source': s} for i, s in enumerate(sources)],
                                'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))


def fn(name: str, lines: int) -> str:  # a definition of `lines` lines
    return f"def {name}():\n" + ''.join(f"    x{i} = {i}\n" for i in range(lines - 2)) + "    return 0\n"


def run(folder: Path) -> int:
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'cells.py'), '--check', '--nbs', str(folder)],
                          capture_output=True, text=True).returncode


@pytest.mark.parametrize('cell, ok', [
    ('#| export\n' + fn('a', 80), True),                     # 80 lines: allowed (one definition)
    ('#| export\n' + fn('a', 81), False),                    # over 80
    ('#| export\n' + fn('a', 30) + '\n' + fn('b', 31), False),  # 62 lines, two definitions
    ('#| export\nimport os\n' + fn('a', 64), True),           # imports are not definitions
    (fn('a', 200), True),                                    # not exported: not counted
], ids=['80', '81', 'two-defs-over-60', 'import-and-one-def', 'not-exported'])
def test_one_cell(tmp_path, cell, ok):
    nb(tmp_path / 'x.ipynb', cell)
    assert run(tmp_path) == (0 if ok else 1)


def test_at_most_ten_over_60(tmp_path):
    nb(tmp_path / 'x.ipynb', *['#| export\n' + fn(f'f{i}', 61) for i in range(10)])
    assert run(tmp_path) == 0
    nb(tmp_path / 'y.ipynb', '#| export\n' + fn('g', 61))
    assert run(tmp_path) == 1


def test_counts_lines_and_definitions():
    src = '#| export\n\nX = 1\n' + fn('f', 5) + '\n'
    assert cells.cell_lines(src) == 6 and cells.definitions(src) == ['X', 'f'] and cells.is_exported(src)
    assert not cells.is_exported('#| hide\nx = 1')


def test_no_folder(tmp_path):
    assert run(tmp_path / 'nothing') == 2
