"""Issue 28, the commands' side of the user's contract: no command replaces another's output (1), a weight of the wrong
shape and an `--out` that is a file are one line (8), an empty `--codes` search says why (12), checkpoint and data paths
that are not what they seem are named for what they are (14), a query file that is no picture or sound and a non-finite
`--alpha` are refused (15), standard output is exactly one JSON document for every command (16), and an `--out` that
cannot be written is refused before any work (17). Each test failed on the code before the fix."""
import contextlib, io, json, os, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from cmrl.testing import invoke, tiny_ckpt
from cmrl.data.loaders import data_cli
from cmrl.eval.report import eval_cli
from cmrl.retrieve import retrieve_cli
from cmrl.generate import generate_cli
from cmrl.train import train_cli

TINY = ['--epochs', '1', '--n-train', '16', '--n-valid', '8', '--bs', '8', '--steps', '2', '--d', '16', '--n-layers', '1',
        '--n-codes', '8', '--quiet']


def one_line(rc, out, err, *msgs):
    "A refusal: status 2, nothing on standard output, one line on standard error holding every `msgs`"
    assert rc == 2 and out == '' and err.count('\n') == 1 and 'Traceback' not in err, (rc, out, err)
    for m in msgs: assert m in err, (m, err)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "Uni-Code on 32 synthetic items, 10 steps per item, one epoch: a run folder as `cmrl train` writes it"
    from cmrl.train import train
    d = tmp_path_factory.mktemp('contract') / 'run'
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        train(data='synth', steps=10, epochs=1, n_train=32, n_valid=16, bs=16, d=16, n_layers=1, n_codes=16, out=str(d), quiet=True)
    return d


@pytest.fixture(scope='module')
def gen(tmp_path_factory):
    "A checkpoint with a text decoder (one epoch) and a sound query from the synthetic events"
    import soundfile as sf
    from cmrl.core import seeded_generator
    from cmrl.data.synth import SynthSource
    d = tmp_path_factory.mktemp('gen')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tiny_ckpt(d / 'run', epochs=1)
    src = SynthSource(64, n_valid=16, n_test=16, seed=0)
    it = src.dataset('test')[0]
    sf.write(d / 'query.wav', src.sets['test'].waveform(it['label'], it['extra']['span'].tolist(), seeded_generator(1, 0, 1)).numpy(), 16000)
    return d / 'run', d / 'query.wav'


# --- 1: nothing a command writes replaces another command's output ----------------------------------------------------------

def test_eval_out_run_folder_keeps_the_training_metrics(run):
    before = (run / 'metrics.json').read_bytes()
    one_line(*invoke(eval_cli, ['--ckpt', str(run), '--out', str(run)]), 'holds the output of `cmrl train`', 'another --out')
    assert (run / 'metrics.json').read_bytes() == before
    for _ in range(2):  # the default: a folder of its own, which a second evaluation takes again
        rc, out, err = invoke(eval_cli, ['--ckpt', str(run), '--task', 'codes'])
        assert rc == 0, err
    assert json.loads((run / 'eval-codes' / 'metrics.json').read_text())['task'] == 'codes'
    assert (run / 'metrics.json').read_bytes() == before


def test_no_command_writes_over_another_commands_output(run, gen, tmp_path):
    ev = tmp_path / 'ev'
    rc, out, err = invoke(eval_cli, ['--ckpt', str(run), '--task', 'codes', '--out', str(ev)])
    assert rc == 0, err
    kept = {f.name: f.read_bytes() for f in ev.iterdir()}
    one_line(*invoke(train_cli, ['--data', 'synth', *TINY, '--out', str(ev), '--overwrite']), 'holds the output of `cmrl eval`')
    assert {f.name: f.read_bytes() for f in ev.iterdir()} == kept  # --overwrite is for a training run, not for an evaluation
    before = (run / 'metrics.json').read_bytes()
    one_line(*invoke(generate_cli, ['--ckpt', str(gen[0]), '--query', str(gen[1]), '--to', 'image', '--out', str(run)]),
             'holds the output of `cmrl train`')
    one_line(*invoke(data_cli, ['synth', '--n-train', '8', '--out', str(run / 'metrics.json')]), 'holds the output of `cmrl train`')
    assert (run / 'metrics.json').read_bytes() == before


# --- 8: a weight of the wrong shape; --out FILE -------------------------------------------------------------------------------

def test_weight_of_the_wrong_shape_is_one_line(run, tmp_path):
    ck = torch.load(run / 'checkpoint.pt', weights_only=True)
    k = next(k for k, v in ck['model'].items() if v.ndim == 2)
    ck['model'][k] = torch.zeros(ck['model'][k].shape[0] + 1, ck['model'][k].shape[1])
    ck['best'] = None
    torch.save(ck, tmp_path / 'checkpoint.pt')
    for cli, argv in ((eval_cli, ['--out', '-']), (retrieve_cli, ['--query', 'a red circle'])):
        one_line(*invoke(cli, ['--ckpt', str(tmp_path), *argv]), 'the weights do not fit', k, 'damaged or was edited')


def test_eval_out_an_existing_file(run, tmp_path):
    f = tmp_path / 'notes.txt'; f.write_text('mine')
    one_line(*invoke(eval_cli, ['--ckpt', str(run), '--out', str(f)]), 'that is a file; give a folder')
    assert f.read_text() == 'mine'


# --- 12: an empty --codes search says why -------------------------------------------------------------------------------------

def test_codes_search_with_nothing_shared_says_why(run, monkeypatch):
    import numpy as np
    from cmrl.eval.index import CodeIndex
    def nothing_shared(self, codes, k=10):
        return np.full((len(codes), k), -np.inf, np.float32), np.full((len(codes), k), -1, np.int64)
    monkeypatch.setattr(CodeIndex, 'search', nothing_shared)
    rc, out, err = invoke(retrieve_cli, ['--ckpt', str(run), '--query', 'a red circle', '--codes', '--to', 'text'])
    assert rc == 0 and json.loads(out)['results'] == {'text': []}, err
    assert 'no text item of the gallery shares a code with the query' in err and 'leave out --codes' in err
    assert 'shares a code' in json.loads(out)['empty']['text']


# --- 14: checkpoints and data paths that are not what they seem ---------------------------------------------------------------

def test_checkpoint_messages_say_what_the_file_is(run, gen, tmp_path):
    ck = torch.load(run / 'checkpoint.pt', weights_only=True)
    (tmp_path / 'v').mkdir(); torch.save({**ck, 'version': '2'}, tmp_path / 'v' / 'checkpoint.pt')
    (tmp_path / 'random.pt').write_bytes(bytes(range(1, 256)) * 40)
    (tmp_path / 'folder').mkdir()
    cases = [(tmp_path / 'v', "its format version is '2' (a str), not a whole number"),
             (tmp_path / 'random.pt', 'is not a cmrl checkpoint: it is not a file torch.save wrote'),
             (tmp_path / 'folder', 'it is a folder with no checkpoint.pt in it'),
             (Path('/dev/zero'), 'it is not a regular file')]
    for p, msg in cases:
        for cli, argv in ((eval_cli, ['--out', '-']), (retrieve_cli, ['--query', 'a frog']), (generate_cli, ['--query', str(gen[1])])):
            rc, out, err = invoke(cli, ['--ckpt', str(p), *argv])
            one_line(rc, out, err, msg)
            assert 'newer cmrl' not in err and 'Python objects' not in err


def test_a_missing_manifest_is_no_such_file(run, tmp_path):
    for cli, argv in ((data_cli, ['/nope/m.jsonl']), (eval_cli, ['--ckpt', str(run), '--data', '/nope/m.jsonl', '--out', '-']),
                      (retrieve_cli, ['--ckpt', str(run), '--gallery', '/nope/m.jsonl', '--query', 'a frog'])):
        one_line(*invoke(cli, argv), 'no such file: /nope/m.jsonl')


# --- 15: a query file that is no picture or sound; --alpha nan ----------------------------------------------------------------

def test_a_query_file_that_is_no_picture_or_sound_is_refused(run, gen, tmp_path):
    (tmp_path / 'notes.txt').write_text('a red circle')
    for cli, ck in ((retrieve_cli, run), (generate_cli, gen[0])):
        one_line(*invoke(cli, ['--ckpt', str(ck), '--query', str(tmp_path / 'notes.txt')]), 'neither a picture', 'pass them')


@pytest.mark.parametrize('flag,value', [('--alpha', 'nan'), ('--alpha', 'inf'), ('--alpha', '-inf'), ('--temperature', 'nan')])
def test_non_finite_generation_settings_are_refused(gen, flag, value):
    one_line(*invoke(generate_cli, ['--ckpt', str(gen[0]), '--query', str(gen[1]), f'{flag}={value}']), f'{flag} {value}: give a finite')


# --- 16: standard output is exactly one JSON document ---------------------------------------------------------------------------

def test_every_command_prints_one_json_document(run, gen, tmp_path):
    cases = [(data_cli, ['synth', '--n-train', '8']),
             (train_cli, ['--data', 'synth', *TINY, '--out', str(tmp_path / 'train')]),
             (train_cli, ['--data', 'synth', *TINY[:-1], '--progress', '--out', str(tmp_path / 'bars')]),  # bars: stderr
             (eval_cli, ['--ckpt', str(run), '--out', '-']),
             (eval_cli, ['--ckpt', str(run), '--task', 'codes', '--out', str(tmp_path / 'ev')]),
             (retrieve_cli, ['--ckpt', str(run), '--query', 'a red circle', '--k', '2']),
             (retrieve_cli, ['--ckpt', str(run), '--query', 'a red circle', '--k', '2', '--json']),  # the old flag stays accepted
             (generate_cli, ['--ckpt', str(gen[0]), '--query', str(gen[1]), '--k', '2'])]
    for cli, argv in cases:
        rc, out, err = invoke(cli, argv)
        assert rc == 0, (argv, err)
        assert isinstance(json.loads(out), dict) and out.count('\n') == 1, (argv, out[:300])  # the whole of stdout parses
    rc, out, err = invoke(eval_cli, ['--ckpt', str(run), '--out', '-'])
    assert err.strip().splitlines()[-1].startswith('scored ')  # the line for people: standard error


def test_cmrl_eval_stdout_pipes_into_a_json_reader(run):
    p = subprocess.run([sys.executable, '-m', 'cmrl.cli', 'eval', '--ckpt', str(run), '--out', '-', '--device', 'cpu'],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)['task'] == 'retrieval' and 'scored ' in p.stderr


# --- 17: an --out that cannot be written: refused before any work --------------------------------------------------------------

def test_unwritable_out_is_refused_before_any_work(run, gen, monkeypatch):
    import cmrl.train, cmrl.eval.report, cmrl.generate, cmrl.data.loaders
    def work(*a, **k): raise AssertionError('the command started working')
    monkeypatch.setattr(cmrl.train, 'train', work)
    monkeypatch.setattr(cmrl.eval.report, 'load_model', work)
    monkeypatch.setattr(cmrl.generate, 'load_generator', work)
    monkeypatch.setattr(cmrl.data.loaders, 'get_source', work)
    for cli, argv in ((train_cli, ['--data', 'synth', '--out', '/proc/cmrl-run']),
                      (eval_cli, ['--ckpt', str(run), '--out', '/proc/cmrl-eval']),
                      (generate_cli, ['--ckpt', str(gen[0]), '--query', str(gen[1]), '--to', 'image', '--out', '/proc/cmrl-gen']),
                      (data_cli, ['synth', '--out', '/proc/cmrl-data.json'])):
        one_line(*invoke(cli, argv), '/proc', 'cannot write')


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_folder_is_refused(run, tmp_path):
    ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o555)
    try: one_line(*invoke(eval_cli, ['--ckpt', str(run), '--out', str(ro / 'ev')]), 'cannot write')
    finally: ro.chmod(0o755)


def test_a_refusal_from_the_console_is_one_line():
    "`python -m cmrl.cli` (what the `cmrl` script runs): libraries' import-time notices do not bury the one line"
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    p = subprocess.run([sys.executable, '-m', 'cmrl.cli', 'eval', '--ckpt', '/dev/zero'], capture_output=True, text=True,
                       timeout=300, env=env)
    assert (p.returncode, p.stdout) == (2, '') and p.stderr.count('\n') == 1, p.stderr
    assert p.stderr.startswith('cmrl eval: no checkpoint at /dev/zero: it is not a regular file')
