"""The built docs site (`_docs/`, from `tools/build_docs.py`) in headless Chromium, served over http.

Opens the index and every page the site was built from (`build/docs/manifest.json`, written by the
build), offline (requests leaving the local server are refused), and checks: the page exists and
carries its notebook's title, shows no error text, loads no broken image, typesets its formulas
(KaTeX served by the site) and raises no script error; the sidebar is grouped by area, with the Results page on top
and the walkthrough first under Tutorials; the Results page shows its sections; the search index exists and
the search box finds pages; a plot from a notebook is visible. Skipped, with the reason, when the
site was not built (`tools/test.sh` builds it before running pytest).
"""
import functools, json, re, shutil, threading
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / '_docs'
MANIFEST = ROOT / 'build' / 'docs' / 'manifest.json'
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--no-first-run']
ERROR_RE = re.compile(r'Traceback \(most recent call last\)|\b(?:NameError|ModuleNotFoundError|ImportError|AttributeError|'
                      r'SyntaxError|KeyError|TypeError|IndexError|AssertionError|RuntimeError|ValueError)\b:')

if not (DOCS / 'index.html').exists() or not MANIFEST.exists():
    pytest.skip('docs site not built: run `.venv/bin/python tools/build_docs.py` (tools/test.sh does)', allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f'no Chromium at {CHROMIUM}: `apt-get install chromium` (tools/setup.sh does)', allow_module_level=True)
playwright = pytest.importorskip('playwright.sync_api', reason='playwright not installed: pip install -e .[dev]')

PAGES = json.loads(MANIFEST.read_text())['pages']
IDS = [p['page'] for p in PAGES]


def _expected_sections() -> list[str]:
    "Section titles of the sidebar the site was built with"
    import sys
    sys.path.insert(0, str(ROOT / 'tools'))
    from sidebar import sidebar_yml
    stage = ROOT / 'build' / 'docs' / 'nbs'
    return re.findall(r'- section: (.+)', sidebar_yml(stage if stage.exists() else ROOT / 'nbs'))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture(scope='module')
def base_url():
    srv = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(DOCS)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown(); srv.server_close()


@pytest.fixture(scope='module')
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def open_page(browser, base_url):
    "Open a site page offline (outside requests, e.g. web fonts, are refused); record script errors"
    ctx = browser.new_context()
    def _open(rel):
        page = ctx.new_page()
        page.errors = []
        page.on('pageerror', lambda e: page.errors.append(str(e)))
        page.route('**/*', lambda r: r.continue_() if r.request.url.startswith(base_url) else r.abort())
        resp = page.goto(base_url + rel, wait_until='load')
        assert resp is not None and resp.status == 200, f'{rel}: HTTP {resp and resp.status}'
        return page
    yield _open
    ctx.close()


def test_manifest_pages_built():
    "Every notebook the site was built from has a page, and the site has no page that is not in the list"
    missing = [p['page'] for p in PAGES if not (DOCS / p['page']).exists()]
    assert not missing, f'pages missing from {DOCS}: {missing}'
    html = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob('*.html') if 'site_libs' not in p.parts}
    assert html >= set(IDS) and 'index.html' in html


@pytest.mark.parametrize('info', PAGES, ids=IDS)
def test_page(open_page, info):
    "A page shows its title, no error text, no broken image and no script error"
    page = open_page(info['page'])
    want = info['title'].replace('`', '')  # inline code in a title renders without its backticks
    h1 = page.locator('h1').first.inner_text().strip()
    assert h1 == want, f"{info['page']}: heading {h1!r}, notebook title {info['title']!r}"
    assert want in page.title().replace('`', '')
    body = page.locator('main').first.inner_text()
    m = ERROR_RE.search(body)
    assert m is None, f"{info['page']}: error text {body[max(0, m.start() - 200):m.end() + 200]!r}"
    assert len(body) > 200, f"{info['page']}: almost empty ({len(body)} characters)"
    broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")
    assert not broken, f"{info['page']}: broken images {broken}"
    if info['image_outputs']:
        n_img = page.evaluate("Array.from(document.querySelectorAll('main img')).filter(i => i.naturalWidth > 0).length")
        assert n_img >= 1, f"{info['page']}: the executed notebook has {info['image_outputs']} plot(s), the page shows none"
    html = (DOCS / info['page']).read_text(encoding='utf-8')
    if 'katex.min.js' in html and 'cdn.jsdelivr.net/npm/katex' not in html:  # formulas, KaTeX served by the site
        page.locator('main .katex').first.wait_for(state='attached', timeout=10_000)
        bad = page.locator('main .katex-error').all_inner_texts()
        assert not bad, f"{info['page']}: formulas KaTeX cannot typeset: {bad[:5]}"
    assert not page.errors, f"{info['page']}: script errors {page.errors}"


def test_sidebar_grouped(open_page):
    "The sidebar shows the area sections, and links every page"
    page = open_page('index.html')
    side = page.locator('#quarto-sidebar')
    text = side.inner_text()
    sections = _expected_sections()
    assert sections, 'no sections in the generated sidebar'
    for s in sections: assert s in text, f'sidebar lacks section {s!r}: {text!r}'
    hrefs = set(page.evaluate("Array.from(document.querySelectorAll('#quarto-sidebar a[href]')).map(a => a.getAttribute('href'))"))
    hrefs = {re.sub(r'^(\./|/)', '', h) for h in hrefs}
    missing = [p['page'] for p in PAGES if p['page'] != 'index.html' and p['page'] not in hrefs]
    assert not missing, f'pages not linked from the sidebar: {missing}'


def test_sidebar_results_and_walkthrough(open_page):
    "The sidebar links the Results page above the sections, and lists the walkthrough first under Tutorials"
    if not {'results.html', 'tutorials/01_walkthrough.html'} <= set(IDS): pytest.skip('a partial site (--only)')
    page = open_page('index.html')
    links = page.evaluate("Array.from(document.querySelectorAll('#quarto-sidebar a[href]'))"
                          ".map(a => [a.getAttribute('href'), a.innerText.trim()])")
    hrefs = [re.sub(r'^(\./|/)', '', h) for h, _ in links]
    assert 'results.html' in hrefs, f'no Results page in the sidebar: {hrefs}'
    assert links[hrefs.index('results.html')][1] == 'Results'
    tutorials = [h for h in hrefs if h.startswith('tutorials/')]
    assert tutorials and tutorials[0] == 'tutorials/01_walkthrough.html', tutorials
    text = page.locator('#quarto-sidebar').inner_text()
    assert text.index('Results') < text.index('Tutorials') < text.index('Walkthrough')


def test_results_page(open_page):
    "The Results page shows the table, the goals with their verdicts, the decision log and the commands"
    if 'results.html' not in IDS: pytest.skip('a partial site (--only) without the Results page')
    page = open_page('results.html')
    body = page.locator('main').first.inner_text()
    for heading in ('The table', 'The goals', 'The decision log', 'Reproduce'):
        assert heading in body, f'results.html lacks the section {heading!r}'
    assert 'Uni-Code' in body and ('missed' in body or 'met at all' in body) and 'python benchmarks/results.py' in body
    n_log = len((ROOT / 'benchmarks' / 'decisions.jsonl').read_text().splitlines())
    rows = page.locator('main table tbody tr').count()
    assert rows >= n_log, f'results.html shows {rows} table rows, the decision log has {n_log} lines'


def test_search(open_page, base_url):
    "search.json indexes every page, and typing in the search box lists matching pages"
    idx = json.loads((DOCS / 'search.json').read_text())
    assert idx and all({'href', 'title', 'text'} <= set(e) for e in idx)
    indexed = {e['href'].split('#')[0] for e in idx}
    missing = [p['page'] for p in PAGES if p['page'] not in indexed]
    assert not missing, f'pages missing from search.json: {missing}'
    target = next((p for p in PAGES if p['page'] != 'index.html'), PAGES[0])
    word = max(re.findall(r'[A-Za-z]{4,}', target['title']) or [target['title']], key=len)
    page = open_page('index.html')
    page.locator('#quarto-search input').first.fill(word)
    res = page.locator('#quarto-search a.search-result, #quarto-search .aa-Item')  # smalldocs, Quarto
    res.first.wait_for(state='visible', timeout=10_000)
    texts = res.all_inner_texts()
    assert any(word.lower() in t.lower() for t in texts), f'search for {word!r} listed {texts}'
    hrefs = [h for h in res.evaluate_all("els => els.map(e => (e.getAttribute('href') || ''))")]
    assert any(target['page'] in h for h in hrefs), f"search for {word!r} did not list {target['page']}: {hrefs}"


def test_plot_visible(open_page):
    "A plot saved by a notebook's execution shows in its page as a loaded, visible image"
    with_plots = [p for p in PAGES if p['image_outputs']]
    assert with_plots, 'no notebook produced a plot: the docs build did not execute them?'
    synth = next((p for p in with_plots if 'synth' in p['notebook']), with_plots[0])
    page = open_page(synth['page'])
    img = page.locator('main img').first
    img.scroll_into_view_if_needed()
    assert img.is_visible()
    w, h, shown = page.evaluate("(() => { const i = document.querySelector('main img'); const r = i.getBoundingClientRect();"
                                " return [i.naturalWidth, i.naturalHeight, r.width]; })()")
    assert w > 100 and h > 50 and shown > 100, (w, h, shown)
