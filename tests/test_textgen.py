"""Text generation that follows its input (issue 29, item 2): the caption vocabulary, the memory parts, the decoder
trained after the encoders and chosen by validation chrF, and the scorer's paired bootstrap of CER / BLEU / chrF."""
import math, warnings
import numpy as np
import pytest, torch
from cmrl.heads.textdec import CaptionVocab, caption_tokens, CrossModalMemory, MEMORY_PARTS, TextDecoder, text_nll
from cmrl.eval.textgen import item_stats, corpus_score, bootstrap_scores, text_scores, SCORES

CAPTIONS = ['Une grenouille.', "L'arbre : un chêne !", 'Tux : la mascotte de Linux !', 'Une pièce de 2 centimes (0,02 €).',
            'Un « poisson » rouge...', 'Neptune, une des “géantes gazeuses”.']


@pytest.mark.parametrize('cap', CAPTIONS)
def test_caption_vocab_round_trip(cap):
    v = CaptionVocab.fit(CAPTIONS)
    assert v.decode(v.encode(cap)) == cap
    assert all(i >= 3 for i in v.encode(cap).tolist())  # every token known, none a special


def test_caption_tokens_mark_spaces():
    assert caption_tokens('Un chat.') == ['\u2581Un', '\u2581chat', '.']
    assert caption_tokens('a  b') == caption_tokens('a b')


def test_old_spec_memory_is_the_seeds():
    "A memory built without `parts` reads the codes alone, with the parameters of the seed's memory (old checkpoints load)"
    m = CrossModalMemory(['image'], 8, 16)
    assert m.parts == ('codes',) and sorted(k for k, _ in m.named_parameters()) == ['mod', 'null', 'proj.bias', 'proj.weight']
    full = CrossModalMemory(['image'], 8, 16, parts=MEMORY_PARTS)
    assert set(full.extra) == {'pooled', 'sem'}


def test_label_smoothing_gradient_and_value():
    lg = torch.randn(2, 3, 6, requires_grad=True)
    tgt, valid = torch.randint(0, 6, (2, 3)), torch.tensor([[True, True, False], [True, False, False]])
    l0, l1 = text_nll(lg, tgt, valid), text_nll(lg, tgt, valid, smoothing=0.2)
    lp = lg.detach().log_softmax(-1)
    by_hand = np.mean([0.8 * -lp[i, t, tgt[i, t]].item() + 0.2 * -lp[i, t].mean().item() for i, t in [(0, 0), (0, 1), (1, 0)]])
    assert abs(l1.item() - by_hand) < 1e-5 and l0.item() != l1.item()
    l1.backward(); assert torch.isfinite(lg.grad).all() and lg.grad[0, 2].abs().sum() == 0  # padding gets no gradient


def test_smoothing_only_in_training():
    dec = TextDecoder(5, d=16, n_layers=1, n_heads=2, max_len=8, dropout=0., token_drop=0., label_smoothing=0.5)
    y, ym, mem, mk = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool), torch.randn(1, 2, 16), torch.ones(1, 2, dtype=torch.bool)
    lt, le = dec.train().loss(y, ym, mem, mk), dec.eval().loss(y, ym, mem, mk)
    assert not math.isclose(lt.item(), le.item())


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_item_stats_sum_to_the_corpus_scores(seed):
    rng = np.random.default_rng(seed)
    words = ['un', 'une', 'chat', 'pomme', 'verte', 'rouge', '.']
    refs = [' '.join(rng.choice(words, rng.integers(1, 6))) for _ in range(12)]
    hyps = [' '.join(rng.choice(words, rng.integers(1, 6))) for _ in range(12)]
    st, ts = item_stats(hyps, refs), text_scores(hyps, refs)
    for s in SCORES: assert abs(corpus_score(s, st[s].sum(0)) - ts[s]) < 1e-9


def test_bootstrap_sides():
    "Better is below 0 for CER and above 0 for BLEU and chrF; a clear win is an interval that excludes 0"
    refs = [f'une pomme rouge et verte {c}' for c in 'abcdefghijklmnopqrst']
    good, bad = item_stats(refs, refs), item_stats(['un chat'] * len(refs), refs)
    bs = bootstrap_scores(good, bad, iters=300)
    assert bs['cer']['hi'] < 0 and bs['chrf']['lo'] > 0 and bs['bleu']['lo'] > 0 and all(v['better'] for v in bs.values())
    rev = bootstrap_scores(bad, good, iters=300)
    assert not any(v['better'] for v in rev.values())


@pytest.fixture(scope='module')
def after():
    "A tiny synthetic Uni-Code trained without its text decoder, then the decoder fitted after it (seconds)"
    from cmrl.core import set_seed as seed_all
    from cmrl.data.synth import SynthSource
    from cmrl.data.loaders import source_dls
    from cmrl.encoders import input_dims
    from cmrl.models.registry import make_model
    from cmrl.models.decoders import with_decoders, fit_text_decoder
    from cmrl.learner import cmrl_learner
    seed_all(0)
    src = SynthSource(64, n_valid=32, n_test=0, seed=0)
    dls = source_dls(src, bs=16, cache=True, device='cpu')
    xb, = dls.one_batch()
    base = make_model('unicode', list(src.modalities), input_dims(xb, vocab=src.text_vocab_size), d=32, steps=4, n_layers=1, n_codes=16)
    model = with_decoders(base, 'text', src, d=32, n_layers=1, n_heads=2, max_len=16, dropout=0., text_stage='after')
    learn = cmrl_learner(dls, model, lr=3e-3, mi_steps=1, progress=False, retrieval_k=None)
    with learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore'); learn.fit_one_cycle(10, 1e-2)
    rep = fit_text_decoder(model, dls.train.new(shuffle=False, drop_last=False), dls.valid, epochs=40, lr=5e-3, bs=8)
    return model, dls, rep


def test_after_decoder_follows_its_input(after):
    "The captions depend on the item: they beat the same decoder fed other items' inputs, and differ across items"
    from cmrl.models.decoders import loader_captions, write_captions, take_inputs
    from cmrl.eval.textgen import derangement
    model, dls, rep = after
    inp, refs = loader_captions(model, dls.valid)
    own = [c[0][0] for c in write_captions(model, inp)]  # from video and audio
    other = [c[0][0] for c in write_captions(model, take_inputs(inp, derangement(len(refs), 0)))]
    assert text_scores(own, refs)['chrf'] > text_scores(other, refs)['chrf'] + 2
    assert len(set(own)) >= 3, own  # several captions, one per kind of event it tells apart
    assert rep['valid_chrf'] == max(h['valid_chrf'] for h in rep['history'])


def test_after_decoder_leaves_the_encoders(after):
    model, _, _ = after
    assert model.text_stage == 'after' and 'gen_text' not in model.loss_names


def _fake_eval(seed: int) -> dict:
    "What `text_generation_eval(..., items=True)` returns, on six items, for the benchmark's pooling"
    from cmrl.eval.textgen import CONTROLS
    refs = ['Une grenouille verte.', 'Un chat noir.', 'Une pomme rouge.', 'Un lapin blanc.', 'La lettre A.', 'Deux.']
    outs = {'generated': refs[:5] + ['Trois.'], 'medoid': ['Une loutre.'] * 6, 'nearest': refs[1:] + refs[:1],
            'nearest_item': refs[2:] + refs[:2], 'shuffled': refs[3:] + refs[:3]}
    sets = {}
    for name in ('image', 'speech'):
        sets[name] = {'n': 6, 'distinct': len(set(outs['generated'])) / 6, **{w: text_scores(h, refs) for w, h in outs.items()},
                      'items': {'ids': [f'i{k}' for k in range(6)], 'true': refs, **outs}}
    return {'sets': sets, 'method': 'greedy'}


def test_benchmark_pools_seeds_and_names_missed_goals():
    from benchmarks import generation as G
    evs = [_fake_eval(s) for s in range(3)]
    pool = G.pooled(evs, iters=100)
    assert pool['image']['n_rows'] == 18 and pool['image']['n_items'] == 6
    assert abs(pool['image']['mean']['generated']['chrf'] - evs[0]['sets']['image']['generated']['chrf']) < 1e-9
    gl = G.goals(pool)
    assert gl['image: distinct outputs >= 50%'] and gl['image: beats medoid on CER, chrF and BLEU']
    pool['image']['distinct'] = 0.3; gl = G.goals(pool)
    sent = G.missed(pool, gl)
    assert any('30%' in s and 'pictures' in s for s in sent)
    ex = G.examples(evs[0])
    assert len(ex) == 10 and {e['query'] for e in ex} == {'image', 'speech'} and ex[0]['kind'] == 'good'


def test_mbr_captions_are_seeded_and_pick_the_consensus(after):
    "MBR over the decoder's own candidates: one seed gives the same captions; each is the pool's highest mean chrF"
    from cmrl.models.decoders import loader_captions, write_captions, take_inputs
    from cmrl.heads.textdec import mbr_select
    model, dls, _ = after
    inp, _ = loader_captions(model, dls.valid)
    x = take_inputs(inp, torch.arange(4))
    a = write_captions(model, x, method='mbr', samples=6, generator=torch.Generator().manual_seed(1))
    b = write_captions(model, x, method='mbr', samples=6, generator=torch.Generator().manual_seed(1))
    assert [c[0][0] for c in a] == [c[0][0] for c in b]
    greedy = write_captions(model, x, method='mbr', width=0, samples=0)
    assert [c[0][0] for c in greedy] == [c[0][0] for c in write_captions(model, x)]  # no samples, no beam: greedy
    order, eu = mbr_select(['un chat', 'un chat noir', 'un chat noir', 'une pomme'])
    assert order[0] == 1 and eu == sorted(eu, reverse=True)


def test_benchmark_methods_are_known():
    from benchmarks import generation as G
    assert {'greedy', 'beam', 'mbr'} <= set(G.METHODS) and all(m in ('greedy', 'beam', 'mbr') for m, _ in G.METHODS.values())
    with pytest.raises(SystemExit): G.main(['--work', '/nonexistent/never', '--methods', 'nucleus'])
