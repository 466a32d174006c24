"Audio front-end: rates, channels, lengths, silence, bad files (tmp files only)."
import math
import numpy as np, pytest, soundfile as sf, torch
from cmrl.data.audio import *

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


def test_audio_silence_is_log_eps():
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
