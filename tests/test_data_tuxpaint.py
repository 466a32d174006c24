"Tux Paint source: scanning, grouping, splits, bad files (fake stamps in tmp_path), and leakage checks on the real stamps."
import hashlib, os, warnings
from collections import Counter
from pathlib import Path
import numpy as np, pytest, soundfile as sf, torch
from PIL import Image
from cmrl.core import IMAGE, AUDIO, SPEECH, TEXT, collate_items
from cmrl.data.cache import FrontendConfig
from cmrl.data.tuxpaint import *
from cmrl.data.image import svg_support

torch.set_num_threads(1)
REAL = Path(os.environ.get('CMRL_TUXPAINT') or TUXPAINT_ROOT)
real = pytest.mark.skipif(not REAL.is_dir(), reason='Tux Paint stamps not installed (apt-get install tuxpaint-stamps-default)')


@pytest.fixture
def stamps(tmp_path):
    return fake_stamps(tmp_path / 'stamps', n_cats=3, per_cat=5)


def test_items_labels_langs(stamps):
    src = TuxPaint(stamps, langs=['fr', 'es'])
    assert len(src.stamps) == 18 and len(src) == 36
    assert src.class_names == ['cat0', 'cat1', 'cat2']
    for r in src.records:
        assert r['label'] == src.class_names.index(r['category'])
        assert r['id'] == f"{r['stamp']}:{r['lang']}"
        assert r[TEXT] == {'fr': 'Une chose', 'es': 'Una cosa'}[r['lang']] + r[TEXT][-4:]
        assert r[SPEECH].endswith(f"_desc_{r['lang']}.ogg")
    assert sum(r[AUDIO] is not None for r in src.records) == 3 * 2  # one sound effect per category, in its fr and es items
    assert len(TuxPaint(stamps, langs=['fr'], per_lang=False)) == 18
    assert TuxPaint(stamps, langs='all').langs == ['es', 'fr']
    assert len(TuxPaint(stamps, langs=['en'])) == 18  # English text, no English speech
    assert all(r[SPEECH] is None for r in TuxPaint(stamps, langs=['en']).records)


def test_modalities_subset(stamps):
    src = TuxPaint(stamps, langs=['fr'], modalities=(IMAGE, SPEECH))
    assert src.modalities == (IMAGE, SPEECH)
    assert all(r[TEXT] is None and r[AUDIO] is None for r in src.records)


def test_unknown_language(stamps):
    with pytest.raises(ValueError, match=r"unknown language\(s\) 'xx'.*spoken: es, fr"):
        TuxPaint(stamps, langs=['fr', 'xx'])


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match='tuxpaint-stamps-default'):
        TuxPaint(tmp_path / 'nope')


def test_splits_deterministic_grouped(stamps):
    a, b = TuxPaint(stamps, langs=['fr', 'es']), TuxPaint(stamps, langs=['fr', 'es'])
    assert a.splits == b.splits
    split_of = {a.records[i]['stamp']: s for s, ix in a.splits.items() for i in ix}
    for c in range(3):
        v = f"cat{c}/sub/thing{chr(97 + c)}k"
        assert split_of[v] == split_of[v + '-1']  # the variant shares recordings and text
    # languages of one stamp never straddle splits
    per_stamp = {}
    for s, ix in a.splits.items():
        for i in ix: per_stamp.setdefault(a.records[i]['stamp'], set()).add(s)
    assert all(len(v) == 1 for v in per_stamp.values())
    seeds = {tuple(sorted(TuxPaint(stamps, langs=['fr'], split_seed=k).splits['train'])) for k in range(6)}
    assert len(seeds) > 1


def test_english_name_groups(tmp_path):
    root = fake_stamps(tmp_path / 's', n_cats=1, per_cat=2, variants=False)
    d = root / 'cat0' / 'sub'
    Image.fromarray(np.full((9, 9, 3), 7, np.uint8)).save(d / 'flower1.png'); (d / 'flower1.txt').write_text('A red flower.')
    Image.fromarray(np.full((9, 9, 3), 8, np.uint8)).save(d / 'flower2.png'); (d / 'flower2.txt').write_text('A blue flower.')
    src = TuxPaint(root, langs=['en'])
    g = {r['stamp'].split('/')[-1]: r['group'] for r in src.records}
    assert g['flower1'] == g['flower2'] and g['flower1'] != g['thingak'] != g['thingal']


def test_scan_bad_files(stamps):
    d = stamps / 'cat0' / 'sub'
    (d / 'thingal.png').write_bytes(b'')  # empty picture: the stamp has no picture
    (d / 'thingam_desc_fr.ogg').write_bytes(b'')  # empty recording
    (d / 'ghost_desc_fr.ogg').write_bytes(b'OggS')  # no such stamp
    (d / 'thingan_desc_fr.ogg.ogg').write_bytes(b'OggS')  # a name it cannot read
    (d / 'thingan.txt').write_bytes(b'\xff\xfe\x00bad utf8 \xc3')
    (d / 'notes.doc').write_bytes(b'x')
    st, sk = scan_tuxpaint(stamps)
    why = {Path(p).name: r for p, r in sk}
    assert why['thingal.png'] == 'empty file' and why['thingam_desc_fr.ogg'] == 'empty file'
    assert why['thingal.txt'] == 'text without a picture'
    assert why['ghost_desc_fr.ogg'] == 'sound without a stamp'
    assert why['thingan_desc_fr.ogg.ogg'] == 'unrecognised file name'
    assert why['thingan.txt'].startswith('unreadable text')
    assert why['notes.doc'] == 'not a stamp file'
    names = {s.name.split('/')[-1]: s for s in st}
    assert 'thingal' not in names and 'fr' not in names['thingam'].speech and names['thingan'].texts == {}
    s = TuxPaint(stamps, langs=['fr']).summary()
    assert s['skipped']['count'] == len(sk) and s['skipped']['by_reason']['empty file'] == 2


def test_corrupt_files_marked_absent_one_warning(stamps, tmp_path):
    d = stamps / 'cat1' / 'sub'
    (d / 'thingbl.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 50)  # corrupt picture
    (d / 'thingbm_desc_fr.ogg').write_bytes(b'OggS' + os.urandom(200))  # corrupt recording
    src = TuxPaint(stamps, langs=['fr'])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        dss = [src.dataset(s, cache=tmp_path / 'cache', validate=True) for s in src.splits]
    msgs = [str(x.message) for x in w if 'cannot be decoded' in str(x.message)]
    assert len(msgs) == sum(bool(ds.failures) for ds in dss) >= 1  # one warning per data set that has bad files
    assert any('thingbl.png' in m for m in msgs) and any('thingbm_desc_fr.ogg' in m for m in msgs)
    items = [ds[i] for ds in dss for i in range(len(ds))]
    by = {it['id']: it for it in items}
    assert by['cat1/sub/thingbl:fr'][IMAGE] is None and by['cat1/sub/thingbl:fr'][SPEECH] is not None
    assert by['cat1/sub/thingbm:fr'][SPEECH] is None and by['cat1/sub/thingbm:fr'][IMAGE] is not None
    b = collate_items(items, modalities=src.modalities, shapes=src.shapes)
    assert b.present[IMAGE].sum() == len(items) - 1 and b.present[SPEECH].sum() == len(items) - 1
    # the failures are remembered by the cache: a new data set does not warn mid-epoch about them again
    assert src.check(cache=tmp_path / 'cache')  # and `check` reports them
    s = src.summary()
    assert s['files_decoded'] and s['stamps']['with_image'] == 17 and sum('cannot decode' in k for k in s['skipped']['by_reason']) == 2


def test_svg_only_stamp(tmp_path):
    root = fake_stamps(tmp_path / 's', n_cats=1, per_cat=1, variants=False)
    d = root / 'cat0' / 'sub'
    (d / 'star.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><circle cx="5" cy="5" r="4" fill="#0f0"/></svg>')
    (d / 'star.txt').write_text('A star.\nfr.utf8=Une étoile.')
    (d / 'thingak.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    st, sk = scan_tuxpaint(root)
    star = [s for s in st if s.name.endswith('star')][0]
    if svg_support() is None:
        assert star.image.endswith('star.svg')
        x = TuxPaint(root, langs=['fr']).dataset('train', cache=False)
        it = [x[i] for i in range(len(x)) if x[i]['id'].endswith('star:fr')]
        assert not it or it[0][IMAGE][0, 1, 32, 32] > .9  # green centre
    else:
        assert star.image is None
    assert ('SVG not used: the stamp has a PNG' in {r for _, r in sk})


@real
def test_real_summary_counts():
    src = TuxPaint()
    s = src.stamp_summary()
    assert s['with_image_and_text'] >= 940 and s['with_speech_any_language'] >= 900 and s['with_sound_effect'] >= 130
    assert src.class_names[:3] == ['animals', 'clothes', 'food'] and len(src.class_names) == 16
    frog = [r for r in src.records if r['stamp'] == 'animals/amphibians/frog' and r['lang'] == 'fr'][0]
    assert frog[TEXT] == 'Une grenouille.' and frog[SPEECH].endswith('frog_desc_fr.ogg') and frog[AUDIO].endswith('frog.ogg')
    n = Counter(s_ for s_, ix in src.splits.items() for _ in ix)
    assert n['train'] > 3 * n['test'] > 0 and n['valid'] > 0


def _sha(p, memo={}):
    if p not in memo: memo[p] = hashlib.sha1(Path(p).read_bytes()).hexdigest()
    return memo[p]


@real
@pytest.mark.parametrize('langs', [('fr', 'es', 'ca'), 'all'])
def test_real_no_test_content_in_train(langs):
    "No recording (content hash), text or picture (content hash) of the test split appears in the training split"
    src = TuxPaint(langs=langs)
    def content(split):
        recs = src.split(split)
        return ({_sha(r[m]) for r in recs for m in (AUDIO, SPEECH) if r[m]}, {r[TEXT].casefold() for r in recs if r[TEXT]},
                {_sha(r[IMAGE]) for r in recs if r[IMAGE]}, {r['stamp'] for r in recs}, {r['group'] for r in recs})
    tr, te = content('train'), content('test')
    assert len(te[0]) > 100 and len(te[1]) > 100 and len(te[2]) > 50
    for what, a, b in zip(('recordings', 'texts', 'pictures', 'stamps', 'groups'), tr, te):
        assert not (a & b), f"{len(a & b)} {what} of the test split are also in training: {sorted(a & b)[:5]}"


@real
def test_real_subset_features(tmp_path):
    src = TuxPaint(langs=['fr'])
    ds = src.dataset('test', cache=tmp_path)
    ds.records = ds.records[:12]
    items = [ds[i] for i in range(len(ds))]
    b = collate_items(items, modalities=src.modalities, shapes=src.shapes)
    assert b.x[IMAGE].shape == (12, 1, 3, 64, 64) and b.x[SPEECH].shape[-1] == 64 and b.present[SPEECH].sum() >= 10
    assert b.x[TEXT].dtype == torch.long and not ds.failures
    # a spoken description of ~1-3 s gives 100-300 frames at a 10 ms hop
    L = b.lengths(SPEECH)[b.present[SPEECH]].float()
    assert 30 < L.median() < 400
