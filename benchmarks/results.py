"""Results benchmark: cmrl's models against an independent from-scratch reference on one committed split, one scorer.

Protocol (fixed once; the tutorial `nbs/tutorials/unicode_tuxpaint.ipynb` renders what this writes):

* **One split, committed**: `benchmarks/splits/tuxpaint_fr.json` lists the item ids of the French Tux Paint
  train / valid / test parts (cmrl's grouped split: variants that share a recording, a text or a name never
  straddle parts). Only stamps with a **PNG** picture, a French spoken description and a French text are in it:
  SVG-only stamps are left out of **every** row (the reference reads pictures with PIL), so every row trains and
  is scored on exactly the same items. `--make-split LANG` writes the same kind of file for another language.
* **One scorer**: every row (cmrl's models and the reference, whose `--dump` saves its embeddings) is scored by
  `cmrl.eval.benchmark.score`: cmrl's own retrieval code (`cross_modal_retrieval`: cosine similarity, the same
  false-negative mask: other members of a query's group are neither hits nor negatives; ties count against the
  query) and cmrl's own linear probe (`LinearProbe`, C chosen by stratified cross-validation on the fitting
  modality's training items only).
* **Label-free training**: no row trains with category labels; labels are used only by the probes.
* **Tune on valid, report test**: `--split valid` scores the valid part (for choices), `--split test` the test
  part (once per seed). Training never sees test items; `cmrl train` may use the valid part for model selection.
* Probes: fit on modality A's training items, scored on modality B's items of the scored part. Codebook models
  are probed on their **quantised** features (the Uni-Code protocol) and, shown beside, on their embeddings.
* Codebook health on the scored part: chance-corrected agreement kappa = (p_o - p_e) / (1 - p_e) per modality pair
  (`cmrl.eval.report.code_kappa`; p_o: paired items whose most frequent codes coincide; p_e = sum_k p_a(k) p_b(k)
  from the items' most frequent codes; undefined, NaN, where p_e = 1), per-modality perplexity, and codes-only
  retrieval: the cosine of the items' code vectors (the codebook's vectors of each item's codes, the shared code and
  any residual codes the model keeps; `CrossModalModel.code_vectors`), and beside it tf-idf bags of the shared codes.
  LSH of the embeddings with as many bits as the codes carry (steps x codes per step x log2 K) is scored beside them.
* Reference rows: chance (retrieval: a random ranking under the same mask; probes: 1 / classes), majority class
  (fit on train), and the no-learning length reference for speech <-> text (`cmrl.eval.report.length_reference`
  on seconds and characters: duration ~ a * characters + b).

Usage (from the repository root, with the project's venv; `python -m benchmarks.results ...` works the same):

    python benchmarks/results.py --split valid --seeds 0 --models unicode           # a tuning run
    python benchmarks/results.py --split test --seeds 0,1 --reference ../shared/reference/clip_baseline.py
    python benchmarks/results.py --quick                                             # a smoke test (minutes)

Writes `benchmarks/results.json` (or `--out`); `--merge` keeps the rows of an existing file that this run does
not redo. Training goes through the public CLI (`cmrl train --data MANIFEST ...`); extra `cmrl train` options
for every cmrl row: `--train-args "--epochs 40 --image-size 64"`.
"""
from __future__ import annotations
import argparse, json, os, shlex, subprocess, sys, tempfile, time, warnings
from pathlib import Path
import torch
from cmrl.data.splits import make_split, read_split, write_manifests
import numpy as np
from cmrl.eval.benchmark import MODS, Part, score, leaves, aggregate, bootstrap_interval

ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
MODELS = ('unicode', 'liu2022', 'plain_codebook', 'continuous')


# ----------------------------------------------------------------------------- the length reference
def length_features(rows: list) -> 'Features':
    "Manifest rows as `Features` with lengths in seconds of speech and characters of text (for `length_reference`)"
    import soundfile as sf
    from cmrl.eval.generalization import Features
    n, mods = len(rows), ('speech', 'text')
    lengths = {'speech': torch.tensor([sf.info(r['speech']).duration for r in rows], dtype=torch.float64),
               'text': torch.tensor([float(len(r['text'])) for r in rows], dtype=torch.float64)}
    return Features(ids=[r['id'] for r in rows], y=torch.full((n,), -1), emb={m: torch.zeros(n, 0) for m in mods},
                    feats={}, mask={}, codes={}, present={m: torch.ones(n, dtype=torch.bool) for m in mods},
                    extra={'group': [r['group'] for r in rows]}, lengths=lengths)

def length_row(rows: list, part: str) -> dict:
    "No-learning speech <-> text ranking by |duration - a * characters - b|, (a, b) fit on the training part"
    from cmrl.eval.report import length_reference
    res = length_reference(length_features([r for r in rows if r['split'] == 'train']),
                           length_features([r for r in rows if r['split'] == part]))
    a, b = res['speech->text']['a'], res['speech->text']['b']
    return {'retrieval': {k: {m: v[m] for m in ('R@1', 'R@10', 'medr')} for k, v in res.items()}, 'a': a, 'b': b}


# ----------------------------------------------------------------------------- rows
def _cmrl_cmd() -> list:
    exe = Path(sys.executable).parent / 'cmrl'
    return [str(exe)] if exe.exists() else [sys.executable, '-c', 'import sys; from cmrl.cli import main; sys.exit(main())']

def cmrl_parts(run: Path, manifest: Path, part: str, train: bool = True) -> tuple:
    "Frozen features of the training part (None when not `train`) and of `part` from a `cmrl train` output folder (its best weights)"
    from cmrl.checkpoint import load_model
    from cmrl.eval.ckpt import ckpt_source, usable_modalities, max_lengths, records_features, semantic_embeddings
    model, ck = load_model(run, weights='best')
    src = ckpt_source(ck, str(manifest))
    mods = [m for m in MODS if m in usable_modalities(model, src)]
    K = getattr(getattr(model, 'codebook', None), 'n_codes', None)
    ml = max_lengths(ck, src)
    out = [] if train else [None]
    for p in (('train', part) if train else (part,)):
        recs = src.split(p)
        fe = records_features(model, src, recs, mods, max_len=ml)
        meta = {str(r['id']): r for r in recs}
        groups, labels = [meta[str(i)]['group'] for i in fe.ids], [meta[str(i)]['category'] for i in fe.ids]
        if fe.codes:  # codebook model: probe the quantised features; continuous = pre-quantisation semantic features
            sem = semantic_embeddings(model, src, [meta[str(i)] for i in fe.ids], mods, max_len=ml)
            out.append(Part(fe.ids, groups, labels, fe.emb, fe.pooled('mean'), dict(fe.codes), sem, fe.code_pooled()))
        else: out.append(Part(fe.ids, groups, labels, fe.emb))
    return out[0], out[1], K, ck.get('weights')

def extra_language_manifest(manifest: Path, langs: str, out: Path) -> dict:
    "`manifest` (the split's rows) plus the pairs in `langs` of the stamps of its training part, marked `train` and in "
    "their stamp's group: more recordings and texts of the same training pictures; valid and test stay as they were"
    from collections import Counter
    from cmrl.data.loaders import get_source
    rows = [json.loads(l) for l in manifest.read_text(encoding='utf-8').splitlines()]
    stamp = lambda i: i.rsplit(':', 1)[0]
    train = {stamp(r['id']): r for r in rows if r['split'] == 'train'}
    langs = [l for l in langs.split(',') if l.strip()]
    if set(langs) & {r['lang'] for r in rows}: raise ValueError(f"--extra-langs {','.join(langs)}: give languages other than the split's")
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        recs = get_source('tuxpaint', langs=','.join(langs), modalities=('image', 'text', 'speech')).records
    extra = [{'id': r['id'], 'image': r['image'], 'speech': r['speech'], 'text': r['text'], 'label': t['label'],
              'lang': r['id'].rsplit(':', 1)[1], 'split': 'train', 'group': t['group']}
             for r in recs if (t := train.get(stamp(r['id']))) and r.get('speech') and r.get('text') and r.get('image') == t['image']]
    out.write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows + extra), encoding='utf-8')
    return {'path': str(out), 'split_rows': len(rows), 'extra_train_pairs': dict(Counter(r['lang'] for r in extra))}

def run_cmrl(model: str, seed: int, manifest: Path, work: Path, part: str, train_args: list, reuse: bool = False,
             train_manifest: Path | None = None) -> dict:
    "Train one cmrl row (on `train_manifest` where given, else `manifest`) and score it on `manifest`'s parts"
    run = work / f'{model}-s{seed}'
    cmd = _cmrl_cmd() + ['train', '--data', str(train_manifest or manifest), '--model', model, '--seed', str(seed), '--out', str(run), '--quiet', *train_args]
    print('  $', ' '.join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    t = time.time()
    if not (reuse and (run / 'metrics.json').exists()):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0: raise RuntimeError(f"cmrl train failed ({p.returncode}):\n{p.stderr[-3000:]}")
    wall = time.time() - t
    summ = json.loads((run / 'metrics.json').read_text())
    tr, te, K, weights = cmrl_parts(run, manifest, part)
    res = score(tr, te, K, seed, per_item=True)
    if K and te.codes: res['lsh_same_bits'] = lsh_same_bits(te, K, seed, code_levels(run))
    res.update(weights=weights, train_seconds=summ.get('fit_seconds'), wall_seconds=round(wall, 1), n_params=summ.get('n_params'),
               command=' '.join(cmd[len(_cmrl_cmd()):]))
    return res

# ----------------------------------------------------------------------------- the cascade peer
def transcripts(work: Path, rows: list, part: str, lang: str) -> dict:
    "Whisper's transcript of every recording of `part` (id -> text), cached in `work`"
    f = work / f'transcripts-{part}.json'
    if f.exists(): return json.loads(f.read_text(encoding='utf-8'))
    from cmrl.data.whisper import WhisperFrontend, SpeechConfig
    todo = [r for r in rows if r['split'] == part]
    said = WhisperFrontend(SpeechConfig('whisper_base')).transcribe([r['speech'] for r in todo], lang=lang)
    out = {r['id']: t for r, t in zip(todo, said)}
    f.write_text(json.dumps(out, ensure_ascii=False, indent=0), encoding='utf-8')
    return out

def run_cascade(seed: int, manifest: Path, work: Path, part: str, lang: str, model: str = 'unicode') -> dict:
    "A recording stands in for its caption: its Whisper transcript through the text path of cmrl's `model` run"
    import jiwer
    run = work / f'{model}-s{seed}'
    if not (run / 'checkpoint.pt').exists(): raise FileNotFoundError(f"{run}: the cascade reads a {model} run; run that row first")
    rows = [json.loads(l) for l in manifest.read_text(encoding='utf-8').splitlines()]
    said = transcripts(work, rows, part, lang)
    tman = work / f'cmrl_transcripts_{part}.jsonl'
    tman.write_text(''.join(json.dumps({**r, 'text': said.get(r['id'], r['text'])}, ensure_ascii=False) + '\n' for r in rows),
                    encoding='utf-8')
    tr, te, _, _ = cmrl_parts(run, manifest, part)
    _, heard, _, _ = cmrl_parts(run, tman, part, train=False)  # only the scored part's transcripts differ
    assert heard.ids == te.ids
    # training part: the captions stand in for the recordings (the cascade has no speech of its own)
    train = Part(tr.ids, tr.groups, tr.labels, {**tr.emb, 'speech': tr.emb['text']}, {**tr.probe, 'speech': tr.probe['text']})
    test = Part(te.ids, te.groups, te.labels, {**te.emb, 'speech': heard.emb['text']}, {**te.probe, 'speech': heard.probe['text']})
    res = score(train, test, None, seed, per_item=True)
    truth = {r['id']: r['text'] for r in rows}
    res.update(transcript_cer=100 * jiwer.cer([truth[i] for i in te.ids], [said[i] for i in te.ids]),
               command=f"transcripts of the {part} recordings (Whisper-base, 30 s window, greedy) through {run.name}'s text path")
    return res

def code_levels(run: Path) -> int:
    "Codes per step that a trained model keeps (its `code_levels`; 1 for a model without residual codes)"
    cfg = json.loads((run / 'config.json').read_text()) if (run / 'config.json').exists() else {}
    return int((cfg.get('model_config') or {}).get('code_levels', 1))

def lsh_same_bits(te: Part, n_codes: int, seed: int, levels: int = 1) -> dict:
    "Random-hyperplane codes of the embeddings with as many bits as the items' codes carry (steps x levels x log2 K), Hamming-ranked"
    import math
    from cmrl.heads.hashing import lsh_codes
    from cmrl.metrics import cross_modal_retrieval
    steps = max(c.shape[-1] if torch.as_tensor(c).ndim == 2 else 1 for c in te.codes.values())
    bits = steps * levels * math.ceil(math.log2(n_codes))
    mods = [m for m in MODS if m in te.emb]
    codes = {m: lsh_codes(te.emb[m], bits, seed).float() for m in mods}  # +-1: the dot product is bits - 2 x Hamming
    r = cross_modal_retrieval(codes, ids=te.ids, groups=te.groups, metric='dot', chance=False)
    return {'bits': bits, **{k: {'R@10': v['R@10']} for k, v in r.items()}}

REF_TIME_BUDGET = '100000'  # the reference's own default wall-clock cap (450 s) cuts its 1000 steps short on a loaded machine

def _ref_files(work: Path, seed: int, part: str, kind: str = 'ref') -> tuple[Path, Path]:
    "Where one reference run dumps its embeddings and writes its own JSON"
    return work / f'{kind}-s{seed}-{part}.pt', work / f'{kind}-s{seed}-{part}.json'

def reference_command(script: Path, seed: int, paths: dict, work: Path, part: str, ref_args: list, kind: str = 'ref') -> list:
    "The reference script's command line: its protocol's full step count, whatever the machine's load, unless `ref_args` set a time budget"
    dump, outj = _ref_files(work, seed, part, kind)
    budget = [] if any(a.startswith('--time-budget') for a in ref_args) else ['--time-budget', REF_TIME_BUDGET]
    return [sys.executable, str(script), str(paths[f'{kind}_train']), str(paths[f'{kind}_{part}']), '--seed', str(seed),
            '--skip-untrained', '--dump', str(dump), '--out', str(outj), *budget, *ref_args]

REF_FEATURES = ('image', 'speech')  # the frozen front-ends cmrl's default reads, given to the reference too

def reference_feature_manifests(work: Path, paths: dict, run: Path | None = None) -> dict:
    "The reference's manifests with `image_features` / `speech_features`: the very features cmrl's run `run` trains on"
    from cmrl.checkpoint import read_checkpoint
    from cmrl.eval.ckpt import ckpt_source
    run = run or next((d for d in sorted(work.glob('*-s*')) if (d / 'checkpoint.pt').exists()), None)
    if run is None: raise FileNotFoundError(f"no cmrl run in {work} to take the front-end settings from; run a cmrl row first")
    src = ckpt_source(read_checkpoint(run), str(paths['cmrl']))
    exp = src.export_features(work / 'ref_features', modalities=REF_FEATURES)
    feats = {}
    for line in Path(exp['manifest']).read_text(encoding='utf-8').splitlines():
        r = json.loads(line); feats[str(r['id'])] = {f'{m}_features': r[f'{m}_features'] for m in REF_FEATURES if f'{m}_features' in r}
    out = {}
    for part in ('train', 'valid', 'test'):
        rows = [json.loads(l) for l in paths[f'ref_{part}'].read_text(encoding='utf-8').splitlines()]
        rows = [{**r, **feats.get(str(r['id']), {})} for r in rows]
        out[f'feat_{part}'] = work / f'ref_feat_{part}.jsonl'
        out[f'feat_{part}'].write_text(''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows), encoding='utf-8')
    return out

def reference_parts(dump: Path, paths: dict) -> tuple[Part, Part]:
    "The training and scored parts of one reference run from its `--dump` file (groups from the cmrl manifest)"
    d = torch.load(dump, weights_only=True)
    groups = {}
    for line in paths['cmrl'].read_text().splitlines():
        r = json.loads(line); groups[r['id']] = r['group']
    def part_of(x):
        return Part(x['id'], [groups[i] for i in x['id']], x['label'], {'image': x['image'], 'speech': x['audio'], 'text': x['text']})
    return part_of(d['train']), part_of(d['test'])

def run_reference(script: Path, seed: int, paths: dict, work: Path, part: str, ref_args: list, reuse: bool = False,
                  kind: str = 'ref') -> dict:
    "One reference run ('ref': from scratch; 'feat': on cmrl's frozen front-end features), scored by cmrl's scorer"
    dump, outj = _ref_files(work, seed, part, kind)
    if kind == 'feat': ref_args = ['--features', ','.join(REF_FEATURES), *ref_args]
    cmd = reference_command(script, seed, paths, work, part, ref_args, kind)
    print('  $', ' '.join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    t = time.time()
    if not (reuse and dump.exists() and outj.exists()):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0: raise RuntimeError(f"reference failed ({p.returncode}):\n{p.stderr[-3000:]}")
    wall = time.time() - t
    own = json.loads(outj.read_text())
    res = score(*reference_parts(dump, paths), None, seed, per_item=True)
    tr = own['trained']
    res.update(train_seconds=own.get('train_time_s'), wall_seconds=round(wall, 1), n_params=own.get('params', {}).get('total'), steps=own.get('steps'),
               command=' '.join(cmd[1:]),
               own_scorer={'image->speech R@10': tr['retrieval']['image->audio']['R@10'], 'speech->image R@10': tr['retrieval']['audio->image']['R@10'],
                           'image->speech acc': tr['probe']['img->aud']['acc'], 'speech->image acc': tr['probe']['aud->img']['acc']})
    return res


# ----------------------------------------------------------------------------- the table (seeds: `aggregate`)
COLUMNS = [  # (header, leaf key)
    ('acc i>s', 'probe/image->speech/acc'), ('bacc i>s', 'probe/image->speech/bacc'),
    ('acc s>i', 'probe/speech->image/acc'), ('bacc s>i', 'probe/speech->image/bacc'),
    ('acc i>t', 'probe/image->text/acc'), ('acc t>i', 'probe/text->image/acc'),
    ('acc s>t', 'probe/speech->text/acc'), ('acc t>s', 'probe/text->speech/acc'),
    ('cont acc i>s', 'probe_emb/image->speech/acc'), ('cont acc s>i', 'probe_emb/speech->image/acc'),
    ('acc i>i', 'probe/image->image/acc'), ('acc s>s', 'probe/speech->speech/acc'), ('acc t>t', 'probe/text->text/acc'),
    ('R@1 i>s', 'retrieval/image->speech/R@1'), ('R@10 i>s', 'retrieval/image->speech/R@10'),
    ('R@1 s>i', 'retrieval/speech->image/R@1'), ('R@10 s>i', 'retrieval/speech->image/R@10'),
    ('R@10 i>t', 'retrieval/image->text/R@10'), ('R@10 t>i', 'retrieval/text->image/R@10'),
    ('R@10 s>t', 'retrieval/speech->text/R@10'), ('R@10 t>s', 'retrieval/text->speech/R@10'),
    ('sem R@10 i>s', 'retrieval_semantic/image->speech/R@10'), ('sem R@10 s>i', 'retrieval_semantic/speech->image/R@10'),
    ('codes R@10 i>s', 'codes_retrieval/image->speech/R@10'), ('codes R@10 s>i', 'codes_retrieval/speech->image/R@10'),
    ('codes bag R@10 i>s', 'codes_bag_retrieval/image->speech/R@10'), ('codes bag R@10 s>i', 'codes_bag_retrieval/speech->image/R@10'),
    ('LSH same bits R@10 i>s', 'lsh_same_bits/image->speech/R@10'), ('LSH same bits R@10 s>i', 'lsh_same_bits/speech->image/R@10'),
    ('kappa i-s', 'kappa/image-speech/kappa'), ('kappa i-t', 'kappa/image-text/kappa'), ('kappa s-t', 'kappa/speech-text/kappa'),
    ('ppl image', 'perplexity/image'), ('ppl speech', 'perplexity/speech'), ('ppl text', 'perplexity/text'),
    ('train s', 'train_seconds'),
]

def reference_rows(res: dict) -> dict:
    "Chance, majority and length-reference rows, as leaf dicts"
    any_row = next((r for r in res['rows'].values() if r.get('per_seed')), None)
    rows = {}
    if any_row:
        first = next(iter(any_row['per_seed'].values()))
        ch = {f'probe/{k}/{s}': v['chance'] for k, v in first['probe'].items() for s in ('acc', 'bacc')}
        ch.update({f'retrieval/{k}/{r}': v[f'chance_{r}'] for k, v in first['retrieval'].items() for r in ('R@1', 'R@10')})
        ch.update({f'{c}/{k}/R@10': v['chance_R@10'] for k, v in first['retrieval'].items() for c in ('codes_retrieval', 'codes_bag_retrieval')})
        ch.update({f'retrieval_semantic/{k}/R@10': v['chance_R@10'] for k, v in first['retrieval'].items()})
        ch.update({f'kappa/{p}/kappa': 0.0 for p in ('image-speech', 'image-text', 'speech-text')})
        rows['chance'] = ch
        ch.update({f'probe_emb/{k}/acc': v['chance'] for k, v in first['probe'].items()})
        mj = {f'probe/{k}/acc': v['majority'] for k, v in first['probe'].items()}
        mj.update({f'probe_emb/{k}/acc': v['majority'] for k, v in first['probe'].items()})
        mj.update({f'probe/{k}/bacc': v['chance'] for k, v in first['probe'].items()})  # a constant prediction: 1 / classes
        rows['majority class'] = mj
    if res.get('length_reference'):
        rows['length only (speech<->text)'] = {f'retrieval/{k}/{r}': v[r] for k, v in res['length_reference']['retrieval'].items() for r in ('R@1', 'R@10')}
    return rows

def table(res: dict, with_spread: bool = True) -> str:
    "One Markdown table: a row per model (mean over seeds, [min, max] when several), then the reference rows"
    lines = ['| row | seeds | ' + ' | '.join(h for h, _ in COLUMNS) + ' |', '|---|---|' + '---|' * len(COLUMNS)]
    def cell(v): return '–' if v is None else f'{v:.1f}' if abs(v) >= 1 or v == 0 else f'{v:.2f}'
    for name, row in res['rows'].items():
        if not row.get('per_seed'):
            lines.append(f"| {name} | not run | " + ' | '.join('–' for _ in COLUMNS) + ' |'); continue
        agg, cells = row['summary'], []
        for _, k in COLUMNS:
            a = agg.get(k)
            if a is None: cells.append('–'); continue
            c = cell(a['mean'])
            if with_spread and a['n'] > 1: c += f" [{cell(a['min'])}, {cell(a['max'])}]"
            cells.append(c)
        lines.append(f"| {name} | {','.join(map(str, row['seeds']))} | " + ' | '.join(cells) + ' |')
    for name, leaves in reference_rows(res).items():
        lines.append(f"| {name} | – | " + ' | '.join(cell(leaves.get(k)) if k in leaves else '–' for _, k in COLUMNS) + ' |')
    return '\n'.join(lines)

TARGETS_DOC = ("Uni-Code probe acc and bacc image->speech and speech->image >= reference + 10; R@10 image<->speech >= reference; "
               "kappa >= 0.3 on every pair with perplexity >= 16 per modality; codes-only R@10 image<->speech >= 0.8 x embedding R@10")

def targets(res: dict, row: str = 'unicode', ref: str = 'reference') -> dict:
    "Each target of issue 13 for `row` against `ref` (means over seeds; per seed too): value, threshold, met"
    R = res['rows']
    if not (R.get(row, {}).get('per_seed')): return {}
    out = {}
    for s, u in R[row]['per_seed'].items():
        f, t = leaves(u), {}
        g = leaves(R[ref]['per_seed'][s]) if R.get(ref, {}).get('per_seed', {}).get(s) else None
        for d in ('image->speech', 'speech->image'):
            for k in ('acc', 'bacc'):
                key = f'probe/{d}/{k}'
                if g and key in g: t[f'{key} >= ref+10'] = dict(value=f.get(key), threshold=g[key] + 10, met=f.get(key, -1) >= g[key] + 10)
            key = f'retrieval/{d}/R@10'
            if g and key in g: t[f'{key} >= ref'] = dict(value=f.get(key), threshold=g[key], met=f.get(key, -1) >= g[key])
            ck = f'codes_retrieval/{d}/R@10'
            if ck in f and key in f: t[f'{ck} >= 0.8 x embedding'] = dict(value=f[ck], threshold=0.8 * f[key], met=f[ck] >= 0.8 * f[key])
        for p in ('image-speech', 'image-text', 'speech-text'):
            key = f'kappa/{p}/kappa'
            t[f'{key} >= 0.3'] = dict(value=f.get(key), threshold=0.3, met=(f.get(key) or -1) >= 0.3)
        for m in MODS:
            key = f'perplexity/{m}'
            t[f'{key} >= 16'] = dict(value=f.get(key), threshold=16, met=(f.get(key) or 0) >= 16)
        out[s] = t
    return out


# ----------------------------------------------------------------------------- a language never trained on
def zero_shot(models: list, seeds: list, work: Path, man: dict, zsplit: dict, part: str, reference: Path | None,
              ref_args: list, reuse: bool) -> dict:
    "Rows `<model> -> <lang>`: the runs in `work` (trained on one language) scored on another language's `part`"
    lang = zsplit['lang']
    zw = work / f'zero-shot-{lang}'
    zman = write_manifests(zsplit, zw)
    rows = {}
    def put(name, s, r):
        row = rows.setdefault(name, {'per_seed': {}, 'seeds': [], 'per_item': {}})
        row['per_item'][str(s)] = r.pop('per_item'); row['per_seed'][str(s)] = r; row['seeds'].append(s)
    for m in models:
        for s in seeds:
            run = work / f'{m}-s{s}'
            if not (run / 'checkpoint.pt').exists(): continue
            print(f"[{time.strftime('%H:%M:%S')}] {m} seed {s} scored on {lang} {part}", file=sys.stderr, flush=True)
            tr, te, K, w = cmrl_parts(run, zman['paths']['cmrl'], part)
            put(f'{m} -> {lang}', s, {**score(tr, te, K, s, per_item=True), 'weights': w})
    if reference is not None:  # trained on the first language's features, tested on this one's, the same front-ends
        first = next((d for d in sorted(work.glob('*-s*')) if (d / 'checkpoint.pt').exists()), None)  # its front-end settings
        zman['paths'].update(reference_feature_manifests(zw, zman['paths'], run=first))
        both = zw / 'groups.jsonl'
        both.write_text(man['paths']['cmrl'].read_text(encoding='utf-8') + zman['paths']['cmrl'].read_text(encoding='utf-8'), encoding='utf-8')
        paths = {'feat_train': man['paths']['feat_train'], f'feat_{part}': zman['paths'][f'feat_{part}'], 'cmrl': both}
        for s in seeds:
            print(f"[{time.strftime('%H:%M:%S')}] reference seed {s} tested on {lang} {part}", file=sys.stderr, flush=True)
            put(f'reference -> {lang}', s, run_reference(reference, s, paths, zw, part, ref_args, reuse, 'feat'))
    for row in rows.values(): row['summary'], row['intervals'] = aggregate(row['per_seed']), intervals(row)
    return rows


# ----------------------------------------------------------------------------- intervals and the goals of issue 26
HEADLINE = ('retrieval/image->speech/R@10', 'retrieval/speech->image/R@10', 'probe/image->speech/acc', 'probe/speech->image/acc',
            'retrieval/image->text/R@10', 'retrieval/text->image/R@10', 'retrieval/speech->text/R@10', 'retrieval/text->speech/R@10')

def item_matrix(row: dict, key: str) -> tuple[list, np.ndarray] | None:
    "`[seeds, items]` per-item values of `key` in a row (items in the first seed's order), or None"
    per = row.get('per_item') or {}
    if not per: return None
    first = next(iter(per.values()))
    if key not in first: return None
    ids = first['ids']
    M = []
    for p in per.values():
        pos = {i: j for j, i in enumerate(p['ids'])}
        M.append([p[key][pos[i]] if i in pos else np.nan for i in ids])
    return ids, np.array(M, dtype=np.float64)

def paired(row: dict, other: dict, key: str) -> dict | None:
    "Bootstrap interval of the per-item difference row - other on `key` (items matched by id)"
    a, b = item_matrix(row, key), item_matrix(other, key)
    if a is None or b is None: return None
    pos = {i: j for j, i in enumerate(b[0])}
    keep = [j for j, i in enumerate(a[0]) if i in pos]
    return bootstrap_interval(a[1][:, keep], b[1][:, [pos[a[0][j]] for j in keep]])

def intervals(row: dict) -> dict:
    "The bootstrap interval over test items of the seed mean of every headline number"
    return {k: bootstrap_interval(m[1]) for k in HEADLINE if (m := item_matrix(row, k)) is not None}

def join_rows(files: list) -> dict:
    "The rows of several results files (queues run side by side): a row in several files joins seed by seed (a later file's seed replaces an earlier one's); summary and intervals recomputed"
    out = {}
    for rows in files:
        for k, v in rows.items():
            if not v.get('per_seed'): continue
            j = out.setdefault(k, {'per_seed': {}, 'seeds': []})
            j.update({x: y for x, y in v.items() if x not in ('per_seed', 'per_item', 'seeds', 'summary', 'intervals', 'failed')})  # notes
            j['per_seed'].update(v['per_seed'])
            j.setdefault('failed', {}).update(v.get('failed', {}))
            if 'per_item' in v: j.setdefault('per_item', {}).update(v['per_item'])
            j['seeds'] = sorted({*j['seeds'], *v['seeds']})
    for j in out.values():
        j['failed'] = {s: e for s, e in j['failed'].items() if s not in j['per_seed']}  # measured in another queue
        if not j['failed']: del j['failed']
        j['summary'], j['intervals'] = aggregate(j['per_seed']), intervals(j)
    return out

GOALS_DOC = ("issue 26 (six-seed means, French test): R@10 image<->speech >= the reference on the same front-ends and >= 45; "
             "probe acc and bacc image<->speech >= that reference + 5; kappa image-speech >= 0.2, image-text >= 0.3, "
             "speech-text >= 0.4 with perplexity >= 16 per modality; codes-only R@10 image<->speech >= 0.8 x embedding R@10")

def goals(res: dict, row: str = 'unicode', ref: str = 'reference') -> dict:
    "Each goal of issue 26 on the six-seed mean of `row`: value, threshold, met, and the paired interval against `ref`"
    R = res['rows']
    if not R.get(row, {}).get('summary'): return {}
    f = {k: v['mean'] for k, v in R[row]['summary'].items()}
    g = {k: v['mean'] for k, v in R[ref]['summary'].items()} if R.get(ref, {}).get('summary') else {}
    out = {}
    def goal(name, key, thr, delta=None):
        if f.get(key) is None or thr is None: return
        out[name] = dict(value=f[key], threshold=thr, met=bool(f[key] >= thr), by=f[key] - thr,
                         **({'paired_vs_reference': delta} if delta else {}))
    for d in ('image->speech', 'speech->image'):
        key = f'retrieval/{d}/R@10'
        goal(f'{key} >= 45', key, 45.)
        goal(f'{key} >= reference', key, g.get(key), paired(R[row], R[ref], key) if g else None)
        for k in ('acc', 'bacc'):
            key = f'probe/{d}/{k}'
            goal(f'{key} >= reference + 5', key, None if g.get(key) is None else g[key] + 5,
                 paired(R[row], R[ref], key) if g and k == 'acc' else None)
        ck = f'codes_retrieval/{d}/R@10'
        if f.get(f'retrieval/{d}/R@10') is not None: goal(f'{ck} >= 0.8 x embedding', ck, 0.8 * f[f'retrieval/{d}/R@10'])
    for p, thr in (('image-speech', .2), ('image-text', .3), ('speech-text', .4)):
        goal(f'kappa/{p}/kappa >= {thr}', f'kappa/{p}/kappa', thr)
    for m in MODS: goal(f'perplexity/{m} >= 16', f'perplexity/{m}', 16.)
    return out

def interval_table(res: dict) -> str:
    "Headline numbers of every row: six-seed mean with the bootstrap 95 % interval over test items (else the seed range)"
    heads = ('R@10 i>s', 'R@10 s>i', 'acc i>s', 'acc s>i', 'R@10 i>t', 'R@10 t>i', 'R@10 s>t', 'R@10 t>s')
    lines = ['| row | seeds | ' + ' | '.join(heads) + ' |', '|---|---|' + '---|' * len(heads)]
    for name, row in res['rows'].items():
        iv, sm = row.get('intervals') or {}, row.get('summary') or {}
        if not (iv or sm): continue
        cells = [f"{iv[k]['mean']:.1f} [{iv[k]['lo']:.1f}, {iv[k]['hi']:.1f}]" if k in iv else  # no per-item scores: the seed range
                 f"{sm[k]['mean']:.1f} (seeds {sm[k]['min']:.1f}–{sm[k]['max']:.1f})" if k in sm else '–' for k in HEADLINE]
        lines.append(f"| {name} | {','.join(map(str, row['seeds']))} | " + ' | '.join(cells) + ' |')
    for name, lv in reference_rows(res).items():
        if any(k in lv for k in HEADLINE):
            lines.append(f"| {name} | – | " + ' | '.join(f'{lv[k]:.1f}' if k in lv else '–' for k in HEADLINE) + ' |')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument('--models', default=','.join(MODELS), help=f"comma-separated cmrl models ({', '.join(MODELS)}); '' for none")
    p.add_argument('--seeds', default='0,1', help='comma-separated seeds')
    p.add_argument('--split', default='test', choices=('valid', 'test'), help='the part to score (tune on valid, report test)')
    p.add_argument('--split-file', default=str(SPLIT_FILE), help='the committed split (item ids per part)')
    p.add_argument('--make-split', default=None, metavar='LANG', help='write the split file of Tux Paint in LANG (to --split-file) and stop')
    p.add_argument('--reference', default=None, metavar='PATH',
                   help="clip_baseline.py: add its row 'reference', trained on the frozen image and speech features cmrl's first run reads")
    p.add_argument('--reference-scratch', action='store_true', help="with --reference: also the row 'reference (from scratch)' (its own encoders)")
    p.add_argument('--ref-args', default='', help='extra options for the reference script, e.g. "--steps 500"')
    p.add_argument('--zero-shot', default=None, metavar='SPLIT_FILE',
                   help="also score every run on this other language's split (rows '<model> -> <lang>'; the reference too)")
    p.add_argument('--zero-shot-only', action='store_true', help='with --zero-shot: only the zero-shot rows (no row of this split)')
    p.add_argument('--cascade', action='store_true',
                   help="add the row 'cascade': each scored recording's Whisper transcript through the text path of the unicode runs")
    p.add_argument('--train-args', default='', help='extra `cmrl train` options for every cmrl row, e.g. "--epochs 40"')
    p.add_argument('--frozen-image', action='store_true',
                   help='cmrl rows train on frozen EfficientNet-Lite0 image features (cmrl.data.pretrained) instead of pixels')
    p.add_argument('--extra-langs', default='', metavar='LANGS',
                   help="cmrl rows also train on the training stamps' pairs in these other languages (e.g. ca,es,ro,bg); scoring unchanged; not with --reference")
    p.add_argument('--tag', default='', help='suffix of the row names (for lever experiments)')
    p.add_argument('--quick', action='store_true', help='smoke test: seed 0, 2 epochs, reference 50 steps')
    p.add_argument('--work', default=None, help='folder for manifests, runs and dumps (default: a temporary folder)')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'results.json'), help='results JSON')
    p.add_argument('--reuse', action='store_true', help='score runs and dumps already in --work instead of training again')
    p.add_argument('--target-row', default=None, help="the row whose issue-13 goals are checked (default 'unicode' + --tag)")
    p.add_argument('--merge', action='store_true', help='keep the rows of an existing --out that this run does not redo')
    p.add_argument('--merge-from', default='', metavar='FILES',
                   help='comma-separated results files of the same split and part (e.g. queues run side by side): their rows join --out, a row in several files seed by seed')
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if a.make_split:
        d = make_split(a.make_split, Path(a.split_file))
        print(json.dumps({k: d[k] for k in ('lang', 'counts', 'left_out')})); return 0
    split = read_split(Path(a.split_file))
    seeds = [int(s) for s in a.seeds.split(',') if s.strip()]
    models = [m for m in a.models.split(',') if m.strip()]
    train_args, ref_args = shlex.split(a.train_args), shlex.split(a.ref_args)
    if a.quick: seeds, train_args, ref_args = seeds[:1], ['--epochs', '2', *train_args], ['--steps', '50', *ref_args]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix='cmrl-results-'))
    man = write_manifests(split, work)
    if a.frozen_image:
        from cmrl.data.pretrained import image_feature_manifest
        fm = work / 'frozen_image' / 'cmrl.jsonl'
        print('frozen image features:', image_feature_manifest(man['paths']['cmrl'], fm), file=sys.stderr)
        man['paths']['cmrl'] = fm
    extra = extra_info = None
    if a.extra_langs:
        if a.reference or a.cascade: p.error("--extra-langs trains cmrl rows only: leave out --reference and --cascade (their rows would train on less data)")
        extra_info = extra_language_manifest(man['paths']['cmrl'], a.extra_langs, work / 'cmrl_extra_langs.jsonl')
        print('training manifest with other languages:', json.dumps(extra_info), file=sys.stderr)
        extra = Path(extra_info['path'])
    outp = Path(a.out)
    res = json.loads(outp.read_text()) if a.merge and outp.exists() else {}
    res.update(protocol=__doc__.split('\n\n')[1:3], split_file=str(Path(a.split_file).resolve().relative_to(ROOT)) if Path(a.split_file).resolve().is_relative_to(ROOT) else a.split_file,
               lang=split['lang'], counts=split['counts'], left_out=split.get('left_out'), scored_part=a.split, targets_doc=TARGETS_DOC,
               machine=dict(cpus=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads()))
    if res.get('scored_part_rows') not in (None, a.split) and a.merge: raise ValueError(f"{outp} holds rows scored on another part; use another --out")
    res['scored_part_rows'] = a.split
    res.setdefault('rows', {})
    others = []
    for f in [f for f in a.merge_from.split(',') if f.strip()]:
        other = json.loads(Path(f).read_text())
        if (other.get('split_file'), other.get('scored_part_rows')) != (res['split_file'], a.split):
            raise ValueError(f"{f}: rows of {other.get('split_file')} {other.get('scored_part_rows')}, not {res['split_file']} {a.split}")
        others.append(other['rows'])
        if other.get('zero_shot_split'): res['zero_shot_split'] = other['zero_shot_split']
    res['rows'].update(join_rows(others))
    res['length_reference'] = length_row(man['rows'], a.split)
    jobs = [(m, m + a.tag) for m in models] + ([('feat', 'reference' + a.tag)] if a.reference else [])
    jobs += [('ref', 'reference (from scratch)' + a.tag)] if a.reference and a.reference_scratch else []
    jobs += [('cascade', 'cascade (Whisper transcript)' + a.tag)] if a.cascade else []
    if a.zero_shot_only: jobs = []
    for kind, name in jobs:
        row = res['rows'].get(name) if a.merge else None
        row = row if row and row.get('per_seed') else {'per_seed': {}, 'seeds': []}
        if extra_info: row['extra_langs'] = {k: v for k, v in extra_info.items() if k != 'path'}  # what the row trained on besides the split
        for s in seeds:
            print(f"[{time.strftime('%H:%M:%S')}] {name} seed {s} ({a.split})", file=sys.stderr, flush=True)
            try:
                if kind == 'feat' and 'feat_train' not in man['paths']:
                    man['paths'].update(reference_feature_manifests(work, man['paths']))
                r = (run_reference(Path(a.reference), s, man['paths'], work, a.split, ref_args, a.reuse, kind) if kind in ('ref', 'feat')
                     else run_cascade(s, man['paths']['cmrl'], work, a.split, split['lang']) if kind == 'cascade'
                     else run_cmrl(kind, s, man['paths']['cmrl'], work, a.split, train_args, a.reuse, train_manifest=extra))
            except Exception as e:
                print(f"  {name} seed {s} failed: {e}", file=sys.stderr); row.setdefault('failed', {})[str(s)] = str(e)[-500:]; continue
            row.setdefault('per_item', {})[str(s)] = r.pop('per_item')
            row['per_seed'][str(s)] = r
            row['seeds'] = sorted({*row['seeds'], s})
            row['summary'], row['intervals'] = aggregate(row['per_seed']), intervals(row)
            res['rows'][name] = row
            outp.write_text(json.dumps(res, indent=1, default=float))  # after every run: a crash keeps what was measured
        res['rows'][name] = row
    if a.zero_shot:
        if a.reference and 'feat_train' not in man['paths']: man['paths'].update(reference_feature_manifests(work, man['paths']))
        zs = zero_shot(models, seeds, work, man, read_split(Path(a.zero_shot)), a.split, Path(a.reference) if a.reference else None,
                       ref_args, a.reuse)
        res['rows'].update(zs)
        zp = Path(a.zero_shot).resolve()
        res['zero_shot_split'] = str(zp.relative_to(ROOT)) if zp.is_relative_to(ROOT) else str(zp)
        outp.write_text(json.dumps(res, indent=1, default=float))
    for m in (*MODELS, 'reference'):  # a model with no measured row at all is listed as not run
        if not any(n.split(':')[0] == m and r.get('per_seed') for n, r in res['rows'].items()):
            res['rows'].setdefault(m, {'per_seed': {}, 'seeds': [], 'note': 'not run'})
    for n in [n for n, r in res['rows'].items() if not r.get('per_seed') and any(k.split(':')[0] == n.split(':')[0] and v.get('per_seed') for k, v in res['rows'].items())]:
        del res['rows'][n]  # a placeholder of a model that has measured rows now
    row = a.target_row or f'unicode{a.tag}'
    ref = 'reference' + a.tag if res['rows'].get('reference' + a.tag, {}).get('per_seed') else 'reference'
    res['targets'], res['targets_rows'] = targets(res, row, ref), {'row': row, 'reference': ref}
    res['goals'], res['goals_doc'] = goals(res, row, ref), GOALS_DOC
    res['table'], res['interval_table'] = table(res), interval_table(res)
    text = json.dumps(res, indent=1, default=float)
    for root in sorted({str(work.resolve()), *(str(Path(f).resolve().parent) for f in a.merge_from.split(',') if f.strip())},
                       key=len, reverse=True):
        text = text.replace(root, 'WORK')  # machine paths out of the committed file: WORK is the run folder
    outp.write_text(text)
    print(res['table']); print(); print(res['interval_table'])
    print(f"\n{split['lang']} {a.split} part: {split['counts']}; wrote {outp}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
