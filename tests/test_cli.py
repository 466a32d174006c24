"The `cmrl` dispatcher: sub-commands, the main job with no arguments, `python -m cmrl.cli` (what `torchrun -m` runs)."
import subprocess, sys
import pytest
import cmrl.train
from cmrl.cli import main, COMMANDS


def test_help_lists_the_commands(capsys):
    assert main(['--help']) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ('data', 'train', 'eval', 'retrieve'))


def test_unknown_command_is_one_line(capsys):
    assert main(['trian']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown command 'trian'" in err


def test_no_arguments_runs_the_main_job(monkeypatch):
    seen = []
    monkeypatch.setattr(cmrl.train, 'train_cli', lambda argv: seen.append(argv) or 0)
    assert main([]) == 0 and seen == [[]]


def test_every_command_loads():
    import importlib
    for name, (mod, fn, _) in COMMANDS.items(): assert callable(getattr(importlib.import_module(mod), fn)), name


def test_python_m_cmrl_cli_train_help():
    r = subprocess.run([sys.executable, '-m', 'cmrl.cli', 'train', '--help'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for opt in ('--valid-pct', '--overwrite', '--resume', '--progress', '--quiet', '--no-cosine', '--dim', '--langs'): assert opt in r.stdout, opt


def test_main_refuses_another_checkouts_code(monkeypatch, capsys):
    "`cmrl` runs nothing when `check_checkout` says the .venv imports another checkout's package"
    import cmrl.core
    from cmrl.cli import main
    monkeypatch.setattr(cmrl.core, 'check_checkout', lambda: 'the .venv of A runs the cmrl package of B')
    assert main(['data', '--help']) == 2
    err = capsys.readouterr().err
    assert err.strip() == 'cmrl: the .venv of A runs the cmrl package of B'
