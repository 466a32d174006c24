"""Render `nbs/index.ipynb` (executed) to `README.md`, offline: what `nbdev-readme` does with Quarto.

    .venv/bin/python tools/readme.py           # rewrite README.md
    .venv/bin/python tools/readme.py --check   # exit 1 (with a diff) if README.md is stale

The notebook is executed through `tools/build_docs.py` (reusing its executed copy in `build/docs/exec/`
when the notebook and the package are unchanged), so the README shows the real outputs.
Markdown cells are copied; code cells become ```python blocks followed by their text outputs
(stdout, `text/markdown` as is, else `text/plain`); `#| hide` and `#| include: false` cells are left
out, `#| echo: false` shows only the output; stderr and images are left out. Relative links to
notebooks get the `nbs/` prefix, so they work from the repository root.
"""
from __future__ import annotations
import argparse, difflib, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
NOTE = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, then run `.venv/bin/python tools/readme.py`. -->'
_DIR_RE = re.compile(r'^#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$')


def _directives(src: str) -> tuple[dict, str]:
    "Leading `#| key: value` directives of a code cell, and the code without them"
    lines, dirs = src.splitlines(), {}
    while lines and (m := _DIR_RE.match(lines[0])):
        dirs[m.group(1)] = m.group(2).lower(); lines.pop(0)
    return dirs, '\n'.join(lines).strip()


def _text(v) -> str: return ''.join(v) if isinstance(v, list) else str(v)


def _link_fix(md: str) -> str:
    "Relative links to notebooks, made relative to the repository root"
    return re.sub(r'\]\((?![a-z]+:|#|/)([^)\s]+\.ipynb(?:#[^)\s]*)?)\)', r'](nbs/\1)', md)


def render(nb: dict) -> str:
    "Markdown of the executed notebook `nb`"
    out = []
    for i, c in enumerate(nb['cells']):
        src = _text(c['source'])
        if c['cell_type'] == 'markdown':
            out.append(_link_fix(src.strip()))
            if i == 0: out.append(NOTE)
            continue
        if c['cell_type'] != 'code': continue
        dirs, code = _directives(src)
        if 'hide' in dirs or dirs.get('include') == 'false' or {'export', 'exporti', 'exports'} & dirs.keys(): continue
        if dirs.get('echo') != 'false' and code: out.append(f'```python\n{code}\n```')
        if dirs.get('output') == 'false': continue
        for o in c.get('outputs', []):
            if o['output_type'] == 'stream':
                if o.get('name') == 'stdout' and _text(o['text']).strip(): out.append(f"```\n{_text(o['text']).rstrip()}\n```")
            elif o['output_type'] in ('execute_result', 'display_data'):
                d = o.get('data', {})
                if 'text/markdown' in d: out.append(_link_fix(_text(d['text/markdown']).strip()))
                elif 'text/plain' in d and not any(k.startswith('image/') for k in d): out.append(f"```\n{_text(d['text/plain']).rstrip()}\n```")
    return '\n\n'.join(o for o in out if o) + '\n'


def executed_index() -> dict:
    "The executed `nbs/index.ipynb` (via the docs build's cache)"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import build_docs
    failed = build_docs.execute_all(workers=1, only=[Path('index.ipynb')])
    if failed: raise SystemExit('tools/readme.py: nbs/index.ipynb failed to execute')
    return json.loads((build_docs.EXEC / 'index.ipynb').read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--check', action='store_true', help='exit 1 if README.md is stale')
    ap.add_argument('--out', type=Path, default=README, help='file to write')
    a = ap.parse_args(argv)
    new = render(executed_index())
    old = a.out.read_text() if a.out.exists() else ''
    if a.check:
        if old == new: print(f'{a.out.name} is up to date'); return 0
        sys.stderr.write(''.join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(a.out), 'generated')))
        sys.stderr.write(f'\n{a.out} is stale: run `.venv/bin/python tools/readme.py` and commit it.\n')
        return 1
    if old != new: a.out.write_text(new); print(f'wrote {a.out}')
    return 0


if __name__ == '__main__': sys.exit(main())
