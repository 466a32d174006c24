"""Image-generation benchmark (issue 29, item 3): pictures from captions and from recordings, French Tux Paint split.

Protocol (the goals of issue 29 are checked here and written beside the numbers):

* For each seed (default 0, 1, 2): `cmrl train --data MANIFEST --decoders image --seed S` with every other setting at
  its default (frozen EfficientNet-Lite0 pictures, frozen Whisper-base speech, bytes+wordvec text, Uni-Code with
  item-level codes, best weights by validation R@10). The image decoder trains **after** the encoders on their frozen
  features (`cmrl.models.decoders.fit_image_decoder`): stage one (VQ tokenizer, 32 px, 8x8 = 64 codes of 256) on the
  training pictures, stage two (code prior) on one example per (training item, source), its memory the source's pooled
  embedding, quantised steps and pre-quantisation steps, dropped with probability 0.2 for classifier-free guidance;
  the epoch of lowest validation loss is kept.
* An independent scorer: `cmrl.eval.imagegen.fit_image_classifier`, a small CNN trained (seed S) on the real training
  pictures, never on cmrl's codes or encoders.
* Choices on the valid part only: the guidance weight w and top-k, by the classifier's mean accuracy on pictures
  generated from the valid captions and recordings; the test part is scored once per seed with them.
* Test rows, from captions and from recordings (one picture per test item): the classifier's accuracy on the
  generated pictures, against the query's category and against another test item's (the shuffled control, a seeded
  derangement); chance and the majority class; the fraction of test query pairs whose pictures differ by more than
  8/255 (mean absolute difference, 32-px pictures upsampled to 64 px); distinct pictures; each generated picture's
  distance to its nearest training picture beside the real test pictures' (a copy is at 0).
  Beside them: the **retrieval peer** (the training picture nearest to the query by cmrl's cross-modal retrieval,
  cosine of the pooled embeddings), the **upper bound** (a prior of the same size whose memory is the stage-one codes
  of a picture, fed the codes of another held-out picture of the query's category), stage one's reconstruction error
  and the classifier on the reconstructed test pictures, and the prior's validation loss with the true memory, with no
  memory and with another item's memory (what the memory tells it).

    python benchmarks/imagegen.py --work /tmp/imagegen --seeds 0,1,2   # writes benchmarks/imagegen.json (+ imagegen.png)
"""
import argparse, json, os, platform, time, warnings
from pathlib import Path
from cmrl.data.splits import write_manifests, read_split
ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
SOURCES = {'text': 'from captions', 'speech': 'from recordings'}
GRID = [dict(guidance=w, top_k=k) for w in (1., 3., 5.) for k in (None, 32)]  # chosen on valid
UB_EPOCHS = 30  # the upper bound's prior learns to copy its memory: more passes than the decoder's 12


def train_seed(manifest: Path, work: Path, seed: int, reuse: bool) -> dict:
    "`cmrl train --decoders image` (defaults otherwise) for one seed; its metrics.json"
    import cmrl.train as T
    run = work / f'run-s{seed}'
    if not (reuse and (run / 'metrics.json').exists()):
        T.train(quiet=True, data=str(manifest), decoders='image', seed=seed, threads=1, out=str(run), overwrite=True)
    return json.loads((run / 'metrics.json').read_text())


def part_inputs(model, src, ck, records: list) -> tuple[dict, dict]:
    "The image memory's inputs of some records (rows in their order) and every modality's pooled embedding"
    import torch
    from cmrl.core import collate_items
    from cmrl.eval.ckpt import _subset, max_lengths
    from cmrl.models.decoders import cat_inputs, _map
    sub, ml = _subset(src, records), max_lengths(ck, src)
    mods = list(model.base.modalities)
    inps, emb = [], {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*nested tensors.*')
        for s in range(0, len(sub), 64):
            b = collate_items([sub[i] for i in range(s, min(s + 64, len(sub)))], modalities=mods,
                              shapes={m: v for m, v in src.shapes.items() if m in mods}, max_len=ml)
            out = model.represent(b)
            inps.append(_map(model.memory_inputs(b, out, which='image'), lambda t: t.cpu()))
            for m, e in out.emb.items(): emb.setdefault(m, []).append(e.float().cpu())
    return cat_inputs(inps), {m: torch.cat(v) for m, v in emb.items()}


def only(inp: dict, m: str) -> dict:
    "The memory inputs with every source but `m` absent"
    return {**inp, 'present': {k: (v if k == m else v & False) for k, v in inp['present'].items()}}


def draw(dec, inp: dict, m: str, seed: int, guidance: float, top_k, bs: int = 128):
    "One picture per item from source `m` with the given guidance and top-k (seeded)"
    import torch
    from cmrl.models.decoders import take_inputs
    g, pics = torch.Generator().manual_seed(seed), []
    x = only(inp, m)
    for s in range(0, len(x['present'][m]), bs):
        r = torch.arange(s, min(s + bs, len(x['present'][m])))
        xi = take_inputs(x, r)
        p, _ = dec.generate(xi['feats'], xi['masks'], xi['present'], n=1, top_k=top_k, temperature=1., generator=g,
                            extra=xi['extra'], guidance=guidance)
        pics.append(p[:, 0])
    return torch.cat(pics)


def upper_bound(dec, tr_codes, te_codes, te_labels: list, va_codes, va_labels: list, seed: int, choice: dict, clf):
    "A prior fed the stage-one codes of another held-out picture of the query's category: the pipeline's ceiling"
    import torch
    from cmrl.heads.imagegen import fit_code_prior
    lookup = lambda c: dec.tok.codebook.lookup(c).detach().float()
    pc = dict(dec.prior.config)
    prior, _ = fit_code_prior(tr_codes, lookup(tr_codes), epochs=UB_EPOCHS, lr=1e-3, wd=0.01, seed=seed, p_uncond=dec.p_uncond,
                              valid=(va_codes, lookup(va_codes), None),
                              **{k: pc[k] for k in ('n_codes', 'seq_len', 'd_model', 'n_heads', 'n_layers', 'ff_mult', 'dropout')})
    g = torch.Generator().manual_seed(seed)
    pool = [(c, l) for c, l in zip(te_codes, te_labels)] + [(c, l) for c, l in zip(va_codes, va_labels)]
    src_codes, n_te = [], len(te_labels)
    for i, l in enumerate(te_labels):  # another held-out picture of the same category (test first, else valid)
        cand = [j for j, (_, lj) in enumerate(pool) if lj == l and j != i]
        j = cand[int(torch.randint(len(cand), (1,), generator=g))] if cand else i
        src_codes.append(pool[j][0])
    mem = lookup(torch.stack(src_codes))
    codes = prior.sample(mem, k=1, top_k=choice['top_k'], generator=g, guidance=choice['guidance'])[:, 0]
    pics = dec.tok.decode(codes)
    return pics, clf.accuracy(pics, te_labels)


def score_seed(work: Path, manifest: Path, seed: int, clf_epochs: int, reuse: bool) -> dict:
    "Valid choice and test scores of one seed's run"
    import torch
    from cmrl.eval.ckpt import load_generator, ckpt_source
    from cmrl.eval.textgen import derangement
    from cmrl.eval.imagegen import (manifest_pictures, fit_image_classifier, reference_accuracies, reconstruction_error,
                                    mean_picture_error, pairwise_difference, nearest_picture)
    torch.set_num_threads(1)
    model, ck = load_generator(work / f'run-s{seed}', 'best', 'cpu')
    dec, src = model.image, ckpt_source(ck)
    S = dec.tok.image_size
    pics = {p: manifest_pictures(manifest, p, S) for p in ('train', 'valid', 'test')}
    recs = {p: [r for r in src.split('all') if str(r['id']) in set(pics[p]['ids'])] for p in pics}
    order = {p: {str(r['id']): k for k, r in enumerate(recs[p])} for p in pics}
    for p in pics:  # the records in the pictures' order
        recs[p] = [recs[p][order[p][i]] for i in pics[p]['ids']]
    inp, emb = {}, {}
    for p in pics: inp[p], emb[p] = part_inputs(model, src, ck, recs[p])
    clf, _ = fit_image_classifier(pics['train']['images'], pics['train']['labels'],
                                  valid=(pics['valid']['images'], pics['valid']['labels']), epochs=clf_epochs, seed=seed)
    vl, tl, trl = pics['valid']['labels'], pics['test']['labels'], pics['train']['labels']
    # the choice, on valid only
    valid = []
    for c in GRID:
        acc = {m: clf.accuracy(draw(dec, inp['valid'], m, seed, **c), vl) for m in SOURCES}
        valid.append({**c, 'accuracy': acc, 'mean': sum(acc.values()) / len(acc)})
    choice = {k: v for k, v in max(valid, key=lambda r: r['mean']).items() if k in ('guidance', 'top_k')}
    from cmrl.models.decoders import image_examples, _prior_losses
    vhas = torch.ones(len(vl), dtype=torch.bool)
    vex, vrows = image_examples(inp['valid'], vhas)
    prior_valid = _prior_losses(dec, vex, dec.tok.encode(pics['valid']['images'])[vrows])  # true / no / another item's memory
    # the test part, once
    perm = derangement(len(tl), seed).tolist()
    real = pics['test']['images']
    real_near, _ = nearest_picture(real, pics['train']['images'])
    ref = reference_accuracies(trl, tl)
    out = {'choice': choice, 'valid': valid, 'prior_valid': prior_valid, 'real_accuracy': clf.accuracy(real, tl), **ref,
           'recon': reconstruction_error(dec.tok, real), 'mean_picture': mean_picture_error(pics['train']['images'], real),
           'recon_accuracy': clf.accuracy(dec.tok.decode(dec.tok.encode(real)), tl),
           'real_nearest_train': {'mean': real_near.mean().item(), 'min': real_near.min().item()}, 'from': {}, 'examples': {}}
    tr_img = torch.nn.functional.normalize(emb['train']['image'], dim=-1)
    for m in SOURCES:
        g = draw(dec, inp['test'], m, seed, **choice)
        near, _ = nearest_picture(g, pics['train']['images'])
        nn_ = (torch.nn.functional.normalize(emb['test'][m], dim=-1) @ tr_img.T).argmax(1)  # the retrieval peer
        peer = pics['train']['images'][nn_]
        out['from'][m] = {'generated_accuracy': clf.accuracy(g, tl), 'shuffled_accuracy': clf.accuracy(g, [tl[j] for j in perm]),
                          'pairs': pairwise_difference(g, 8., 64), 'distinct': len({tuple(x.flatten().tolist()) for x in (g * 255).round().byte()}),
                          'nearest_train': {'mean': near.mean().item(), 'min': near.min().item(),
                                            'below_real_min': (near < real_near.min()).float().mean().item()},
                          'retrieval_accuracy': clf.accuracy(peer, tl), 'retrieval_shuffled': clf.accuracy(peer, [tl[j] for j in perm]),
                          'n': len(tl)}
        out['examples'][m] = g
        out['examples'][m + '_peer'] = peer
    ub_pics, ub_acc = upper_bound(dec, dec.tok.encode(pics['train']['images']), dec.tok.encode(real), tl,
                                  dec.tok.encode(pics['valid']['images']), vl, seed, choice, clf)
    out['upper_bound'] = {'accuracy': ub_acc, 'shuffled_accuracy': clf.accuracy(ub_pics, [tl[j] for j in perm])}
    out['examples']['real'] = real
    out['examples']['texts'] = pics['test']['texts']; out['examples']['labels'] = tl
    return out


def goals(mean: dict) -> dict:
    "Issue 29's goals on the mean over seeds, each with its margin"
    out = {}
    for m, what in SOURCES.items():
        r = mean[m]
        out[f'{what}: accuracy >= 2 x shuffled'] = {'met': r['generated_accuracy'] >= 2 * r['shuffled_accuracy'],
                                                    'margin': r['generated_accuracy'] - 2 * r['shuffled_accuracy']}
        out[f'{what}: accuracy > majority'] = {'met': r['generated_accuracy'] > mean['majority'],
                                               'margin': r['generated_accuracy'] - mean['majority']}
        out[f'{what}: pictures differ (> 8/255 at 64 px) for >= 50 % of query pairs'] = {
            'met': r['pairs_frac_above'] >= 0.5, 'margin': r['pairs_frac_above'] - 0.5}
    return out


def example_grid(ex: dict, path: Path, n: int = 10):
    "A PNG: for n test queries, the real picture, the pictures from the caption and the recording, the retrieval peers"
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, textwrap
    cols = [('real', 'real'), ('text', 'from caption'), ('speech', 'from recording'), ('text_peer', 'retrieved (caption)'),
            ('speech_peer', 'retrieved (recording)')]
    step = max(1, len(ex['labels']) // n)
    rows = list(range(0, step * n, step))[:n]
    fig, axs = plt.subplots(len(rows), len(cols), figsize=(1.3 * len(cols) + 2.2, 1.3 * len(rows)), squeeze=False)
    for a, i in enumerate(rows):
        for b, (k, name) in enumerate(cols):
            x = ex[k][i]
            x = x.float() / 255 if x.dtype.is_floating_point is False else x
            axs[a, b].imshow(x.permute(1, 2, 0).clamp(0, 1).numpy()); axs[a, b].set_xticks([]); axs[a, b].set_yticks([])
            if a == 0: axs[a, b].set_title(name, fontsize=7)
        axs[a, -1].yaxis.set_label_position('right')
        axs[a, -1].set_ylabel('\n'.join(textwrap.wrap(f"{ex['labels'][i]}: {ex['texts'][i]}", 26)[:3]), rotation=0,
                              ha='left', va='center', fontsize=7, labelpad=6)
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', required=True, help='folder for the manifest and the runs')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--clf-epochs', type=int, default=40)
    p.add_argument('--reuse', action='store_true', help='reuse the runs already in --work instead of training again')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'imagegen.json'))
    a = p.parse_args(argv)
    import numpy as np, torch
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(',')]
    manifest = write_manifests(read_split(SPLIT_FILE), work)['paths']['cmrl']
    t0 = time.time()
    res = {'command': f"python benchmarks/imagegen.py --work WORK --seeds {a.seeds} --clf-epochs {a.clf_epochs}" + (' --reuse' if a.reuse else ''),
           'train_command': 'cmrl train --data MANIFEST --decoders image --seed S --threads 1',
           'split_file': str(SPLIT_FILE.relative_to(ROOT)), 'seeds': seeds, 'grid': GRID,
           'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'load_before': os.getloadavg()[0]},
           'measured_at': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'per_seed': {}}
    examples = None
    for s in seeds:
        m = train_seed(manifest, work, s, a.reuse)
        cached = work / f'score-s{s}.pt'
        if a.reuse and cached.exists(): r = torch.load(cached, weights_only=False)
        else:
            r = score_seed(work, manifest, s, a.clf_epochs, a.reuse)
            torch.save(r, cached)
        ex = r.pop('examples')
        if examples is None: examples = ex
        d = m['image_decoder']
        r['train'] = {'fit_seconds': m.get('fit_seconds'), 'best': m.get('best'), 'n_train': m.get('n_train'),
                      'n_valid': m.get('n_valid'), 'image_decoder_seconds': d['seconds'], 'best_epoch': d['best_epoch'],
                      'tokenizer': d['tokenizer'], 'n_examples': d['n_examples']}
        r['pairs_frac_above'] = {k: v['pairs']['frac_above'] for k, v in r['from'].items()}
        res['per_seed'][str(s)] = r
        print(f"seed {s}: choice {r['choice']}; " + '; '.join(f"{k}: acc {v['generated_accuracy']:.3f} shuffled "
              f"{v['shuffled_accuracy']:.3f} pairs {v['pairs']['frac_above']:.2f}" for k, v in r['from'].items()), flush=True)
    P = list(res['per_seed'].values())
    mean = lambda f: float(np.mean([f(r) for r in P]))
    res['mean'] = {'majority': mean(lambda r: r['majority']), 'chance': mean(lambda r: r['chance']),
                   'real_accuracy': mean(lambda r: r['real_accuracy']), 'recon_accuracy': mean(lambda r: r['recon_accuracy']),
                   'recon_mse': mean(lambda r: r['recon']['mse']), 'recon_psnr': mean(lambda r: r['recon']['psnr']),
                   'mean_picture_mse': mean(lambda r: r['mean_picture']['mse']),
                   'upper_bound_accuracy': mean(lambda r: r['upper_bound']['accuracy']),
                   'upper_bound_shuffled': mean(lambda r: r['upper_bound']['shuffled_accuracy']),
                   'real_nearest_train': mean(lambda r: r['real_nearest_train']['mean']),
                   'prior_valid': {k: mean(lambda r: r['prior_valid'][k]) for k in ('valid_loss', 'valid_loss_uncond', 'valid_loss_shuffled')}}
    for m in SOURCES:
        f = lambda k: mean(lambda r: r['from'][m][k])
        res['mean'][m] = {'generated_accuracy': f('generated_accuracy'), 'shuffled_accuracy': f('shuffled_accuracy'),
                          'pairs_frac_above': mean(lambda r: r['from'][m]['pairs']['frac_above']),
                          'pairs_mean': mean(lambda r: r['from'][m]['pairs']['mean']),
                          'distinct': f('distinct'), 'nearest_train': mean(lambda r: r['from'][m]['nearest_train']['mean']),
                          'below_real_min': mean(lambda r: r['from'][m]['nearest_train']['below_real_min']),
                          'retrieval_accuracy': f('retrieval_accuracy'), 'retrieval_shuffled': f('retrieval_shuffled')}
    res['goals'] = goals(res['mean'])
    res['total_seconds'] = round(time.time() - t0, 1)
    png = Path(a.out).with_suffix('.png')
    example_grid(examples, png)
    res['examples_png'] = png.name
    Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: res[k] for k in ('mean', 'goals')}, indent=1, default=float))


if __name__ == '__main__': main()
