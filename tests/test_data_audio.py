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


# ---------------------------------------------------------------- issue 28 item 7: any rate, bounded memory
RATES = [7, 8000, 11025, 22050, 44100, 44101, 48000, 96000]


def _old_way(p, cfg=None):
    "The features as the front-end made them before issue 28: whole file read, cut, torchaudio's resampler on the exact ratio"
    import torchaudio
    c = cfg or AudioConfig()
    data, fsr = sf.read(str(p), dtype='float32', always_2d=True)
    w = torch.from_numpy(np.ascontiguousarray(data.mean(1)))[:int(round(c.max_sec * fsr))]
    if fsr != c.sr: w = torchaudio.transforms.Resample(fsr, c.sr)(w)
    return AudioFrontend(c).logmel(w)


@pytest.mark.parametrize('sr', [r for r in RATES if r != 44101])  # 44,101 Hz: below, in a process with a memory allowance
def test_any_rate_gives_the_frames_of_its_length(tmp_path, sr):
    "A 1.5 s recording at any rate: the frames of 1.5 s at 16 kHz, finite; a tone keeps its mel bin (where the rate can hold it)"
    p = _tone(tmp_path / 't.wav', sr, 1.5, f=440. if sr > 1000 else 2.)
    X = AudioFrontend()(p)
    n = round(int(sr * 1.5) * 16000 / sr)  # its samples at 16 kHz (7 Hz: 10 samples, 1.43 s)
    assert abs(X.shape[0] - (1 + n // 160)) <= 1 and X.shape[1] == 64 and torch.isfinite(X).all()
    if sr > 1000: assert abs(torchaudio_bins()[X.mean(0).argmax()] - 440) < 60
    assert torch.equal(X, _old_way(p))  # the common rates: the same features as before, bit for bit


def test_odd_rate_resamples_in_bounded_memory(tmp_path):
    "44,101 Hz: torchaudio's kernel for 16000/44101 takes GBs; under a 1.5 GB address-space allowance the front-end still reads it"
    p = _tone(tmp_path / 'odd.wav', 44101, 2.)
    code = ("import resource, sys, torch; torch.set_num_threads(1)\n"
            "from cmrl.data.audio import AudioFrontend\n"
            "fe = AudioFrontend(); fe(torch.zeros(16000), sr=16000)\n"
            "vm = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 1_500_000_000, resource.RLIM_INFINITY))\n"
            f"X = fe({str(p)!r}); assert torch.isfinite(X).all(); print(tuple(X.shape))\n")
    import subprocess, sys, os
    from pathlib import Path
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(Path(__file__).parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == '(201, 64)', (r.returncode, r.stdout, r.stderr[-1500:])


def test_features_at_16k_unchanged(tmp_path):
    "Files already at 16 kHz: the same features as before (no resampling; reading the start is reading the whole, cut)"
    p = _tone(tmp_path / 'long.wav', 16000, 12.)  # longer than max_sec: read only its first 10 s
    assert torch.equal(AudioFrontend()(p), _old_way(p))
    q = _tone(tmp_path / 'short.flac', 16000, 0.7, channels=2)
    assert torch.equal(AudioFrontend()(q), _old_way(q))


def test_a_recording_too_long_to_read_whole_is_skipped(tmp_path, monkeypatch):
    "`max_sec=None` reads a file whole: one longer than `MAX_AUDIO_SEC` is a `DecodeError` that says its length"
    import cmrl.data.audio as ca
    p = _tone(tmp_path / 'long.wav', 8000, 3.)
    monkeypatch.setattr(ca, 'MAX_AUDIO_SEC', 2.)
    with pytest.raises(DecodeError) as e: AudioFrontend(max_sec=None)(p)
    assert 'minutes long' in e.value.reason and str(p) in str(e.value)
    assert AudioFrontend(max_sec=1.)(p).shape[0] == 101  # its start can still be read
    monkeypatch.setattr(ca, 'MAX_SAMPLES', 1000)
    with pytest.raises(DecodeError) as e: AudioFrontend(max_sec=1.)(p)
    assert 'more than 1,000' in e.value.reason
