"Encoders: shapes, masks, padding invariance, resampling gradients, precomputed features of every modality, bad input."
import pytest, torch
from cmrl.core import collate_items, resample_steps, masked_mean, VIDEO, AUDIO, TEXT, IMAGE, SPEECH
from cmrl.encoders import make_encoder, input_dims, AudioStem, ImageStem, TextStem, VideoStem, FeatureStem
from cmrl.testing import feature_items

torch.set_num_threads(1)

def _inputs(m, B=3, L=12):
    g = torch.Generator().manual_seed(0)
    if m in (AUDIO, SPEECH): return torch.randn(B, 40, 16, generator=g), dict(n_mels=16)
    if m == IMAGE: return torch.rand(B, 1, 3, 24, 24, generator=g), dict(in_ch=3)
    if m == VIDEO: return torch.rand(B, 6, 3, 16, 16, generator=g), dict(in_ch=3)
    return torch.randint(1, 20, (B, L), generator=g), dict(vocab=20)

@pytest.mark.parametrize('m', [AUDIO, SPEECH, IMAGE, VIDEO, TEXT])
@pytest.mark.parametrize('steps', [4, None])
def test_shapes_and_masks(m, steps):
    torch.manual_seed(0)
    x, kw = _inputs(m)
    enc = make_encoder(m, d=16, steps=steps, n_layers=1, **kw)
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    o = enc(x, mask)
    B = x.shape[0]
    assert o.sem.shape[:1] == (B,) and o.sem.shape[-1] == 16 and o.sem.shape == o.spec.shape
    assert o.mask.shape == o.sem.shape[:2] and o.target.shape[:2] == o.sem.shape[:2]
    if steps: assert o.sem.shape[1] == steps
    assert o.target.shape[-1] == enc.target_dim
    assert torch.isfinite(o.sem).all() and o.mask.all()
    mask0 = mask.clone(); mask0[1] = False  # item 1 lacks the modality
    o0 = enc(x, mask0)
    assert not o0.mask[1].any() and o0.sem[1].abs().sum() == 0 and o0.spec[1].abs().sum() == 0
    assert torch.allclose(o0.sem[0], o.sem[0], atol=1e-5)  # other items unchanged

@pytest.mark.parametrize('m', [AUDIO, TEXT, VIDEO])
def test_padding_invariance(m):
    "Extra padding at the end changes nothing for the real positions"
    torch.manual_seed(0)
    x, kw = _inputs(m, B=2)
    enc = make_encoder(m, d=16, steps=5, n_layers=2, **kw).eval()
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    pad = torch.zeros(x.shape[0], 8, *x.shape[2:], dtype=x.dtype)
    xp, mp = torch.cat([x, pad + (7 if not x.is_floating_point() else 3.)], 1), torch.cat([mask, torch.zeros(x.shape[0], 8, dtype=torch.bool)], 1)
    a, b = enc(x, mask), enc(xp, mp)
    if m == AUDIO:  # conv subsampling sees the zeroed padding at the boundary: only the interior is exact
        assert torch.allclose(a.target, b.target[:, :a.target.shape[1]], atol=1e-5)
    else:
        assert torch.allclose(a.sem, b.sem, atol=1e-5) and torch.allclose(a.target, b.target, atol=1e-5)

def test_resample_gradcheck_and_mean():
    "values are pinned in 00_core; here: gradients, and the mean is kept when n is divisible by T (both alignments)"
    xd = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    md = torch.tensor([[1] * 7, [1] * 4 + [0] * 3]).bool()
    for by in ('item', 'time'): assert torch.autograd.gradcheck(lambda t: resample_steps(t, md, 5, by=by)[0], (xd,))
    z = torch.randn(1, 10, 2)
    for by in ('item', 'time'): assert torch.allclose(resample_steps(z, torch.ones(1, 10).bool(), 5, by=by)[0].mean(1), z.mean(1), atol=1e-6)

def test_pinned_param_counts():
    counts = {m: sum(p.numel() for p in make_encoder(m, d=16, steps=4, n_layers=1, **_inputs(m)[1]).parameters()) for m in (AUDIO, IMAGE, VIDEO, TEXT)}
    assert counts == {AUDIO: 14816, IMAGE: 14168, VIDEO: 14168, TEXT: 13568}, counts

def test_bad_inputs():
    with pytest.raises(ValueError, match='log-mel'): AudioStem(64, 16)(torch.randn(2, 10, 32), torch.ones(2, 10).bool())
    with pytest.raises(ValueError, match='images'): ImageStem(16)(torch.randn(2, 10, 32), torch.ones(2, 10).bool())
    with pytest.raises(ValueError, match='frames'): VideoStem(16)(torch.randn(2, 3, 16, 16), torch.ones(2, 3).bool())
    with pytest.raises(ValueError, match='token ids'): TextStem(16, vocab=10)(torch.randn(2, 5), torch.ones(2, 5).bool())
    with pytest.raises(ValueError, match='needs `vocab`'): TextStem(16)
    with pytest.raises(ValueError, match='in_dim'): FeatureStem(8, 16)(torch.randn(2, 3, 9), torch.ones(2, 3).bool())
    with pytest.raises(ValueError, match='float features'): FeatureStem(8, 16)(torch.ones(2, 3, 8).long(), torch.ones(2, 3).bool())
    with pytest.raises(ValueError, match='max_len'): make_encoder(TEXT, d=16, vocab=5).__class__(TextStem(16, vocab=5), 16, max_len=4)(torch.ones(1, 9).long(), torch.ones(1, 9).bool())

@pytest.mark.parametrize('m', [IMAGE, VIDEO, AUDIO, SPEECH, TEXT, 'smell'])
def test_precomputed_features_any_modality(m):
    "issue 12: a modality given as float [B, T, D] features gets a FeatureStem; padding and absent items stay zero"
    torch.manual_seed(0)
    enc = make_encoder(m, d=16, steps=3, n_layers=1, in_dim=24)
    assert isinstance(enc.stem, FeatureStem) and enc.target_dim == 24
    x, mask = torch.randn(3, 5, 24) * 30, torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [0] * 5]).bool()
    o = enc(x, mask)
    assert o.sem.shape == (3, 3, 16) and o.target.shape == (3, 3, 24)
    assert o.mask[:2].all() and not o.mask[2].any() and o.sem[2].abs().sum() == 0
    x2 = x.clone(); x2[1, 2:] = 1e3  # values under padding change nothing
    assert torch.allclose(enc(x2, mask).sem, o.sem, atol=1e-5)

def test_input_dims_features():
    b = collate_items(feature_items(4, dims={IMAGE: 8, VIDEO: 6, AUDIO: 5, SPEECH: 7, TEXT: 4}))
    assert input_dims(b, features={AUDIO: 5, SPEECH: 7}) == {m: dict(in_dim=d) for m, d in {IMAGE: 8, VIDEO: 6, AUDIO: 5, SPEECH: 7, TEXT: 4}.items()}
    assert input_dims(b)[SPEECH] == dict(n_mels=7)  # aural features must be named (they look like log-mels)
    with pytest.raises(ValueError, match='float features'): input_dims(collate_items([{'id': 'a', TEXT: torch.tensor([1, 2])}]), features=[TEXT])

def test_input_dims():
    from cmrl.data.synth import SynthEvents
    ds = SynthEvents(2)
    b = collate_items([ds[0], ds[1]])
    d = input_dims(b, vocab=len(ds.vocab))
    assert d == {VIDEO: dict(in_ch=3, size=32), AUDIO: dict(n_mels=64), TEXT: dict(vocab=len(ds.vocab))}
    assert input_dims(b, vocab=len(ds.vocab), audio_width=128)[AUDIO] == dict(n_mels=64, audio_width=128)  # only log-mel modalities get it
    assert input_dims(b, vocab=len(ds.vocab), audio_width=128)[VIDEO] == dict(in_ch=3, size=32)
    assert input_dims(b, vocab=len(ds.vocab), text_ngram=5)[TEXT] == dict(vocab=len(ds.vocab), text_ngram=5)  # only token-id text gets it
    assert input_dims(b, vocab=len(ds.vocab), text_ngram=5)[AUDIO] == dict(n_mels=64)


def test_audio_width_stem_follows_the_recorded_dims():
    "The wider log-mel stem is chosen by `audio_width` in the dims; dims recorded without it rebuild the 2-layer stem"
    old = make_encoder('speech', d=32, steps=1, n_mels=64)  # what a run trained before `--audio-width` recorded
    new = make_encoder('speech', d=32, steps=1, n_mels=64, audio_width=128)
    assert not any(k.startswith('stem.conv.6.') for k in old.state_dict()) and any(k.startswith('stem.conv.6.') for k in new.state_dict())
    x, m = torch.randn(2, 50, 64), torch.ones(2, 50).bool()
    assert old(x, m).sem.shape == new(x, m).sem.shape == (2, 1, 32)
    with pytest.raises(RuntimeError): old.load_state_dict(new.state_dict())  # the two stems are not interchangeable


def test_text_ngram_stem_follows_the_recorded_dims():
    "The n-gram convolution of the token stem is built from `text_ngram` in the dims; dims without it rebuild the plain embedding stem"
    old = make_encoder('text', d=16, steps=1, vocab=30)
    new = make_encoder('text', d=16, steps=1, vocab=30, text_ngram=5)
    assert 'stem.conv.weight' not in old.state_dict() and new.state_dict()['stem.conv.weight'].shape == (16, 16, 5)
    x, m = torch.randint(1, 30, (2, 9)), torch.ones(2, 9).bool()
    m[1, 4:] = False
    assert old(x, m).sem.shape == new(x, m).sem.shape == (2, 1, 16)
    x2 = x.clone(); x2[1, 4:] = 7  # what stands in the padding never reaches the real tokens
    torch.testing.assert_close(new.stem(x2, m)[0][1, :4], new.stem(x, m)[0][1, :4])
    with pytest.raises(ValueError, match='odd kernel'): make_encoder('text', d=16, vocab=30, text_ngram=2)

