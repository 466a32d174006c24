"""Issue 28 item 6: each checkout runs its own code. `tools/setup.sh` gives a checkout its own small `.venv` (a link to the
shared, hash-keyed dependencies and this checkout's editable install); `check_checkout` names a `.venv` that imports
another checkout's `cmrl`."""
import os, shutil, subprocess, sys
from pathlib import Path
import pytest
from cmrl.core import check_checkout

ROOT = Path(__file__).parents[1]


def test_check_checkout_names_the_other_checkout(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    for d in (a, b): (d / 'cmrl').mkdir(parents=True); (d / 'pyproject.toml').write_text('')
    assert check_checkout(a / '.venv', a / 'cmrl') is None
    why = check_checkout(a / '.venv', b / 'cmrl')
    assert str(b) in why and str(a) in why and 'tools/setup.sh' in why and '\n' not in why
    assert check_checkout(tmp_path / 'venv-0123abcd', b / 'cmrl') is None  # not a checkout's .venv (a pip install)


def _deps_venv():
    "The shared dependency venv this checkout's .venv links to (`tools/setup.sh` writes its path in .venv/.cmrl-venv)"
    f = ROOT / '.venv' / '.cmrl-venv'
    return Path(f.read_text().strip()) if f.is_file() else None


def _py(checkout: Path, code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'} | env
    r = subprocess.run([str(checkout / '.venv' / 'bin' / 'python'), '-c', code], capture_output=True, text=True, env=e, cwd='/')
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


@pytest.mark.skipif(shutil.which('git') is None or not (ROOT / '.git').exists(), reason='needs a git checkout')
def test_two_checkouts_each_run_their_own_code(tmp_path):
    deps = _deps_venv()
    if deps is None or not deps.is_dir(): pytest.skip('this checkout was not set up by tools/setup.sh (no .venv/.cmrl-venv)')
    site = Path(_py(ROOT, 'import sysconfig; print(sysconfig.get_paths()["purelib"])'))
    shared = sorted(p.name for p in Path(deps).glob('lib/python*/site-packages/*'))
    outs = []
    for n in ('a', 'b'):
        d = tmp_path / n
        subprocess.run(['git', 'clone', '-q', str(ROOT), str(d)], check=True)
        if (d / 'pyproject.toml').read_bytes() != (ROOT / 'pyproject.toml').read_bytes(): pytest.skip('uncommitted pyproject.toml')
        if n == 'a': (d / '.venv').symlink_to(deps)  # a checkout set up before each had its own .venv
        r = subprocess.run(['bash', 'tools/setup.sh', '--no-run'], cwd=d, capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
        assert r.returncode == 0, r.stderr[-3000:]
        assert (d / '.venv').is_dir() and not (d / '.venv').is_symlink()
        outs.append(r.stderr)
    a, b = tmp_path / 'a', tmp_path / 'b'
    for d in (a, b):
        assert _py(d, 'import cmrl; print(cmrl.__file__)') == str(d / 'cmrl' / '__init__.py')
        assert _py(d, 'from cmrl.core import check_checkout; print(check_checkout())') == 'None'
        assert Path(_py(d, 'import torch; print(torch.__file__)')).is_relative_to(deps)  # the dependencies are shared
        head = (d / '.venv' / 'bin' / 'pytest').read_text().splitlines()[0]
        assert head == f"#!{d / '.venv' / 'bin' / 'python'}", head  # the shared commands run this checkout's python
    why = _py(b, 'from cmrl.core import check_checkout; print(check_checkout())', PYTHONPATH=str(a))
    assert why.startswith(f"{b / '.venv'}/bin/python runs the cmrl package of {a}"), why
    assert sorted(p.name for p in Path(deps).glob('lib/python*/site-packages/*')) == shared  # nothing written there
    r = subprocess.run(['bash', 'tools/setup.sh', '--no-run'], cwd=a, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert r.returncode == 0 and '.venv is complete' in r.stderr, r.stderr  # quick when done
