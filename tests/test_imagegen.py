"""OPT's two-stage image decoder (cmrl.heads.imagegen) and its evaluation (cmrl.eval.imagegen): stage one learns,
stage two learns, sampling is what it says, the independent classifier beats chance, bad inputs fail clearly."""
import io, json, math
import pytest
import torch
import torch.nn.functional as F
from cmrl.codebook import SharedCodebook
from cmrl.heads.imagegen import (ImageTokenizer, CodePrior, fit_tokenizer, fit_code_prior, top_k_probs, sequence_log_prob,
                                 toy_pictures, as_pixels)
from cmrl.eval.imagegen import (fit_image_classifier, reference_accuracies, reconstruction_error, mean_picture_error, psnr,
                                imagegen_report, show_generated)

SMALL_TOK = dict(n_codes=32, dim=16, width=32)
SMALL_PRIOR = dict(d_model=32, n_heads=2, n_layers=1)


@pytest.fixture(scope='module')
def pictures():
    (xtr, ytr), (xte, yte) = toy_pictures(256, 16, seed=1), toy_pictures(96, 16, seed=2)
    return xtr, ytr, xte, yte


@pytest.fixture(scope='module')
def trained_tok(pictures):
    xtr, _, xte, _ = pictures
    return fit_tokenizer(xtr, xte, epochs=8, bs=16, lr=3e-3, **SMALL_TOK)


def toy_pairs(n, seed, T=4, D=8, L=16, K=16):
    "(memory, codes, class, class sequences): each of 4 classes has a memory pattern and a code sequence (10% noise)"
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, T, D, generator=torch.Generator().manual_seed(99))
    seqs = torch.randint(K, (4, L), generator=torch.Generator().manual_seed(98))
    y = torch.randint(4, (n,), generator=g)
    mem = protos[y] + 0.3 * torch.randn(n, T, D, generator=g)
    codes = torch.where(torch.rand(n, L, generator=g) < 0.1, torch.randint(K, (n, L), generator=g), seqs[y])
    return mem, codes, y, seqs


@pytest.fixture(scope='module')
def trained_prior():
    mem, codes, _, _ = toy_pairs(256, 0)
    vmem, vcodes, vy, seqs = toy_pairs(64, 1)
    prior, learn = fit_code_prior(codes, mem, epochs=10, lr=3e-3, valid=(vcodes, vmem, None), n_codes=16, **SMALL_PRIOR)
    return prior, learn, (vmem, vcodes, vy, seqs)


# ---------------------------------------------------------------------------------------------- stage one
def test_tokenizer_loss_falls_and_reconstruction_improves(pictures, trained_tok):
    xtr, _, xte, _ = pictures
    tok, learn = trained_tok
    valid = [v[0] for v in learn.recorder.values]
    assert valid[-1] < 0.5 * valid[0], valid
    before = reconstruction_error(ImageTokenizer(image_size=16, **SMALL_TOK).eval(), xte)['mse']
    after = reconstruction_error(tok, xte)
    assert after['mse'] < 0.3 * before, (after, before)
    assert after['mse'] < 0.7 * mean_picture_error(xtr, xte)['mse']  # better than the no-model reference
    assert after['psnr'] == pytest.approx(10 * math.log10(1 / after['mse']))


def test_tokenizer_uses_the_shared_codebook(pictures, trained_tok):
    tok, learn = trained_tok
    assert isinstance(tok.codebook, SharedCodebook)
    assert int(tok.codebook.steps) == learn.train_iter  # one EMA update per training batch
    assert bool(tok.codebook.initted)  # k-means initialised on the first batch
    codes = tok.encode(pictures[2])
    assert codes.shape == (96, 16) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 32
    embed = tok.codebook.embed.clone()
    tok.encode(pictures[2]); tok.decode(codes)
    assert torch.equal(embed, tok.codebook.embed)  # inference does not move the codes
    assert codes.unique().numel() > 8  # the pictures use many codes, not one


def test_tokenizer_config_and_weights_roundtrip(pictures, trained_tok):
    tok, _ = trained_tok
    cfg = json.loads(json.dumps(tok.config))  # JSON-able, for checkpoints
    buf = io.BytesIO(); torch.save(tok.state_dict(), buf); buf.seek(0)
    tok2 = ImageTokenizer(**cfg); tok2.load_state_dict(torch.load(buf, weights_only=True)); tok2.eval()
    x = pictures[2][:8]
    assert torch.equal(tok2.encode(x), tok.encode(x)) and torch.allclose(tok2.decode(tok2.encode(x)), tok.decode(tok.encode(x)))


def test_tokenizer_loss_terms():
    tok = ImageTokenizer(image_size=16, recon='l1', **SMALL_TOK)
    x = toy_pictures(4, 16)[0]
    out = tok(x)
    assert out.loss.item() == pytest.approx((out.losses['recon'] + out.losses['commit']).item(), rel=1e-6)
    with torch.no_grad():
        raw = tok._pixels(tok.codebook.lookup(out.codes))
    assert out.losses['recon'].item() == pytest.approx(F.l1_loss(raw, x).item(), rel=1e-5)
    assert 0 <= out.recon.min() and out.recon.max() <= 1


def test_tokenizer_gradients_pass_the_quantiser():
    "Straight-through: the reconstruction loss reaches the encoder; the commitment gradient is 2 beta (z - e) / (N D)"
    tok = ImageTokenizer(image_size=16, init='random', **SMALL_TOK)
    x = toy_pictures(4, 16)[0]
    out = tok(x)
    out.losses['recon'].backward(retain_graph=True)
    g_recon = tok.encoder[0].weight.grad.clone()
    assert g_recon.abs().sum() > 0  # through the codes to the encoder
    assert not list(tok.codebook.parameters())  # the codes are buffers moved by the EMA update, not by gradients
    z = tok._feats(x).detach().requires_grad_(True)
    cb = tok.codebook(z, update=False)
    cb.loss.backward()
    e = tok.codebook.lookup(cb.indices)
    assert torch.allclose(z.grad, 2 * 0.25 * (z - e).detach() / (z[..., 0].numel() * 16), atol=1e-7)


def test_prior_gradients_reach_the_memory():
    prior = CodePrior(n_codes=8, seq_len=6, d_memory=4, **SMALL_PRIOR)
    mem = torch.randn(3, 5, 4, requires_grad=True)
    prior.loss(torch.randint(8, (3, 6)), mem).backward()
    assert mem.grad.abs().sum() > 0 and prior.mem_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('bad, msg', [
    (lambda t: t(torch.rand(2, 3, 16, 16) * 2 - 1), '[0, 1]'),
    (lambda t: t(torch.rand(2, 3, 32, 32)), '16x16'),
    (lambda t: t(torch.rand(2, 1, 16, 16)), '[B, 3, H, W]'),
    (lambda t: t(torch.zeros(2, 3, 16, 16, dtype=torch.int32)), 'uint8'),
    (lambda t: t.decode(torch.zeros(2, 15, dtype=torch.long)), '[B, 16]'),
    (lambda t: t.decode(torch.full((2, 16), 32)), '[0, 32)'),
    (lambda t: ImageTokenizer(image_size=20, n_down=3), 'divisible'),
    (lambda t: ImageTokenizer(recon='ssim'), "'mse' or 'l1'"),
])
def test_tokenizer_bad_inputs(bad, msg):
    tok = ImageTokenizer(image_size=16, **SMALL_TOK)
    with pytest.raises((ValueError, TypeError), match=msg.replace('[', r'\[').replace(']', r'\]').replace('(', r'\(').replace(')', r'\)')):
        bad(tok)


def test_uint8_pictures_are_scaled():
    x = toy_pictures(3, 16)[0]
    assert torch.allclose(as_pixels((x * 255).round().to(torch.uint8)), x, atol=1 / 255)


# ---------------------------------------------------------------------------------------------- stage two
def test_prior_loss_falls_and_greedy_writes_the_class_sequence(trained_prior):
    prior, learn, (vmem, vcodes, vy, seqs) = trained_prior
    untrained = CodePrior(n_codes=16, seq_len=16, d_memory=8, **SMALL_PRIOR).eval()
    assert prior.loss(vcodes, vmem).item() < 0.5 * untrained.loss(vcodes, vmem).item()
    valid = [v[0] for v in learn.recorder.values]
    assert valid[-1] < valid[0], valid
    greedy = prior.sample(vmem, top_k=1)[:, 0]
    assert (greedy == seqs[vy]).float().mean() > 0.9  # the memory decides which sequence is written


def test_top_k_1_is_deterministic_and_greedy(trained_prior):
    prior, _, (vmem, *_) = trained_prior
    m = vmem[:6]
    a = prior.sample(m, k=3, top_k=1, generator=torch.Generator().manual_seed(1))
    b = prior.sample(m, k=3, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and torch.equal(a[:, 0], a[:, 2])
    assert torch.equal(a, prior.sample(m, k=3, temperature=0.))
    # greedy: every code is the argmax of the teacher-forced conditional on the greedy prefix
    assert torch.equal(prior(a[:, 0], m).argmax(-1), a[:, 0])


def test_sampling_is_seeded_and_stays_in_the_top_k(trained_prior):
    prior, _, (vmem, *_) = trained_prior
    m = vmem[:8]
    s1 = prior.sample(m, k=4, top_k=3, generator=torch.Generator().manual_seed(0))
    s2 = prior.sample(m, k=4, top_k=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and s1.shape == (8, 4, 16)
    for j in range(4):  # every sampled code is among the 3 most likely given its own prefix
        top3 = prior(s1[:, j], m).topk(3, -1).indices
        assert (top3 == s1[:, j, :, None]).any(-1).all()
    wide = prior.sample(m, k=16, top_k=None, temperature=3., generator=torch.Generator().manual_seed(0))
    assert wide[:, :, 0].unique().numel() > 3  # a hot full distribution does reach other codes


def test_prior_memory_mask():
    prior = CodePrior(n_codes=8, seq_len=6, d_memory=4, **SMALL_PRIOR).eval()
    mem, codes = torch.randn(3, 5, 4), torch.randint(8, (3, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).bool()
    mem2 = mem.clone(); mem2[~mask] = 100.  # change only the padded steps
    assert torch.allclose(prior(codes, mem, mask), prior(codes, mem2, mask), atol=1e-5)
    assert torch.isfinite(prior(codes, mem, mask)).all()  # the all-masked item reads the null slot
    assert not torch.allclose(prior(codes, mem, None), prior(codes, mem2, None))
    lp = prior.log_prob(codes, mem, mask)
    assert lp.shape == (3,) and torch.allclose(-lp.mean() / 6, prior.loss(codes, mem, mask), atol=1e-5)
    assert prior.loss(codes, mem, mask, present=torch.zeros(3, dtype=torch.bool)).item() == 0.


@pytest.mark.parametrize('bad, msg', [
    (lambda p: p(torch.randint(8, (2, 6)), torch.randn(2, 5, 3)), 'memory must be'),
    (lambda p: p(torch.randint(8, (2, 6)), torch.randn(2, 5, 4), torch.ones(2, 4, dtype=torch.bool)), 'mask must be'),
    (lambda p: p(torch.randint(8, (2, 7)), torch.randn(2, 5, 4)), '1 <= L <= 6'),
    (lambda p: p(torch.full((2, 6), 8), torch.randn(2, 5, 4)), r'\[0, 8\)'),
    (lambda p: p.sample(torch.randn(2, 5, 4), k=0), 'k must be'),
    (lambda p: p.sample(torch.randn(2, 5, 4), top_k=0), 'top_k must be'),
    (lambda p: CodePrior(d_model=30, n_heads=4), 'divisible'),
])
def test_prior_bad_inputs(bad, msg):
    with pytest.raises(ValueError, match=msg):
        bad(CodePrior(n_codes=8, seq_len=6, d_memory=4, **SMALL_PRIOR))


@pytest.mark.parametrize('k, t, want', [
    (2, 1., [0.625, 0.375, 0., 0.]),
    (1, 1., [1., 0., 0., 0.]),
    (None, 1., [0.5, 0.3, 0.15, 0.05]),
    (2, 2., [0.5**.5 / (0.5**.5 + 0.3**.5), 0.3**.5 / (0.5**.5 + 0.3**.5), 0., 0.]),
])
def test_top_k_probs(k, t, want):
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.allclose(top_k_probs(p.log(), k, t), torch.tensor(want), atol=1e-6)


def test_sequence_log_prob():
    lg = torch.log(torch.tensor([[[0.5, 0.5], [0.8, 0.2]]]))
    assert sequence_log_prob(lg, torch.tensor([[0, 1]])).item() == pytest.approx(math.log(0.1), rel=1e-6)


def test_stages_chain(pictures, trained_tok):
    "Codes of real pictures train the prior; sampled codes decode to pictures of the tokenizer's size"
    tok, _ = trained_tok
    xtr, ytr = pictures[:2]
    mem = F.one_hot(ytr, 4).float()[:, None]
    prior, _ = fit_code_prior(tok.encode(xtr), mem, epochs=2, n_codes=tok.n_codes, **SMALL_PRIOR)
    assert prior.seq_len == tok.seq_len and prior.d_memory == 4
    pics = tok.decode(prior.sample(mem[:3], k=2, top_k=5).flatten(0, 1))
    assert pics.shape == (6, 3, 16, 16) and 0 <= pics.min() and pics.max() <= 1


# ---------------------------------------------------------------------------------------------- evaluation
SHAPES = ('square', 'disc', 'hbar', 'vbar')


def test_classifier_beats_chance_on_a_separable_set(pictures):
    xtr, ytr, xte, yte = pictures
    name = lambda y: [SHAPES[i] for i in y.tolist()]
    clf, learn = fit_image_classifier(xtr, name(ytr), valid=(xte, name(yte)), epochs=6, width=8, lr=1e-2)
    ref = reference_accuracies(name(ytr), name(yte))
    acc = clf.accuracy(xte, name(yte))
    assert ref['chance'] == 0.25 and acc > ref['chance'] + 0.3 and acc > ref['majority'] + 0.3, (acc, ref)
    assert acc == pytest.approx(float(learn.recorder.values[-1][2]))  # the fastai metric on the same pictures
    # the report: real accuracy, generated accuracy (here: the test pictures themselves, twice), the references
    rep = imagegen_report(clf, name(ytr), xte, name(yte), generated=torch.stack([xte[:10], xte[:10]], 1), generated_labels=name(yte[:10]))
    assert rep['real_accuracy'] == acc and rep['n_generated'] == 20
    assert rep['generated_accuracy'] == pytest.approx(clf.accuracy(xte[:10], name(yte[:10])))


def test_reference_accuracies():
    r = reference_accuracies(['a', 'a', 'b', 'c'], ['a', 'b', 'b', 'c'])
    assert r['chance'] == pytest.approx(1 / 3) and r['majority'] == 0.25 and r['n_classes'] == 3
    assert psnr(0.01) == pytest.approx(20.)


def test_classifier_bad_inputs(pictures):
    xtr = pictures[0][:8]
    with pytest.raises(ValueError, match='at least 2 categories'): fit_image_classifier(xtr, ['a'] * 8)
    with pytest.raises(ValueError, match='8 pictures but 3 labels'): fit_image_classifier(xtr, ['a', 'b', 'c'])
    with pytest.raises(ValueError, match='no label'): fit_image_classifier(xtr, ['a', 'b'] * 3 + [None, 'a'])


def test_show_generated(pictures):
    import matplotlib; matplotlib.use('Agg')
    x = pictures[2][:6]
    fig = show_generated(x.view(3, 2, 3, 16, 16), ['un chat', 'une grenouille', 'un ballon'], real=x[:3])
    assert len(fig.axes) == 9
    assert 'grenouille' in fig.axes[5].get_ylabel()
    with pytest.raises(ValueError, match='captions'): show_generated(x, ['one'])


# ---------------------------------------------------------------------------------------------- guidance (issue 29)
def test_guided_logits_is_a_tempered_product():
    "softmax(l_u + w (l_c - l_u)) = p_c^w p_u^(1-w), renormalised; w = 1 the conditional, w = 0 the unconditional"
    from cmrl.heads.imagegen import guided_logits
    g = torch.Generator().manual_seed(0)
    lc, lu = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    for w in (0., 1., 2., 5.):
        q = lc.softmax(-1) ** w * lu.softmax(-1) ** (1 - w)
        assert torch.allclose(guided_logits(lc, lu, w).softmax(-1), q / q.sum(-1, keepdim=True), atol=1e-5)
    assert torch.equal(guided_logits(torch.tensor([2., 0.]), torch.tensor([1., 0.]), 3.), torch.tensor([4., 0.]))


def test_drop_memory_drops_whole_rows_at_p():
    from cmrl.heads.imagegen import drop_memory
    m = torch.ones(4000, 5, dtype=torch.bool)
    d = drop_memory(m, 0.3, torch.Generator().manual_seed(1))
    gone = ~d.any(1)
    assert (d.all(1) | gone).all() and abs(gone.float().mean().item() - 0.3) < 0.03
    part = torch.tensor([[True, False], [False, False]])
    assert torch.equal(drop_memory(part, 0.), part) and not (drop_memory(part, 0.99, torch.Generator().manual_seed(0)) & ~part).any()
    with pytest.raises(ValueError, match=r'\[0, 1\)'): drop_memory(part, 1.)


def test_guidance_zero_ignores_the_memory_and_one_is_unguided(trained_prior):
    prior, _, (vmem, *_) = trained_prior
    u = prior.sample(vmem[:6], top_k=1, guidance=0.)[:, 0]
    assert (u == u[:1]).all()  # the unconditional prior: one greedy sequence for every memory
    g = lambda w: prior.sample(vmem[:6], k=2, top_k=4, generator=torch.Generator().manual_seed(3), guidance=w)
    assert torch.equal(g(1.), prior.sample(vmem[:6], k=2, top_k=4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match='guidance'): g(float('nan'))


def test_prior_with_dropped_memories_learns_both(trained_prior):
    "p_uncond > 0: the prior's loss with the null slot alone stays finite and above its conditional loss"
    mem, codes, _, _ = toy_pairs(256, 0)
    vmem, vcodes, _, _ = toy_pairs(64, 1)
    prior, _ = fit_code_prior(codes, mem, epochs=10, lr=3e-3, n_codes=16, p_uncond=0.2, **SMALL_PRIOR)
    none = torch.zeros(vmem.shape[:2], dtype=torch.bool)
    lc = F.cross_entropy(prior(vcodes, vmem)[:, 0], vcodes[:, 0]).item()
    lu = F.cross_entropy(prior(vcodes, vmem, none)[:, 0], vcodes[:, 0]).item()
    assert lc < 0.75 * lu and math.isfinite(lu), (lc, lu)


# ---------------------------------------------------------------------------------------------- query dependence
def test_pairwise_difference_and_nearest_picture(pictures):
    from cmrl.eval.imagegen import pairwise_difference, nearest_picture, picture_distances
    x = pictures[2][:12]
    same = x[:1].repeat(12, 1, 1, 1)
    assert pairwise_difference(same)['frac_above'] == 0. and pairwise_difference(same)['mean'] == pytest.approx(0., abs=1e-4)
    r = pairwise_difference(x, size=64)
    assert r['n_pairs'] == 66 and r['size'] == 64 and r['frac_above'] > 0.5  # different toy pictures differ
    d = picture_distances(x[:3], x[3:5])
    assert d.shape == (3, 2) and d[0, 0].item() == pytest.approx(255 * (x[0] - x[3]).abs().mean().item(), rel=1e-4)
    v, i = nearest_picture(torch.cat([x[5:6], x[:1] * 0.5 + 0.5]), x[3:8])
    assert v[0].item() == pytest.approx(0., abs=1e-4) and i[0].item() == 2 and v[1] > 0  # a copy is at 0


def test_cmrl_train_decoders_image_at_default_steps(tmp_path):
    "`cmrl train --decoders image` needs no --steps: the image decoder trains after the encoders, guided, and generates"
    import json
    from pathlib import Path
    from cmrl.testing import invoke
    from cmrl.train import train_cli
    from cmrl.generate import generate_cli
    rc, out, err = invoke(train_cli, ['--data', 'synth', '--n-train', '32', '--n-valid', '8', '--epochs', '1', '--bs', '16',
                                      '--d', '16', '--n-layers', '1', '--quiet', '--threads', '1', '--decoders', 'image',
                                      '--out', str(tmp_path / 'run')])
    assert rc == 0, err
    m = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    d = m['image_decoder']
    assert d['n_examples'] == 2 * d['n_train'] and d['valid_loss'] == min(h['valid_loss'] for h in d['history'])
    assert all('valid_loss_uncond' in h and 'valid_loss_shuffled' in h for h in d['history'])
    assert '"gen_image"' not in json.dumps(m['loss_history'])  # not in the model's loss
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['steps'] == 1
    rc, out, err = invoke(generate_cli, ['--ckpt', str(tmp_path / 'run'), '--query', 'a red circle', '--to', 'image', '--k', '2',
                                         '--out', str(tmp_path / 'pics'), '--device', 'cpu'])
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res['guidance'] == 3. and len(res['results']) == 2 and all(Path(r['file']).is_file() for r in res['results'])
