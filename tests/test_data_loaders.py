"get_source / source_dls / source_dl / `cmrl data`: resolution, batches, JSON summary, exit codes."
import contextlib, io, json, os
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from cmrl.core import IMAGE, VIDEO, AUDIO, SPEECH, TEXT, ModalityBatch
from cmrl.data.source import Source
from cmrl.data.synth import SynthSource
from cmrl.data.loaders import *
from cmrl.data.tuxpaint import TuxPaint, TUXPAINT_ROOT, fake_stamps
from cmrl.data.manifest import ManifestSource

torch.set_num_threads(1)


@pytest.fixture
def stamps(tmp_path): return fake_stamps(tmp_path / 'stamps', n_cats=2, per_cat=4)


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): rc = data_cli(argv)
    return rc, out.getvalue(), err.getvalue()


def test_get_source_resolution(stamps, tmp_path):
    assert isinstance(get_source('synth', n=8), SynthSource)
    tp = get_source('tuxpaint', root=stamps, langs=['fr'])
    assert isinstance(tp, TuxPaint) and get_source(tp) is tp
    with pytest.raises(TypeError): get_source(tp, langs=['es'])
    (tmp_path / 'm').mkdir(); (tmp_path / 'm' / 'a.jsonl').write_text('{"id": "a", "text": "x"}\n')
    assert isinstance(get_source(tmp_path / 'm' / 'a.jsonl'), ManifestSource)
    assert isinstance(get_source(str(tmp_path / 'm')), ManifestSource)
    (tmp_path / 'm' / 'b.jsonl').write_text('{"id": "b", "text": "y"}\n')
    with pytest.raises(ValueError, match='2 \\*.jsonl files'): get_source(tmp_path / 'm')
    with pytest.raises(ValueError, match="unknown data source 'imagenet'"): get_source('imagenet')


def test_synth_dls():
    dls = source_dls('synth', bs=8, n=32, n_classes=4, missing_rate=.3)
    b = ModalityBatch.of(dls.train.one_batch())
    assert isinstance(dls.source, SynthSource) and dls.vocab == dls.source.class_names
    assert set(b.x) == {VIDEO, AUDIO, TEXT} and b.x[VIDEO].shape == (8, 10, 3, 32, 32) and b.x[AUDIO].shape[-1] == 64
    assert (b.present[VIDEO] | b.present[AUDIO] | b.present[TEXT]).all()
    assert dls.source.text_vocab_size > int(b.x[TEXT].max())
    s = dls.source.summary()
    assert s['splits']['train']['items'] == 32 and sum(s['categories'].values()) == 32 + 8 + 8


def test_tuxpaint_dls_batches(stamps, tmp_path):
    dls = source_dls('tuxpaint', root=stamps, langs=['fr', 'es'], bs=4, cache=tmp_path / 'c', fracs=(('train', .6), ('valid', .4)))
    seen = 0
    for (b,) in dls.train:
        b = ModalityBatch.of(b)
        assert set(b.x) == {IMAGE, AUDIO, SPEECH, TEXT}  # every modality in every batch, absent ones masked
        assert b.present[AUDIO].sum() <= b.bs and b.present[IMAGE].all() and b.present[TEXT].all()
        assert b.x[TEXT].dtype == torch.long and (b.x[TEXT][~b.mask[TEXT]] == 0).all()  # pad id 0
        assert b.y.min() >= 0 and b.y.max() < 2
        assert set(b.extra['lang']) <= {'fr', 'es'} and len(b.extra['group']) == b.bs
        seen += b.bs
    assert seen == (len(dls.train_ds) // 4) * 4
    dl = source_dl(dls.source, 'valid', bs=64, cache=tmp_path / 'c')
    (b,) = list(dl)
    assert ModalityBatch.of(b).bs == len(dls.valid_ds)


def test_max_len(stamps, tmp_path):
    dls = source_dls('tuxpaint', root=stamps, langs=['fr'], bs=4, cache=tmp_path / 'c', max_len={SPEECH: 7})
    b = ModalityBatch.of(dls.train.one_batch())
    assert b.x[SPEECH].shape[1] == 7


def test_chars_tokenizer_from_train_only(stamps, tmp_path):
    src = TuxPaint(stamps, langs=['fr'], kind='chars')
    train_chars = {c for r in src.split('train') for c in r[TEXT]}
    assert set(src.tokenizer.chars) == train_chars
    b = ModalityBatch.of(source_dls(src, bs=4, cache=tmp_path / 'c').valid.one_batch())
    assert int(b.x[TEXT].max()) < src.text_vocab_size


def test_cli_tuxpaint_summary(stamps, tmp_path):
    (stamps / 'cat0' / 'sub' / 'thingal.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    rc, out, err = run_cli(['tuxpaint', '--root', str(stamps), '--langs', 'fr,es', '--check', '--cache', str(tmp_path / 'c'),
                            '--out', str(tmp_path / 's.json')])
    assert rc == 0, err
    s = json.loads(out)
    assert s == json.loads((tmp_path / 's.json').read_text())
    assert s['stamps']['total'] == 10 and s['stamps']['with_image'] == 9 and s['stamps']['with_sound_effect'] == 2
    assert s['modalities'] == {IMAGE: 20, AUDIO: 4, SPEECH: 20, TEXT: 20}
    assert set(s['languages']) == {'fr', 'es'} and s['languages']['fr'] == {'items': 10, 'text': 10, 'speech': 10}
    assert sum(v['items'] for v in s['splits'].values()) == 20 and s['categories'] == {'cat0': 10, 'cat1': 10}
    assert any('thingal.png' in f for fs in s['skipped']['files'].values() for f in fs)
    assert any(k.startswith('cannot decode: unreadable image') for k in s['skipped']['by_reason'])


def test_cli_synth_and_manifest(tmp_path):
    rc, out, _ = run_cli(['synth', '--n', '16'])
    assert rc == 0 and json.loads(out)['splits']['train']['items'] == 16
    (tmp_path / 'm.jsonl').write_text('{"id": "a", "text": "x", "lang": "fr"}\n{"id": "b", "text": "y", "lang": "es", "image": "nope.png"}\n')
    rc, out, _ = run_cli([str(tmp_path / 'm.jsonl')])
    s = json.loads(out)
    assert rc == 0 and s['skipped']['count'] == 1 and s['items'] == 2


@pytest.mark.parametrize('argv,msg', [(['nowhere.jsonl'], 'no such file: nowhere.jsonl'), (['nowhere'], 'unknown data source'),
                                      (['tuxpaint', '--root', '/nonexistent'], 'no Tux Paint stamps'),
                                      (['synth', '--langs', 'fr'], 'English only')])
def test_cli_errors(argv, msg):
    rc, out, err = run_cli(argv)
    assert rc == 2 and msg in err and out == ''


def test_cli_bad_manifest_line(tmp_path):
    (tmp_path / 'm.jsonl').write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": 3}\n')
    rc, _, err = run_cli([str(tmp_path / 'm.jsonl')])
    assert rc == 2 and "m.jsonl:2: field 'text'" in err


def test_cmrl_dispatcher(stamps):
    from cmrl.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out): rc = main(['data', 'tuxpaint', '--root', str(stamps), '--langs', 'es'])
    assert rc == 0 and json.loads(out.getvalue())['languages_chosen'] == ['es']


@pytest.mark.skipif(not Path(os.environ.get('CMRL_TUXPAINT') or TUXPAINT_ROOT).is_dir(), reason='Tux Paint stamps not installed')
def test_cli_real_tuxpaint_thresholds():
    rc, out, err = run_cli(['tuxpaint', '--max-files', '3'])
    s = json.loads(out)
    assert rc == 0
    assert s['stamps']['with_image_and_text'] >= 940 and s['stamps']['with_speech_any_language'] >= 900 and s['stamps']['with_sound_effect'] >= 130
    assert s['skipped']['count'] > 0 and all(isinstance(v, int) for v in s['skipped']['by_reason'].values())


def test_cli_new_flags(tmp_path):
    rc, out, err = run_cli(['synth', '--n-train', '8', '--n-valid', '4', '--modalities', 'video,audio', '--seed', '3'])
    s = json.loads(out)
    assert rc == 0 and s['splits']['train']['items'] == 8 and s['splits']['valid']['items'] == 4 and set(s['modalities']) == {VIDEO, AUDIO}
    (tmp_path / 'm.jsonl').write_text(''.join(json.dumps({'id': f"x{i}", 'text': 't', 'lang': 'fr' if i % 2 else None}) + '\n' for i in range(10)))
    rc, out, _ = run_cli([str(tmp_path / 'm.jsonl'), '--valid-pct', '0.5'])
    s = json.loads(out)
    assert rc == 0 and {k: v['items'] for k, v in s['splits'].items()} == {'train': 5, 'valid': 5}
    rc, out, _ = run_cli([str(tmp_path / 'm.jsonl'), '--langs', 'fr'])
    assert rc == 0 and json.loads(out)['dropped'] == {'languages': {'(no lang)': 5}}
    rc, _, err = run_cli(['synth', '--modalities', 'imgae'])
    assert rc == 2 and "unknown modality 'imgae'; this source has video, audio, text" in err


def test_synth_source_matches_generator():
    "The one DataLoaders builder gives the generator's own items for synth (what `cmrl train --data synth` trains on)"
    from cmrl.data.synth import SynthEvents
    dls = source_dls('synth', bs=4, n_train=8, n_valid=4, seed=5, shuffle_train=False)
    b = ModalityBatch.of(dls.valid.one_batch())
    ref = SynthEvents(4, seed=6)
    assert b.ids == [ref[i]['id'] for i in range(4)] and torch.equal(b.x[AUDIO][1, :len(ref[1][AUDIO])], ref[1][AUDIO])
