"""Shared pytest set-up: `--runslow` for `@pytest.mark.slow` tests, `gpu` tests skipped without CUDA,
and torch limited to 1 thread (override with CMRL_TEST_THREADS): the tests' tensors are tiny, and one thread is
several times faster than two on a loaded 2-core machine."""
import contextlib, io, os, warnings
import pytest


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='also run tests marked slow')


def pytest_configure(config):
    # the markers are also declared in pyproject.toml; declaring them here keeps `--strict-markers` happy
    config.addinivalue_line('markers', 'slow: long tests, skipped unless --runslow')
    config.addinivalue_line('markers', 'gpu: needs a CUDA device')
    try:
        import torch
        torch.set_num_threads(int(os.environ.get('CMRL_TEST_THREADS', '1')))
    except ImportError: pass


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError: return False


def pytest_collection_modifyitems(config, items):
    runslow = config.getoption('--runslow')
    skip_slow = pytest.mark.skip(reason='slow: run with --runslow')
    skip_gpu = pytest.mark.skip(reason='gpu: no CUDA device')
    cuda = None
    for item in items:
        if 'slow' in item.keywords and not runslow: item.add_marker(skip_slow)
        if 'gpu' in item.keywords:
            if cuda is None: cuda = _has_cuda()
            if not cuda: item.add_marker(skip_gpu)


def quiet(fn, *a, **kw):
    "(result of `fn(*a, **kw)`, what it wrote on stderr), with warnings and standard output held back"
    err = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        return fn(*a, **kw), err.getvalue()
