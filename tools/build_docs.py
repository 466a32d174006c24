"""Build the docs site offline: execute the notebooks, run nbdev's processing, render with smalldocs.

    .venv/bin/python tools/build_docs.py             # -> _docs/ (serve it over http for search to work)
    .venv/bin/python tools/build_docs.py --force     # re-execute every notebook, ignoring the cache

Committed notebooks carry no outputs (`clear_all = true`), so the build first EXECUTES every notebook
(all cells, `#| slow` ones included; cells flagged `#| notest` are skipped), in `--workers` parallel
fresh interpreters, with the notebook's own folder as working directory (as `nbdev-test` does).
Executed copies go to `build/docs/` (ignored), never into `nbs/`. A notebook that fails to execute
(or that nbdev's processing rejects) fails the build, named with its traceback: the site is still
rendered from the others, so their pages can be checked, and the build exits 1. Executed copies
are reused while the notebook, the `cmrl` sources and `pyproject.toml` are unchanged.

Then the steps `nbdev-docs` runs before calling Quarto (`nbdev.quarto`): `nbdev.yml` from
`pyproject.toml`, `_build_modidx`, the sidebar (here `tools/sidebar.py`: grouped by area), and
`proc_nbs` -> `_proc/`; then `smalldocs render -q _proc` (Quarto cannot be installed offline) and the
site moves to `_docs/`. Where Quarto exists, `nbdev-docs` builds the site from the same project.
"""
from __future__ import annotations
import argparse, hashlib, json, os, re, shutil, subprocess, sys, time, traceback
from concurrent.futures import ProcessPoolExecutor
from fnmatch import fnmatch
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
BUILD = ROOT / 'build' / 'docs'  # `build/` is git-ignored
EXEC = BUILD / 'exec'  # executed notebooks (cache)
STAGE = BUILD / 'nbs'  # copy of nbs/ with executed notebooks: what nbdev processes
DOCS = ROOT / '_docs'  # the site (`doc_path` of nbdev's config)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sidebar import sidebar_yml, pages  # noqa: E402

_SMALLDOCS_NOISE = ('unknown key format-links', 'format commonmark is not built', 'keep-md is ignored',
                    'output-file is not read by smalldocs')  # expected: Quarto-only settings of nbdev's project
_SKIP_FLAGS = ['notest']  # cell flags never executed for the docs (`slow` cells ARE executed)


def _log(*a): print('[build_docs]', *a, flush=True)


def notebooks(nbs: Path = NBS) -> list[Path]:
    "Notebooks under `nbs` that nbdev publishes (relative paths)"
    return [p for p in pages(nbs) if p.suffix == '.ipynb']


def _sources_key() -> str:
    "Hash of what every notebook's execution depends on besides itself: the package and its pins"
    h = hashlib.sha256()
    for p in sorted((ROOT / 'cmrl').rglob('*.py')) + [ROOT / 'pyproject.toml']:
        h.update(str(p.relative_to(ROOT)).encode()); h.update(p.read_bytes())
    return h.hexdigest()


def _benchmarks_key() -> str:
    "Hash of the committed benchmark results (benchmarks/*.json, and the decision log *.jsonl) that some notebooks render"
    h = hashlib.sha256()
    for p in sorted((ROOT / 'benchmarks').glob('*.json')) + sorted((ROOT / 'benchmarks').glob('*.jsonl')):
        h.update(p.name.encode()); h.update(p.read_bytes())
    return h.hexdigest()


def _nb_key(rel: Path, src_key: str, bench_key: str) -> str:
    raw = (NBS / rel).read_bytes()
    data = bench_key.encode() if b'benchmarks' in raw else b''  # a notebook that reads the results re-runs when they change
    return hashlib.sha256(raw + src_key.encode() + data).hexdigest()


def execute_nb(job) -> tuple[str, bool, float, str]:
    "Execute notebook `src` (skipping `notest` cells) and write it with outputs to `dst`"
    src, dst, cell_timeout = job
    src, dst = Path(src), Path(dst)
    t0 = time.time()
    try:
        from execnb.shell import CaptureShell
        from fastcore.nbio import write_nb
        from fastcore.xtras import working_directory
        from nbdev.process import NBProcessor
        from nbdev.test import _skip_cell
        nb = NBProcessor(src, rm_directives=False, process=True).nb
        skip = _skip_cell(nb, _SKIP_FLAGS, [])
        k = CaptureShell(src)
        with working_directory(src.parent):
            try: k.run_all(nb, exc_stop=True, preproc=skip, cell_timeout=cell_timeout)
            except Exception: return str(src), False, time.time() - t0, k.prettytb(fname=src) or traceback.format_exc()
        for c in nb.cells: c.pop('directives_', None)
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
        return str(src), True, time.time() - t0, ''
    except Exception: return str(src), False, time.time() - t0, traceback.format_exc()


def execute_all(force: bool = False, workers: int = 2, cell_timeout: int = 600, only: list[Path] | None = None) -> list[str]:
    "Execute the notebooks into `EXEC` (reusing unchanged ones); return the names of those that failed"
    EXEC.mkdir(parents=True, exist_ok=True)
    cache_f = BUILD / 'exec-cache.json'
    cache = {} if force or not cache_f.exists() else json.loads(cache_f.read_text())
    src_key = _sources_key()
    nbs = only or notebooks()
    bench_key = _benchmarks_key()  # once: the results files are large
    keys = {str(r): _nb_key(r, src_key, bench_key) for r in nbs}
    todo = [r for r in nbs if cache.get(str(r)) != keys[str(r)] or not (EXEC / r).exists()]
    for r in todo: (EXEC / r).unlink(missing_ok=True)
    _log(f'executing {len(todo)} of {len(nbs)} notebooks ({len(nbs) - len(todo)} unchanged) with {workers} workers')
    failed = []
    if todo:
        # each notebook runs in a fresh interpreter; share the cores between the workers
        for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(v, str(max(1, (os.cpu_count() or 2) // workers)))
        jobs = [(NBS / r, EXEC / r, cell_timeout) for r in todo]
        with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context('spawn'), max_tasks_per_child=1) as ex:
            for (src, ok, dt, err), r in zip(ex.map(execute_nb, jobs), todo):
                _log(f"{'ok    ' if ok else 'FAILED'} {r} ({dt:.1f} s)")
                if ok: cache[str(r)] = keys[str(r)]
                else:
                    cache.pop(str(r), None); failed.append(str(r))
                    sys.stderr.write(f'\n----- {r} failed to execute -----\n{err}\n')
                cache_f.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return failed


def nbdev_yml() -> str:
    "The `nbdev.yml` that `nbdev.quarto.refresh_quarto_yml` writes, computed without touching `nbs/`"
    from nbdev.config import get_config
    from nbdev.quarto import _nbdev_yml
    cfg = get_config(ROOT)
    vals = {k: cfg[k] for k in ['title', 'description', 'branch', 'git_url', 'doc_host', 'doc_baseurl']}
    vals['doc_path'] = cfg.doc_path.name
    return _nbdev_yml.format(**vals)


def stage(nbs: list[Path]):
    "Copy `nbs/` to `STAGE` with the executed notebooks `nbs`, a fresh `nbdev.yml` and the generated sidebar"
    if STAGE.exists(): shutil.rmtree(STAGE)
    shutil.copytree(NBS, STAGE, symlinks=False, ignore=shutil.ignore_patterns('.ipynb_checkpoints', '__pycache__'))
    for r in notebooks(STAGE):  # notebooks that appeared after the build started are left out
        if r not in nbs: (STAGE / r).unlink()
    for r in nbs: shutil.copy2(EXEC / r, STAGE / r)
    (STAGE / 'nbdev.yml').write_text(nbdev_yml())
    (STAGE / 'sidebar.yml').write_text(sidebar_yml(STAGE))


_PROC_HINT = ("nbdev runs only the import, exported and show_doc cells when it processes a notebook: a cell that "
              "imports AND uses names defined in other cells fails there; put the import in its own cell")


def process_and_render(workers: int = 2) -> tuple[Path, list[str]]:
    "nbdev's pre-processing of `STAGE` into `_proc/`, then smalldocs into `_docs/`; returns the site and the notebooks left out"
    import nbdev.doclinks
    from nbdev.quarto import _def_file_re
    from nbdev.serve import proc_nbs
    os.chdir(ROOT)
    nbdev.doclinks._build_modidx()
    proc = ROOT / '_proc'
    bad = []
    for attempt in range(2):
        if proc.exists(): shutil.rmtree(proc)
        try:
            proc_nbs(str(STAGE), n_workers=workers, force=True, file_re=_def_file_re); break
        except Exception as e:
            _log(f'nbdev processing failed ({type(e).__name__}: {str(e)[:300]}); finding the notebooks that fail')
            new = [r for r in diagnose_processing(workers) if r not in bad]
            if attempt or not new: raise SystemExit(f'build_docs: nbdev processing failed: {e}')
            bad += new
            sys.stderr.write(f'\nbuild_docs: nbdev processing fails on {", ".join(new)}: left out of the site.\n({_PROC_HINT})\n')
            for r in new: (STAGE / r).unlink()
            (STAGE / 'sidebar.yml').write_text(sidebar_yml(STAGE))
    res = subprocess.run([str(Path(sys.executable).with_name('smalldocs')), 'render', '-q', str(proc)], text=True, capture_output=True)
    out = [l for l in (res.stdout + res.stderr).splitlines() if l.strip() and not any(n in l for n in _SMALLDOCS_NOISE)]
    if out: print('\n'.join(out))
    if res.returncode: raise SystemExit(f'smalldocs render failed (exit {res.returncode})')
    docs = DOCS
    shutil.move(str(proc / docs.name), str(docs))
    return docs, bad


KATEX_DIR = Path(os.environ.get('CMRL_KATEX_DIR', '/usr/share/javascript/katex'))  # Debian's libjs-katex


def vendor_katex(docs: Path) -> bool:
    "Serve KaTeX from the site (Debian's libjs-katex) instead of smalldocs' CDN links, so formulas render offline"
    from smalldocs.layout import KATEX
    if not (KATEX_DIR / 'katex.min.js').exists():
        _log(f'no KaTeX in {KATEX_DIR} (apt-get install libjs-katex): formulas load KaTeX from {KATEX}, so need internet')
        return False
    dst = docs / 'site_libs' / 'katex'
    (dst / 'contrib').mkdir(parents=True, exist_ok=True)
    for a, b in [('katex.min.js', 'katex.min.js'), ('katex.min.css', 'katex.min.css'), ('contrib/auto-render.js', 'contrib/auto-render.min.js')]:
        shutil.copyfile(KATEX_DIR / a, dst / b)  # follows Debian's symlinks
    shutil.copytree(KATEX_DIR / 'fonts', dst / 'fonts', dirs_exist_ok=True, ignore=shutil.ignore_patterns('*.ttf'))
    n = 0
    for f in docs.rglob('*.html'):
        if 'site_libs' in f.relative_to(docs).parts: continue
        t = f.read_text(encoding='utf-8')
        if KATEX not in t: continue
        f.write_text(t.replace(KATEX, '../' * (len(f.relative_to(docs).parts) - 1) + 'site_libs/katex'), encoding='utf-8'); n += 1
    _log(f'KaTeX served from site_libs/katex on {n} page(s) with formulas')
    return True


def _proc_one(job) -> tuple[str, str]:
    "Run nbdev's docs processing on one staged notebook; return (name, error or '')"
    src, dst = job
    try:
        import nbdev.serve_drv
        from nbdev.processors import FilterDefaults
        nbdev.serve_drv.main((Path(src), Path(dst), FilterDefaults))
        return src, ''
    except Exception as e: return src, f'{type(e).__name__}: {e}'


def diagnose_processing(workers: int = 2) -> list[str]:
    "Process each staged notebook on its own to name every one that nbdev's processing rejects"
    import tempfile
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(str(STAGE / r), str(Path(tmp) / r.name)) for r in notebooks(STAGE)]
        try:
            with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=get_context('spawn')) as ex:
                res = list(ex.map(_proc_one, jobs))
        except Exception as e:  # e.g. a worker killed for memory: go on serially in this process
            _log(f'parallel diagnosis failed ({type(e).__name__}); processing one by one')
            res = [_proc_one(j) for j in jobs]
    bad = []
    for src, err in res:
        if err:
            r = Path(src).relative_to(STAGE).as_posix(); bad.append(r)
            sys.stderr.write(f'\n----- {r} fails nbdev processing -----\n{err}\n')
    return bad


def _hidden(cell) -> bool:
    "Whether a code cell's output is left out of the docs (`#| hide`, `include: false`, `output: false`)"
    src = ''.join(cell['source'])
    dirs = re.findall(r'^#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$', src, re.M)
    return any(k == 'hide' or (k in ('include', 'output') and v.lower() == 'false') for k, v in dirs)


def nb_title(nb: dict, default: str = '') -> str:
    "The title of a notebook: its first `# ` markdown heading"
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        m = re.search(r'^#\s+(.+?)\s*$', ''.join(c['source']), re.M)
        if m: return m.group(1)
    return default


def write_manifest(nbs: list[Path], docs: Path) -> Path:
    "Record what the site was built from (`build/docs/manifest.json`): notebook, page, title, plots"
    rows = []
    for r in nbs:
        nb = json.loads((EXEC / r).read_text())
        imgs = sum(1 for c in nb['cells'] if c['cell_type'] == 'code' and not _hidden(c) for o in c.get('outputs', [])
                   if any(k.startswith('image/') for k in o.get('data', {})))
        rows.append({'notebook': r.as_posix(), 'page': r.with_suffix('.html').as_posix(), 'title': nb_title(nb, r.stem),
                     'image_outputs': imgs, 'built': (docs / r.with_suffix('.html')).exists()})
    f = BUILD / 'manifest.json'
    f.write_text(json.dumps({'docs': str(docs), 'pages': rows}, indent=1))
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--force', action='store_true', help='re-execute all notebooks, ignoring the cache')
    ap.add_argument('--workers', type=int, default=2, help='notebooks executed in parallel')
    ap.add_argument('--cell-timeout', type=int, default=600, help='seconds before a cell times out')
    ap.add_argument('--only', nargs='+', metavar='GLOB', help='build only the notebooks matching these globs (a partial site)')
    ap.add_argument('--execute-only', action='store_true', help='only execute the notebooks (into build/docs/exec)')
    a = ap.parse_args(argv)
    t0 = time.time()
    nbs = notebooks()
    if a.only: nbs = [r for r in nbs if any(fnmatch(r.as_posix(), g) for g in a.only)]
    if not nbs: raise SystemExit(f'no notebooks found in {NBS}' + (f' matching {a.only}' if a.only else ''))
    # a failed build leaves no site behind, so the page tests never check a stale one
    (BUILD / 'manifest.json').unlink(missing_ok=True)
    if DOCS.exists(): shutil.rmtree(DOCS)
    failed = execute_all(force=a.force, workers=a.workers, cell_timeout=a.cell_timeout, only=nbs)
    _log(f'executed in {time.time() - t0:.0f} s')
    if a.execute_only or len(failed) == len(nbs): return 1 if failed else 0
    t1 = time.time()
    ok = [r for r in nbs if str(r) not in failed]
    stage(ok)
    docs, bad = process_and_render(a.workers)
    vendor_katex(docs)
    built = [r for r in ok if r.as_posix() not in bad]
    write_manifest(built, docs)
    html = sorted(p.relative_to(docs).as_posix() for p in docs.rglob('*.html') if 'site_libs' not in p.parts)
    _log(f'processed and rendered in {time.time() - t1:.0f} s: {len(html)} pages in {docs.relative_to(ROOT)}/: {", ".join(html)}')
    if failed or bad:
        sys.stderr.write(f'\nbuild_docs: FAILED: the site lacks {len(failed) + len(bad)} notebook(s)'
                         + (f'; failed to execute: {", ".join(failed)}' if failed else '')
                         + (f'; failed nbdev processing: {", ".join(bad)}' if bad else '') + '\n')
        return 1
    return 0


if __name__ == '__main__':
    import build_docs  # run as the importable module, so spawned workers find its functions by name
    sys.exit(build_docs.main())
