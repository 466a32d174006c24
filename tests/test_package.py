"""The package as users get it: a built wheel holds every exported module and the `cmrl` console script,
installs and imports on its own, and the installed `cmrl --help` works."""
import email, os, shutil, subprocess, sys, tomllib, zipfile
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    "A wheel built from a copy of the sources (an in-tree build would leave `build/lib` behind)"
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(ROOT / 'cmrl', src / 'cmrl', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    for f in ('pyproject.toml', 'README.md', 'LICENSE'):
        if (ROOT / f).exists(): shutil.copy2(ROOT / f, src / f)
    out = tmp / 'dist'
    r = subprocess.run([PY, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    whls = list(out.glob('cmrl-*.whl'))
    assert len(whls) == 1, whls
    return whls[0]


def test_wheel_contents(wheel):
    "Every module in cmrl/ is in the wheel, with the console script, the nbdev index and the pinned deps"
    z = zipfile.ZipFile(wheel)
    names = set(z.namelist())
    assert {'cmrl/__init__.py', 'cmrl/core.py', 'cmrl/_modidx.py', 'cmrl/cli.py'} <= names
    mods = {p.relative_to(ROOT).as_posix() for p in (ROOT / 'cmrl').rglob('*.py') if '__pycache__' not in p.parts}
    assert mods <= names, f'modules missing from the wheel: {sorted(mods - names)}'
    assert not [n for n in names if n.startswith(('nbs/', 'tests/', 'tools/'))]
    info = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
    ep = z.read(info).decode()
    assert '[console_scripts]' in ep and 'cmrl = cmrl.cli:main' in ep, ep
    assert '[nbdev]' in ep and 'cmrl = cmrl._modidx:d' in ep, ep
    meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith('.dist-info/METADATA'))))
    from packaging.requirements import Requirement
    reqs = {(r.name, r.specifier) for r in map(Requirement, meta.get_all('Requires-Dist')) if r.marker is None}
    pins = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    for pin in map(Requirement, pins): assert (pin.name, pin.specifier) in reqs, f'{pin} missing from the wheel metadata: {reqs}'
    exact = {n: str(sp) for n, sp in reqs if str(sp).startswith('==')}
    assert {'torch', 'torchvision', 'torchaudio'} <= exact.keys(), f'torch, torchvision, torchaudio must be pinned exactly: {reqs}'
    import cmrl
    assert meta['Version'] == cmrl.__version__


def test_wheel_installs_and_imports(wheel, tmp_path):
    "The wheel installed into a bare folder imports from there (not from the checkout) and its entry point runs"
    site = tmp_path / 'site'
    r = subprocess.run([PY, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', '--target', str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {**os.environ, 'PYTHONPATH': str(site)}
    code = ('import cmrl, cmrl.core, cmrl.cli; print(cmrl.__file__); '
            'from cmrl.core import collate_items, ModalityBatch; raise SystemExit(cmrl.cli.main(["--help"]))')
    r = subprocess.run([PY, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert Path(r.stdout.splitlines()[0]).is_relative_to(site), r.stdout
    assert 'usage: cmrl' in r.stdout


def test_console_script_help():
    "The installed `cmrl` command prints its usage with the sub-commands"
    exe = Path(PY).with_name('cmrl')
    assert exe.exists(), f'{exe} missing: install the project with `pip install -e .` (tools/setup.sh does)'
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith('usage: cmrl')
    for sub in ('data', 'train', 'eval', 'retrieve'): assert sub in r.stdout


def test_unknown_command_fails():
    "A mistyped sub-command exits 2 with the list of commands"
    r = subprocess.run([str(Path(PY).with_name('cmrl')), 'nonsense'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'unknown command' in r.stderr
