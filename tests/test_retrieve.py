"`cmrl retrieve` on a real `cmrl train` checkpoint: text and file queries, code retrieval, and every refusal (issue 12 items 8, 9)."
import contextlib, io, json, warnings
from pathlib import Path
import numpy as np, pytest, torch


from cmrl.testing import invoke as run


@pytest.fixture(scope='module')
def synth_ckpt(tmp_path_factory):
    from cmrl.train import train
    d = tmp_path_factory.mktemp('synth') / 'run'
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        train(data='synth', steps=10, epochs=1, n_train=32, n_valid=16, bs=16, out=str(d), quiet=True)
    return d


def test_text_query_finds_its_own_caption(synth_ckpt):
    from cmrl.retrieve import retrieve_cli
    from cmrl.data.loaders import get_source
    from cmrl.checkpoint import read_checkpoint
    s = dict(read_checkpoint(synth_ckpt)['config']['source']); name = s.pop('name')
    src = get_source(name, **s)
    item = src.dataset('valid')[5]
    cap = item['extra']['caption']
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', cap, '--to', 'text,audio', '--k', '5', '--split', 'valid'])
    assert rc == 0, err
    r = json.loads(out)
    top = r['results']['text']
    assert item['id'] in [h['id'] for h in top if h['score'] > 0.9999] and top[0]['score'] == pytest.approx(1., abs=1e-4)
    assert [h['rank'] for h in r['results']['audio']] == [1, 2, 3, 4, 5] and r['split'] == 'valid'
    assert 'query (text)' in err  # the table for people: standard error


def test_every_item_is_the_default_gallery(synth_ckpt):
    from cmrl.retrieve import retrieve_cli
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'a red circle', '--to', 'video', '--k', '100', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['split'] == 'all' and len(r['results']['video']) == 48  # 32 train + 16 valid items


def test_image_file_query(synth_ckpt, tmp_path):
    from PIL import Image
    from cmrl.retrieve import retrieve_cli
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / 'q.png')
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', str(tmp_path / 'q.png'), '--k', '3', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['modality'] == 'video' and set(r['results']) == {'audio', 'text'} and len(r['results']['text']) == 3


def test_code_retrieval(synth_ckpt):
    from cmrl.retrieve import retrieve_cli
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'a red circle', '--codes', '--to', 'text,video', '--k', '4', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['by'] == 'codes' and 1 <= len(r['results']['text']) <= 4 and len(r['results']['video']) <= 4


def test_code_vector_retrieval(synth_ckpt):
    "--code-vectors ranks every item by the cosine of the codes' vectors (the shared and residual codes), never empty"
    from cmrl.retrieve import retrieve_cli
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'a red circle', '--code-vectors', '--to', 'text,video', '--k', '4', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['by'] == 'code vectors' and len(r['results']['text']) == 4 and len(r['results']['video']) == 4
    sc = [h['score'] for h in r['results']['video']]
    assert sc == sorted(sc, reverse=True) and all(-1.0001 <= x <= 1.0001 for x in sc)
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'a red circle', '--codes', '--code-vectors'])
    assert rc != 0 and 'choose one' in err


@pytest.mark.parametrize('argv, msg', [
    (['--query', ''], '--query is empty'),
    (['--query', '   '], '--query is empty'),
    (['--query', 'frog.ogg'], 'no such file frog.ogg (to search by text'),
    (['--query', 'sounds/frog.ogg'], 'no such file sounds/frog.ogg'),
    (['--query', 'a frog', '--k', '0'], '--k 0'),
    (['--query', 'a frog', '--bs', '0'], '--bs 0'),
    (['--query', 'a frog', '--device', 'gpu'], "--device 'gpu'"),
    (['--query', 'zebra xylophone'], 'vocabulary'),
    (['--query', 'a frog', '--to', 'speech'], 'not usable'),
])
def test_refusals(synth_ckpt, argv, msg):
    from cmrl.retrieve import retrieve_cli
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), *argv])
    assert rc == 2 and msg in err and out == '' and err.startswith('cmrl retrieve: '), err


def test_missing_file_is_refused_before_loading_anything(tmp_path):
    "No checkpoint needed to refuse a query: the query is checked first"
    from cmrl.retrieve import retrieve_cli
    rc, _, err = run(retrieve_cli, ['--ckpt', str(tmp_path / 'nothing'), '--query', 'frog.ogg'])
    assert rc == 2 and 'no such file frog.ogg' in err


@pytest.mark.parametrize('make, msg', [
    (lambda p: p.write_bytes(b''), 'is empty (0 bytes)'),
    (lambda p: p.write_bytes(b'PK\x03\x04 truncated zip'), 'truncated or corrupt'),
    (lambda p: torch.save([1, 2, 3], p), 'is not a cmrl checkpoint'),
])
def test_bad_checkpoints_give_the_checkpoint_error(tmp_path, make, msg):
    from cmrl.retrieve import retrieve_cli
    p = tmp_path / 'checkpoint.pt'; make(p)
    rc, _, err = run(retrieve_cli, ['--ckpt', str(tmp_path), '--query', 'a red circle'])
    assert rc == 2 and msg in err and 'Traceback' not in err


def test_truncated_real_checkpoint(synth_ckpt, tmp_path):
    from cmrl.retrieve import retrieve_cli
    b = (synth_ckpt / 'checkpoint.pt').read_bytes()
    (tmp_path / 'checkpoint.pt').write_bytes(b[:len(b) // 2])
    rc, _, err = run(retrieve_cli, ['--ckpt', str(tmp_path), '--query', 'a red circle'])
    assert rc == 2 and 'truncated or corrupt' in err


def test_dispatcher_runs_retrieve(synth_ckpt):
    from cmrl.cli import main
    rc, out, err = run(main, ['retrieve', '--ckpt', str(synth_ckpt), '--query', 'a red circle', '--k', '2', '--json'])
    assert rc == 0, err
    assert json.loads(out)['by'] == 'embedding'


def test_flags_superset_of_the_old_cli():
    from cmrl.command import command_parser as cli_parser
    from cmrl.retrieve import retrieve_cmd
    flags = {s for a in cli_parser(retrieve_cmd, 'cmrl retrieve')._actions for s in a.option_strings}
    old = {'--ckpt', '--query', '--gallery', '--k', '--split', '--to', '--query-modality', '--codes', '--n-test', '--langs', '--device', '--json'}
    assert old <= flags
