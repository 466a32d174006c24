"""The user's contract, data side (issue 12): languages (item 3), splits (item 4), modalities (item 5), non-finite
features (item 7), and the Tux Paint split the committed results rely on. Only `cmrl.data.loaders` and
`cmrl.data.tuxpaint.fake_stamps` are imported, names that existed before the re-cut, so each test can be run against the old
code too (where each one fails)."""
import hashlib, json, os, warnings
from pathlib import Path
import numpy as np, pytest, soundfile as sf, torch
from PIL import Image
from cmrl.data.loaders import get_source, source_dls
from cmrl.data.tuxpaint import fake_stamps

TUX = Path(os.environ.get('CMRL_TUXPAINT') or '/usr/share/tuxpaint/stamps')


def write(p: Path, rows):
    p.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows), encoding='utf-8')
    return p


def recorded(f):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); out = f()
    return out, [str(x.message) for x in w]


@pytest.fixture
def mixed(tmp_path):
    "20 text items: 8 French, 6 Russian, 6 without `lang`; labels a/b; no `split` fields"
    langs = ['fr'] * 8 + ['ru'] * 6 + [None] * 6
    rows = [{'id': f"t{i}", 'text': f"texte {i}", 'label': 'ab'[i % 2], **({'lang': l} if l else {})} for i, l in enumerate(langs)]
    return write(tmp_path / 'mixed.jsonl', rows)


# item 3: languages ---------------------------------------------------------------------------------------------------------

def test_manifest_not_filtered_by_language_by_default(mixed):
    src, msgs = recorded(lambda: get_source(mixed))
    assert len(src.split('train')) + len(src.split('valid')) == 20  # every item, in any language or none
    assert not [m for m in msgs if 'langs' in m]


def test_language_filter_reports_what_it_dropped(mixed):
    src, msgs = recorded(lambda: get_source(mixed, langs='fr'))
    assert sorted(r['lang'] for r in src.records) == ['fr'] * 8
    m = [m for m in msgs if 'dropped' in m]
    assert len(m) == 1 and 'kept 8 of 20' in m[0] and '(no lang) 6' in m[0] and 'ru 6' in m[0], msgs
    assert src.summary()['dropped'] == {'languages': {'(no lang)': 6, 'ru': 6}}


def test_tuxpaint_default_language_is_french(tmp_path):
    src, msgs = recorded(lambda: get_source('tuxpaint', root=fake_stamps(tmp_path / 's')))
    assert src.langs == ['fr'] and {r['lang'] for r in src.records} == {'fr'}
    assert any('left out 10 spoken descriptions' in m and 'es 10' in m for m in msgs), msgs  # the filter says what it dropped


# item 4: splits ------------------------------------------------------------------------------------------------------------

def test_manifest_without_split_fields_has_grouped_valid_part_and_no_test(tmp_path):
    rows = [{'id': f"x{i}", 'text': f"t{i}", 'label': 'ab'[i % 2], 'group': f"g{i // 2}"} for i in range(40)]
    src = get_source(write(tmp_path / 'm.jsonl', rows))
    assert set(src.splits) == {'train', 'valid'}
    with pytest.raises(KeyError): src.split('test')
    assert len(src.split('valid')) == 8 and len(src.split('train')) == 32  # 20% of 20 groups of 2
    part = {r['id']: s for s in src.splits for r in src.split(s)}
    assert all(part[f"x{2 * g}"] == part[f"x{2 * g + 1}"] for g in range(20))  # groups never straddle
    assert len(get_source(tmp_path / 'm.jsonl', valid_pct=.5).split('valid')) == 20


def test_manifest_split_fields_honoured(tmp_path):
    rows = [{'id': f"x{i}", 'text': f"t{i}", 'split': ['train', 'valid', 'test', 'train'][i % 4]} for i in range(12)]
    src = get_source(write(tmp_path / 'm.jsonl', rows))
    assert {s: [r['id'] for r in src.split(s)] for s in src.splits} == \
        {s: [f"x{i}" for i in range(12) if ['train', 'valid', 'test', 'train'][i % 4] == s] for s in ('train', 'valid', 'test')}


def test_all_train_manifest_gives_empty_valid_part_that_trains(tmp_path):
    rows = [{'id': f"x{i}", 'text': f"t{i}", 'split': 'train'} for i in range(6)]
    src = get_source(write(tmp_path / 'm.jsonl', rows))
    assert len(src.split('train')) == 6 and src.split('valid') == []
    dls, msgs = recorded(lambda: source_dls(src, bs=4, cache=False))
    assert len(dls.valid.dataset) == 0 and list(dls.valid) == []
    assert any('empty' in m and 'without validation' in m for m in msgs), msgs
    assert len(list(dls.train)) == 1


def test_split_all_is_every_item(tmp_path, mixed):
    src = get_source(mixed)
    assert [r['id'] for r in src.split('all')] == [f"t{i}" for i in range(20)]
    syn = get_source('synth', n_train=8, n_valid=4, n_test=2)
    assert len(syn.split('all')) == len(syn.dataset('all')) == 14


# item 5: modalities --------------------------------------------------------------------------------------------------------

def test_modalities_lists_only_what_items_have(tmp_path):
    root = fake_stamps(tmp_path / 's')
    for p in root.rglob('*.ogg'):
        if '_desc_' not in p.name: p.unlink()  # no sound effects left
    assert get_source('tuxpaint', root=root).modalities == ('image', 'speech', 'text')
    rows = [{'id': 'a', 'text': 'x', 'image': None, 'audio': None}, {'id': 'b', 'text': 'y'}]
    assert get_source(write(tmp_path / 'm.jsonl', rows)).modalities == ('text',)


@pytest.mark.parametrize('which', ['tuxpaint', 'manifest', 'synth'])
def test_unknown_modality_refused_with_what_the_source_has(tmp_path, which):
    if which == 'tuxpaint': name, kw, has = 'tuxpaint', {'root': fake_stamps(tmp_path / 's')}, 'image, audio, speech, text'
    elif which == 'synth': name, kw, has = 'synth', {'n_train': 4}, 'video, audio, text'
    else:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'a.png')
        name, kw, has = write(tmp_path / 'm.jsonl', [{'id': 'a', 'image': 'a.png', 'text': 'x'}]), {}, 'image, text'
    with pytest.raises(ValueError) as e: get_source(name, modalities=['video' if which == 'synth' else 'image', 'imgae'], **kw)
    assert str(e.value) == f"unknown modality 'imgae'; this source has {has}"
    with pytest.raises(ValueError, match=f"unknown modality 'speech'; this source has {has}" if which != 'tuxpaint' else 'imgae'):
        get_source(name, modalities=['text', 'speech' if which != 'tuxpaint' else 'imgae'], **kw)


def test_modality_choice_reports_items_dropped(tmp_path):
    src, msgs = recorded(lambda: get_source('tuxpaint', root=fake_stamps(tmp_path / 's'), modalities='audio'))
    assert len(src) == 2 and src.modalities == ('audio',)  # one sound effect per category
    assert any(m == 'tuxpaint: modalities=audio kept 2 of 10 items; dropped 8 that have none of them' for m in msgs), msgs

# item 7: non-finite features -----------------------------------------------------------------------------------------------

def test_non_finite_features_skipped_before_caching(tmp_path):
    d = tmp_path / 'd'; d.mkdir()
    sf.write(d / 'huge.wav', np.full(16000, 1e30, 'float32'), 16000, subtype='FLOAT')  # finite samples, NaN/inf log-mels
    sf.write(d / 'ok.wav', np.random.default_rng(0).standard_normal(16000).astype('float32') * .1, 16000)
    rows = [{'id': 'bad', 'audio': 'huge.wav', 'text': 'un', 'split': 'train'}, {'id': 'good', 'audio': 'ok.wav', 'text': 'deux', 'split': 'train'}]
    src = get_source(write(d / 'm.jsonl', rows))
    cache = tmp_path / 'cache'
    dls, msgs = recorded(lambda: source_dls(src, bs=2, cache=cache))
    ds = dls.train.dataset
    assert 'non-finite' in ds.failures[str(d / 'huge.wav')]
    assert any('huge.wav' in m and 'non-finite' in m for m in msgs), msgs  # skipped with its file and reason
    assert all(np.isfinite(np.load(f)).all() for f in cache.rglob('*.npy')) and len(list(cache.rglob('*.err'))) == 1
    [(b,)] = list(dls.train)
    assert torch.isfinite(b.x['audio']).all() and dict(zip(b.ids, b.present['audio'].tolist())) == {'good': True, 'bad': False}
    ds2 = get_source(d / 'm.jsonl').dataset('train', cache=cache)  # a new data set: the refusal is remembered, not re-made
    assert [ds2[i]['audio'] is None for i in range(2)] == [True, False]


# the Tux Paint split the committed results use --------------------------------------------------------------------------------

@pytest.mark.skipif(not TUX.is_dir(), reason='Tux Paint stamps not installed')
def test_tuxpaint_french_split_unchanged():
    "Same stamps, same parts as before the re-cut (counts and a hash of every (id, part) pair, checked against the old code)"
    src = get_source('tuxpaint', langs='fr')
    ids = src.split_ids()
    assert {k: len(v) for k, v in ids.items()} == {'train': 678, 'valid': 147, 'test': 125}
    pairs = sorted((i, s) for s, v in ids.items() for i in v)
    assert hashlib.sha1(json.dumps([list(p) for p in pairs]).encode()).hexdigest()[:16] == 'ab249cb1960324a3'


# issue 28 (round two) ------------------------------------------------------------------------------------------------------

def test_home_paths_expand_before_the_manifest_folder(tmp_path, monkeypatch):
    "Item 15: `~/frog.png` is the user's home, not `<manifest folder>/~/frog.png`"
    home = tmp_path / 'home'; home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(home / 'frog.png')
    (tmp_path / 'data').mkdir()
    rows = [{'id': 'a', 'image': '~/frog.png', 'text': 'une grenouille'}, {'id': 'b', 'text': 'un chat'}]
    m = write(tmp_path / 'data' / 'm.jsonl', rows)
    src, msgs = recorded(lambda: get_source(m))
    assert src.records[0]['image'] == str(home / 'frog.png'), src.records[0]
    assert not [x for x in msgs if 'not found' in x], msgs


@pytest.mark.parametrize('field', ['text', 'id', 'label', 'image', 'group'])
def test_lone_surrogate_names_file_line_and_field(tmp_path, field):
    "Item 9: a JSON escape of half a UTF-16 pair is no character: one message with file, line and field"
    rows = [{'id': 'a', 'text': 'un'}, {'id': 'b', 'text': 'deux', 'label': 'x', 'group': 'g'}]
    rows[1][field] = 'gr\\ud83dnouille'
    p = tmp_path / 'm.jsonl'
    p.write_text('\n'.join(json.dumps(r).replace('\\\\ud83d', '\\ud83d') for r in rows) + '\n')
    assert '\\ud83d' in p.read_text()
    with pytest.raises(ValueError) as e: get_source(p)
    msg = str(e.value)
    assert f"m.jsonl:2: field {field!r}" in msg and 'surrogate' in msg, msg


def test_group_members_without_split_take_their_groups_split(tmp_path):
    "Item 5: one group never straddles two parts; the members that took their group's split are counted in a warning"
    rows = [{'id': f"x{i}", 'text': f"t{i}", 'label': 'ab'[i % 2], 'group': f"g{i // 4}"} for i in range(40)]
    for i in (0, 1): rows[i]['split'] = 'test'  # group g0: two members say test, two say nothing
    rows[4]['split'] = 'valid'  # group g1: one says valid
    src, msgs = recorded(lambda: get_source(write(tmp_path / 'm.jsonl', rows)))
    part = {r['id']: s for s, ids in src.split_ids().items() for r in [{'id': i} for i in ids]}
    assert [part[f"x{i}"] for i in range(4)] == ['test'] * 4 and [part[f"x{i}"] for i in range(4, 8)] == ['valid'] * 4
    for g in range(10):
        assert len({part[f"x{i}"] for i in range(4 * g, 4 * g + 4)}) == 1, g
    w = [x for x in msgs if 'group' in x and 'split' in x]
    assert len(w) == 1 and '5 item(s)' in w[0], msgs


def test_group_with_two_splits_is_named(tmp_path):
    "Split fields that put one group on two sides are kept as written, and said: the group and its parts"
    rows = [{'id': f"x{i}", 'text': f"t{i}", 'group': 'g'} for i in range(3)]
    rows[0]['split'], rows[1]['split'] = 'train', 'test'
    src, msgs = recorded(lambda: get_source(write(tmp_path / 'm.jsonl', rows)))
    assert src.split_ids()['train'] == ['x0', 'x2'] and src.split_ids()['test'] == ['x1']
    w = [x for x in msgs if "group 'g'" in x]
    assert len(w) == 1 and 'train' in w[0] and 'test' in w[0] , msgs
