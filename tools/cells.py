"""Sizes of the exported code cells of nbs/: the cells over 40, 60 and 80 lines, and the goal of issue 27 item 7.

    python tools/cells.py            # notebook, cell id, lines, definitions of every exported cell over 40 lines
    python tools/cells.py --check    # the same, exit status 1 when the goal is broken

Goal: no exported cell over 80 lines; at most 10 over 60, each of them a single definition (one top-level `def` or
`class`, imports aside). Lines are the cell's source lines, `#|` directives and blank lines at its ends left out.
"""
from __future__ import annotations
import argparse, ast, json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES, BIG, MAX_BIG = 80, 60, 10


def is_exported(src: str) -> bool:
    "A cell nbdev exports: a `#| export` (or `exports`, `exporti`) directive"
    return any(l.replace(' ', '').startswith(('#|export', '#|exporti', '#|exports')) for l in src.splitlines())


def cell_lines(src: str) -> int:
    "Source lines without the `#|` directives and the blank lines at either end"
    body = [l for l in src.splitlines() if not l.replace(' ', '').startswith('#|')]
    while body and not body[0].strip(): body.pop(0)
    while body and not body[-1].strip(): body.pop()
    return len(body)


def definitions(src: str) -> list[str]:
    "Names of the top-level definitions (functions, classes, assigned names); imports are not definitions"
    try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('%', '!'))))
    except SyntaxError: return ['?']
    names = []
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)): names.append(n.name)
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                names += [x.id for x in ast.walk(t) if isinstance(x, ast.Name)]
    return names


def exported_cells(nbs: Path) -> list[dict]:
    "Every exported code cell of the notebooks under `nbs`: notebook, cell id, lines, definitions"
    out = []
    for nb in sorted(nbs.rglob('*.ipynb')):
        if '.ipynb_checkpoints' in nb.parts: continue
        try: cells = json.loads(nb.read_text())['cells']
        except (OSError, ValueError, KeyError) as e:
            sys.exit(f"{nb}: not a notebook ({e})")
        for i, c in enumerate(cells):
            src = ''.join(c.get('source', []))
            if c.get('cell_type') != 'code' or not is_exported(src): continue
            out.append({'notebook': str(nb.relative_to(nbs)), 'cell': c.get('id', str(i)), 'lines': cell_lines(src),
                        'defs': definitions(src)})
    return out


def problems(cells: list[dict]) -> list[str]:
    "What breaks the goal (empty: met)"
    where = lambda c: f"{c['notebook']} cell {c['cell']}: {c['lines']} lines"
    bad = [f"{where(c)} (over {MAX_LINES})" for c in cells if c['lines'] > MAX_LINES]
    big = [c for c in cells if BIG < c['lines'] <= MAX_LINES]
    bad += [f"{where(c)} and {len(c['defs'])} definitions ({', '.join(c['defs']) or 'none'}); "
            f"over {BIG} lines only for a single definition" for c in big if len(c['defs']) != 1]
    n_big = sum(c['lines'] > BIG for c in cells)
    if n_big > MAX_BIG: bad.append(f"{n_big} exported cells over {BIG} lines (at most {MAX_BIG})")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true', help='exit 1 when the goal is broken')
    p.add_argument('--nbs', default=str(ROOT / 'nbs'), help='the notebooks folder')
    a = p.parse_args(argv)
    if not Path(a.nbs).is_dir():
        print(f"{a.nbs}: no such folder of notebooks", file=sys.stderr); return 2
    cells = exported_cells(Path(a.nbs))
    over = sorted((c for c in cells if c['lines'] > 40), key=lambda c: -c['lines'])
    for c in over:
        print(f"{c['lines']:4d}  {c['notebook']:34s} {c['cell']:10s} {len(c['defs'])} def: {', '.join(c['defs'])[:70]}")
    n = lambda k: sum(c['lines'] > k for c in cells)
    print(f"{len(cells)} exported cells: {n(40)} over 40 lines, {n(60)} over 60, {n(80)} over 80")
    bad = problems(cells)
    for b in bad: print('goal broken:', b, file=sys.stderr)
    return 1 if a.check and bad else 0


if __name__ == '__main__':
    sys.exit(main())
