"Manifest source: validation errors name line and field; missing files skipped with one warning; splits; languages."
import json, warnings
from pathlib import Path
import numpy as np, pytest, soundfile as sf, torch
from PIL import Image
from cmrl.core import IMAGE, AUDIO, SPEECH, TEXT, ModalityBatch
from cmrl.data.manifest import *
from cmrl.data.loaders import get_source, source_dls

torch.set_num_threads(1)


def write(p: Path, rows):
    p.write_text(''.join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + '\n' for r in rows), encoding='utf-8')
    return p


@pytest.fixture
def data(tmp_path):
    d = tmp_path / 'data'; (d / 'img').mkdir(parents=True); (d / 'snd').mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(d / 'img' / f"{i}.png")
        sf.write(d / 'snd' / f"{i}.ogg", rng.standard_normal(4000 + 100 * i).astype('float32') * .1, 8000)
        rows.append({'id': f"x{i}", 'image': f"img/{i}.png", 'audio': f"snd/{i}.ogg" if i % 3 else None,
                     'speech': None, 'text': ['Une grenouille.', 'Жаба.', '青蛙。'][i % 3], 'label': ['a', 'b'][i % 2],
                     'lang': ['fr', 'ru', 'zh_CN'][i % 3]})
    return d, rows


@pytest.mark.parametrize('line,msg', [
    ('{"id": "a", "text": "ok"', "line 2: not valid JSON"),
    ('[1, 2]', "2: expected a JSON object, got list"),
    ('{"text": "no id"}', "2: field 'id': missing"),
    ('{"id": "x0", "text": "dup"}', "2: field 'id': 'x0' is already used on line 1"),
    ('{"id": "b", "image": 5, "text": "t"}', "2: field 'image': expected a file path"),
    ('{"id": "b", "audio": "", "text": "t"}', "2: field 'audio': expected a file path"),
    ('{"id": "b", "text": 7}', "2: field 'text': expected a string or null"),
    ('{"id": "b", "text": "t", "label": [1]}', "2: field 'label': expected a string, an integer or null"),
    ('{"id": "b", "text": "t", "label": true}', "2: field 'label'"),
    ('{"id": "b", "text": "t", "lang": "French!"}', "2: field 'lang': 'French!' is not a language code"),
    ('{"id": "b", "text": "t", "split": "dev"}', "2: field 'split': 'dev' is not one of train, valid, test"),
    ('{"id": "b", "image": null, "text": null}', "2: no modality"),
])
def test_malformed_lines_name_line_and_field(tmp_path, line, msg):
    p = write(tmp_path / 'm.jsonl', ['{"id": "x0", "text": "fine"}', line])
    with pytest.raises(ManifestError) as e: ManifestSource(p)
    assert msg.replace('line 2', 'm.jsonl:2') in str(e.value) or f"m.jsonl:{msg}" in str(e.value), str(e.value)


def test_all_problems_listed(tmp_path):
    p = write(tmp_path / 'm.jsonl', ['{"id": 1.5, "text": "t"}', 'nope', '', '{"id": "ok", "text": "t", "lang": "fr fr"}'])
    with pytest.raises(ManifestError, match=r"3 problem\(s\)") as e: read_manifest(p)
    assert 'm.jsonl:1:' in str(e.value) and 'm.jsonl:2:' in str(e.value) and 'm.jsonl:4:' in str(e.value)


def test_empty_and_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match='no items'): ManifestSource(write(tmp_path / 'e.jsonl', ['', '  ']))
    (tmp_path / 'bin.jsonl').write_bytes(b'\xff\xfe\xfa')
    with pytest.raises(ManifestError, match='not UTF-8'): ManifestSource(tmp_path / 'bin.jsonl')
    with pytest.raises(FileNotFoundError, match='no such file'): get_source(tmp_path / 'absent.jsonl')


def test_load_resolve_labels_langs(data):
    d, rows = data
    src = ManifestSource(write(d / 'm.jsonl', rows))
    assert len(src) == 12 and src.class_names == ['a', 'b'] and src.modalities == (IMAGE, AUDIO, TEXT)
    assert all(Path(r[IMAGE]).is_absolute() and Path(r[IMAGE]).exists() for r in src.records)
    assert {r['lang'] for r in src.records} == {'fr', 'ru', 'zh_CN'}
    assert len(ManifestSource(d / 'm.jsonl', langs=['fr', 'ru'])) == 8
    with pytest.raises(ValueError, match=r"unknown language\(s\) 'de'; the manifest has: fr, ru, zh_CN"):
        ManifestSource(d / 'm.jsonl', langs=['de'])
    s = src.summary()
    assert s['languages']['ru'] == {'items': 4, 'text': 4} and s['modalities'] == {IMAGE: 12, AUDIO: 8, TEXT: 12}


def test_integer_labels_numeric_order(tmp_path):
    p = write(tmp_path / 'm.jsonl', [{'id': str(i), 'text': 't', 'label': l} for i, l in enumerate([10, 2, 1, 2])])
    src = ManifestSource(p)
    assert src.class_names == ['1', '2', '10'] and [r['label'] for r in src.records] == [2, 1, 0, 1]


def test_missing_files_skip_or_error(data):
    d, rows = data
    rows[0]['image'] = 'img/nope.png'; rows[1]['audio'] = 'snd/nope.ogg'
    rows.append({'id': 'only-missing', 'image': 'img/gone.png'})
    p = write(d / 'm.jsonl', rows)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always'); src = ManifestSource(p)
    assert len(w) == 1 and all(n in str(w[0].message) for n in ('nope.png', 'nope.ogg', 'gone.png'))
    assert len(src) == 12 and src.records[0][IMAGE] is None and src.records[0][TEXT] is not None
    assert [why for _, why in src.skipped] == ["file not found (line 1, field 'image')", "file not found (line 2, field 'audio')",
                                               "file not found (line 13, field 'image')"]
    with pytest.raises(ManifestError, match='3 file\\(s\\) not found'): ManifestSource(p, missing='error')


def test_corrupt_files_in_manifest_never_crash(data, tmp_path):
    d, rows = data
    (d / 'img' / '3.png').write_bytes(b'garbage')
    (d / 'snd' / '4.ogg').write_bytes(b'')
    src = ManifestSource(write(d / 'm.jsonl', rows), fracs=(('train', 1.), ('valid', 0.)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        ds = src.dataset('train', cache=tmp_path / 'c', validate=True)
    assert len([x for x in w if 'cannot be decoded' in str(x.message)]) == 1
    assert set(ds.failures) == {str(d / 'img' / '3.png'), str(d / 'snd' / '4.ogg')}
    assert 'audio has no samples' in ds.failures[str(d / 'snd' / '4.ogg')] or 'unreadable audio' in ds.failures[str(d / 'snd' / '4.ogg')]
    items = [ds[i] for i in range(len(ds))]
    assert sum(it[IMAGE] is None for it in items) == 1 and sum(it[AUDIO] is None for it in items) == 4 + 1


def test_splits_given_and_grouped(data):
    d, rows = data
    for i, r in enumerate(rows):
        r['group'] = f"g{i // 4}"
    rows[0]['split'] = 'test'
    src = ManifestSource(write(d / 'm.jsonl', rows), split_seed=1)
    split_of = {src.records[i]['id']: s for s, ix in src.splits.items() for i in ix}
    assert split_of['x0'] == 'test'
    for g in range(3):
        ids = [f"x{i}" for i in range(4 * g, 4 * g + 4) if i != 0]
        assert len({split_of[i] for i in ids}) == 1
    assert ManifestSource(d / 'm.jsonl', split_seed=1).splits == src.splits


def test_unknown_fields_warn(data):
    d, rows = data
    rows[2]['imgae'] = 'img/2.png'
    with pytest.warns(UserWarning, match=r"unknown field\(s\) ignored: imgae \(first on line 3\)"):
        ManifestSource(write(d / 'm.jsonl', rows))


def test_manifest_dls_and_folder(data, tmp_path):
    d, rows = data
    write(d / 'items.jsonl', rows)
    dls = source_dls(str(d), bs=4, cache=tmp_path / 'c', fracs=(('train', .5), ('valid', .5)))
    b = ModalityBatch.of(dls.valid.one_batch())
    assert set(b.x) == {IMAGE, AUDIO, TEXT} and b.x[IMAGE].shape[1:] == (1, 3, 64, 64)
    assert b.y.tolist() == [dls.source.records[dls.source.splits['valid'][i]]['label'] for i in range(b.bs)]
