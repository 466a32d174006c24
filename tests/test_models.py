"Every model: typed output with a loss breakdown, a few steps lower the loss (raw synthetic inputs and precomputed features), missing modalities, embed/codes interface, recorded config."
import json, pytest, torch
from cmrl.core import set_seed, collate_items, ModalityBatch, VIDEO, AUDIO, TEXT, IMAGE, SPEECH
from cmrl.encoders import input_dims
from cmrl.models.core import ModelOutput, quantise
from cmrl.testing import tiny_synth, feature_items
from cmrl.models.registry import MODELS, rebuild
from cmrl.models.unicode import unicode_model
from cmrl.models.liu import liu2022_model
from cmrl.models.opt import opt_model
from cmrl.models.baselines import continuous_baseline, plain_codebook_baseline
from cmrl.learner import main_params

torch.set_num_threads(1)
SMALL = dict(d=16, n_layers=1)
BUILDERS = {
    'unicode': lambda mods, dims, **kw: unicode_model(mods, dims, steps=5, n_codes=16, **SMALL, **kw),
    'liu2022': lambda mods, dims, **kw: liu2022_model(mods, dims, steps=5, n_codes=16, **SMALL, **kw),
    'opt': lambda mods, dims, **kw: opt_model(mods, dims, fusion_layers=1, **SMALL, **kw),
    'continuous': lambda mods, dims, **kw: continuous_baseline(mods, dims, steps=5, **SMALL, **kw),
    'plain_codebook': lambda mods, dims, **kw: plain_codebook_baseline(mods, dims, steps=5, n_codes=16, **SMALL, **kw),
}

@pytest.fixture(scope='module')
def synth():
    return tiny_synth(24, seed=0)

def _train(model, b, steps=12, lr=3e-3):
    opt = torch.optim.Adam(main_params(model)[0], lr)
    est = [p for e in model.mi_estimators() for p in e.parameters()]
    mi = torch.optim.Adam(est, 1e-3) if est else None
    hist = []
    for i in range(steps):
        set_seed(100 + i)  # the same random choices (masks, permutations) in every run
        out = model((b,)); opt.zero_grad(); out.loss.backward(); opt.step(); hist.append(out.loss.item())
        if mi is not None:
            for _ in range(3): mi.zero_grad(); model.mi_learning_loss(out.aux).backward(); mi.step()
    return hist

@pytest.mark.parametrize('name', list(BUILDERS))
def test_loss_goes_down(name, synth):
    ds, b, dims = synth
    set_seed(0)
    model = BUILDERS[name](b.modalities, dims)
    hist = _train(model, b)
    first, last = sum(hist[:3]) / 3, sum(hist[-3:]) / 3
    assert last < first, (name, hist)
    for p in model.parameters(): assert torch.isfinite(p).all()

@pytest.mark.parametrize('name', list(BUILDERS))
def test_output_and_interface(name, synth):
    ds, b, dims = synth
    set_seed(0)
    model = BUILDERS[name](b.modalities, dims)
    out = model((b,))
    assert isinstance(out, ModelOutput)
    assert set(out.losses) == set(model.loss_names), (set(out.losses) ^ set(model.loss_names))
    assert torch.allclose(out.loss, sum(out.losses.values()))
    emb = model.embed(b)
    assert set(emb) == set(b.modalities) and all(e.shape == (24, 16) for e in emb.values())
    codes, feats = model.codes(b), model.quantised(b)
    if name in ('unicode', 'liu2022', 'plain_codebook'):
        assert all(c.shape == (24, 5) and c.dtype == torch.long and (c >= 0).all() and (c < 16).all() for c in codes.values())
        assert all(f.shape == (24, 5, 16) for f in feats.values())
        # the quantised features are codebook vectors (Liu: the discrete part of the sum)
        if name != 'liu2022':
            m = b.modalities[0]
            assert torch.allclose(feats[m], model.codebook.lookup(codes[m]), atol=1e-5)
    else: assert codes == {}
    assert model.training  # embed/codes restore the mode

@pytest.mark.parametrize('name', list(BUILDERS))
def test_missing_modalities(name):
    ds, b, dims = tiny_synth(24, seed=1, missing_rate=0.4)
    assert not all(b.present[m].all() for m in b.modalities)  # some items lack some modality
    set_seed(0)
    model = BUILDERS[name](b.modalities, dims)
    hist = _train(model, b, steps=3)
    assert all(torch.isfinite(torch.tensor(h)) for h in hist)
    out = model((b.drop(AUDIO),))  # a whole modality missing from the batch
    assert torch.isfinite(out.loss)
    for k, v in out.losses.items():
        if AUDIO in k and name != 'opt': assert v.abs() < 1e-6 or k.startswith('commit'), (k, v)

@pytest.mark.parametrize('mods', [(VIDEO, AUDIO), (AUDIO, TEXT), (VIDEO, AUDIO, TEXT)])
def test_unicode_subsets(mods):
    ds, b, dims = tiny_synth(16, seed=0)
    set_seed(0)
    model = BUILDERS['unicode'](list(mods), dims)
    out = model((b,))
    assert set(out.codes) == set(mods) and 'cmcm' in out.losses and 'cpc' in out.losses
    assert all(f'cross_commit/{m}' in out.losses for m in mods)

@pytest.mark.parametrize('kw', [dict(mm_ema='paper'), dict(mm_ema=None, cross_commit=None), dict(cross_commit='paper'),
                                dict(w_club=0., w_cpc=0., w_cmcm=0.), dict(w_recon=0.)])
def test_unicode_options(kw):
    ds, b, dims = tiny_synth(16, seed=0)
    set_seed(0)
    model = BUILDERS['unicode'](b.modalities, dims, **kw)
    hist = _train(model, b, steps=4)
    assert hist[-1] < hist[0]
    if kw.get('w_club') == 0: assert model.mi_estimators() == [] and 'cpc' not in model.loss_names and 'cmcm' not in model.loss_names

def test_unicode_single_modality():
    ds, b, dims = tiny_synth(8, seed=0)
    model = BUILDERS['unicode']([AUDIO], dims)
    out = model((b,))
    assert 'cmcm' not in out.losses and 'cpc' not in out.losses and torch.isfinite(out.loss)

@pytest.mark.parametrize('kw', [dict(scale=True), dict(adversarial=True), dict(tasks=('mlm', 'match'))])
def test_opt_options(kw):
    ds, b, dims = tiny_synth(16, seed=0)
    set_seed(0)
    model = BUILDERS['opt'](b.modalities, dims, **kw)
    out = model((b,))
    assert set(out.losses) == set(model.loss_names) and torch.isfinite(out.loss)
    out.loss.backward()

def test_liu_discrete_only():
    ds, b, dims = tiny_synth(16, seed=0)
    torch.manual_seed(0)
    model = BUILDERS['liu2022'](b.modalities, dims, continuous=False)
    model((b,))  # a training step: initialises the codebook from the data
    out = model.eval()((b,))  # no EMA update in eval mode, so the codes looked up now are the ones the forward used
    m = b.modalities[0]
    assert torch.allclose(out.feats[m], model.codebook.lookup(out.codes[m]), atol=1e-5)

def test_quantise_workaround_matches_single_update():
    "`quantise` makes the same EMA update as one codebook call would (checked on a codebook without probs)"
    from cmrl.codebook import SharedCodebook
    g = torch.Generator().manual_seed(0)
    z = {'a': torch.randn(4, 5, 8, generator=g), 'b': torch.randn(4, 5, 8, generator=g)}
    mask = {k: torch.ones(4, 5, dtype=torch.bool) for k in z}; pres = {k: torch.ones(4, dtype=torch.bool) for k in z}
    c1, c2 = SharedCodebook(16, 8, mm_ema='reference'), SharedCodebook(16, 8, mm_ema='reference')
    for c in (c1, c2): c(z, mask, pres, probs=False)  # the data initialisation (quantise does it in its own call)
    for _ in range(3):
        o1 = quantise(c1, {k: v.clone().requires_grad_() for k, v in z.items()}, mask, pres, probs=True)
        o2 = c2(z, mask, pres, probs=False)
        assert all(torch.equal(o1.indices[k], o2.indices[k]) for k in z)
    assert torch.allclose(c1.embed, c2.embed) and torch.allclose(c1.cluster_size, c2.cluster_size)

def test_model_output_survives_fastai_to_float():
    from fastai.torch_core import to_float
    o = ModelOutput(torch.tensor(1., dtype=torch.half), {'a': torch.tensor(2., dtype=torch.half)}, {}, {}, {'v': torch.ones(2, dtype=torch.long)}, {}, {})
    f = to_float(o)
    assert type(f) is ModelOutput and f.loss.dtype == torch.float32 and f.codes['v'].dtype == torch.long

def test_bad_inputs():
    ds, b, dims = tiny_synth(4)
    with pytest.raises(ValueError, match='input settings'): unicode_model(['image'], dims)
    with pytest.raises(ValueError, match='steps >= 1'): unicode_model([AUDIO], dims, steps=None)
    model = BUILDERS['continuous']([AUDIO], dims)
    with pytest.raises(ValueError, match="none of this model's modalities"): model((b.select([0]).__class__(x={'image': torch.zeros(1, 1)}, mask={'image': torch.ones(1, 1).bool()}, present={'image': torch.ones(1).bool()}),))
    with pytest.raises(ValueError, match='two audio'): opt_model(['audio', 'speech'], {'audio': dict(n_mels=64), 'speech': dict(n_mels=64)})


@pytest.mark.parametrize('name', list(BUILDERS))
def test_loss_goes_down_on_precomputed_features(name):
    "issue 12: image, speech and text given as frozen float features [T, D] (as in a manifest's `*_features` .npy files)"
    b = collate_items(feature_items(24, dims={IMAGE: 24, SPEECH: 20, TEXT: 12}))
    dims = input_dims(b, features=[SPEECH])
    assert dims == {IMAGE: dict(in_dim=24), SPEECH: dict(in_dim=20), TEXT: dict(in_dim=12)}
    set_seed(0)
    model = BUILDERS[name](b.modalities, dims)
    assert all(type(e.stem).__name__ == 'FeatureStem' for e in model.encoders.values())
    hist = _train(model, b)
    assert sum(hist[-3:]) / 3 < sum(hist[:3]) / 3, (name, hist)
    emb = model.embed(b)
    assert set(emb) == {IMAGE, SPEECH, TEXT} and all(torch.isfinite(e).all() for e in emb.values())

@pytest.mark.parametrize('name', list(BUILDERS))
def test_config_recorded_once_and_rebuilds(name, synth):
    "`model.config` is plain JSON with every builder argument, and the registry rebuilds the same architecture from it"
    ds, b, dims = synth
    model = BUILDERS[name](b.modalities, dims)
    cfg = json.loads(json.dumps(model.config))
    assert cfg['model'] == name and cfg['modalities'] == list(b.modalities) and cfg['dims'] == json.loads(json.dumps(dims))
    import inspect
    assert set(cfg) - {'model'} == set(inspect.signature(MODELS[name]).parameters)
    again = rebuild(cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert again.config == model.config

@pytest.mark.parametrize('name', list(BUILDERS))
def test_padding_to_a_fixed_length_changes_nothing(name):
    "loaders may pad text to max_len (64) while items are shorter: every model (OPT's token targets too) gives the same losses"
    ds, b, dims = tiny_synth(8, seed=0)
    t, mk = b.x[TEXT], b.mask[TEXT]  # padded by hand to 64: `collate_items` pads only to the longest item
    grow = lambda v: torch.cat([v, v.new_zeros(v.shape[0], 64 - v.shape[1], *v.shape[2:])], 1)
    bp = ModalityBatch({**b.x, TEXT: grow(t)}, {**b.mask, TEXT: grow(mk)}, b.present, b.ids, b.y, b.extra)
    assert bp.x[TEXT].shape[1] == 64 > b.x[TEXT].shape[1]
    torch.manual_seed(0); model = BUILDERS[name](b.modalities, dims).eval()
    set_seed(0); o1 = model((b,))
    set_seed(0); o2 = model((bp,))
    assert set(o1.losses) == set(o2.losses)
    for k in o1.losses: assert torch.allclose(o1.losses[k], o2.losses[k], atol=1e-5), (k, o1.losses[k], o2.losses[k])

def test_trains_on_a_manifest_of_precomputed_features(tmp_path):
    "issue 12 end to end: `<m>_features` .npy files in a manifest -> Source.feature_dims -> input_dims -> FeatureStem for each -> loss falls"
    import numpy as np
    from cmrl.data.loaders import get_source, source_dls
    from cmrl.core import ModalityBatch
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        np.save(tmp_path / f"img{i}.npy", rng.standard_normal(12).astype('float32'))  # a [D] vector per item (e.g. VGG19)
        np.save(tmp_path / f"sp{i}.npy", rng.standard_normal((6 + i % 3, 10)).astype('float32'))  # [T, D] (e.g. VGGish frames)
        rows.append({'id': f"x{i}", 'image_features': f"img{i}.npy", 'speech_features': f"sp{i}.npy", 'label': 'ab'[i % 2]})
    (tmp_path / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    src = get_source(str(tmp_path / 'm.jsonl'), valid_pct=0.25)
    assert src.feature_dims == {IMAGE: 12, SPEECH: 10}
    dls = source_dls(src, bs=8, cache=False, shuffle_train=False)
    b = ModalityBatch.of(dls.train.one_batch())
    dims = input_dims(b, features=src.feature_dims)
    assert dims == {IMAGE: dict(in_dim=12), SPEECH: dict(in_dim=10)}
    set_seed(0)
    model = BUILDERS['unicode'](b.modalities, dims)
    assert {type(e.stem).__name__ for e in model.encoders.values()} == {'FeatureStem'}
    hist = _train(model, b, steps=10)
    assert sum(hist[-3:]) / 3 < sum(hist[:3]) / 3, hist
