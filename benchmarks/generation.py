"""Generation benchmark (issue 29, item 2): captions from pictures and from recordings, French Tux Paint split.

Protocol (the goals of issue 29 are checked here and written beside the numbers):

* For each seed (default 0, 1, 2): `cmrl train --data MANIFEST --decoders text --steps 4 --seed S` with every other
  setting at its default (frozen EfficientNet-Lite0 pictures, frozen Whisper-base speech, bytes+wordvec text, Uni-Code,
  best weights by validation R@10). The text decoder is trained **after** the encoders on their frozen features
  (pooled embedding, codes, pre-quantisation steps; caption-word vocabulary; label smoothing, dropout, weight decay),
  its epoch kept by **validation** chrF.
* Choices on the valid part only: the decoding method (greedy, beam search, or minimum-Bayes-risk decoding over the
  decoder's own candidates, `METHODS` names each setting tried) with the best mean validation chrF over seeds and
  source sets. The test part is scored once per seed with that method.
* One scorer, `cmrl.eval.textgen.text_generation_eval`: CER (jiwer), BLEU and chrF (sacrebleu) of the captions written
  from the picture, from the recording and from both, beside the medoid training caption, the nearest training caption
  (cross-modal retrieval on the same embeddings), the caption of the nearest training item of the same modality, and the
  shuffled-input control. Pooled over the seeds, `bootstrap_scores` gives paired 95 % intervals over test items (each
  resample draws items and keeps every seed's row of each).
* Beside the recording -> caption CER: the Whisper transcript's own CER on the same recordings
  (`WhisperFrontend.transcribe`, where this checkout has it).

    python benchmarks/generation.py --work /tmp/gen    # writes benchmarks/generation.json (an hour or more, 2 cores)
"""
import argparse, json, os, platform, time, warnings
from pathlib import Path
import numpy as np
from cmrl.data.splits import write_manifests, read_split
ROOT = Path(__file__).resolve().parent.parent
SPLIT_FILE = ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'
METHODS = {  # name -> (text_generation_eval's method, its options); --methods picks some of these names
    'greedy': ('greedy', {}), 'beam': ('beam', {}),
    # MBR (chrF utility) over the decoder's own candidates: 32 top-k samples (k = 10, tau = 1), plus the greedy text
    'mbr': ('mbr', {'width': 0, 'samples': 32, 'k': 10}),
}
GOAL_SETS = {'image': 'from pictures', 'speech': 'from recordings'}


def train_seed(manifest: Path, work: Path, seed: int, reuse: bool) -> dict:
    "`cmrl train --decoders text --steps 4` (defaults otherwise) for one seed; its metrics.json"
    import cmrl.train as T
    run = work / f'run-s{seed}'
    if not (reuse and (run / 'metrics.json').exists()):
        T.train(quiet=True, data=str(manifest), decoders='text', steps=4, seed=seed, threads=1, out=str(run),
                overwrite=True)
    return json.loads((run / 'metrics.json').read_text())


def evaluate(work: Path, seed: int, split: str, method: str, iters: int, reuse: bool) -> dict:
    "`text_generation_eval` of one run on one part with one method, every item's texts kept (cached in --work)"
    from cmrl.eval.textgen import text_generation_eval
    f = work / f'eval-{split}-{method}-s{seed}.json'
    if reuse and f.exists(): return json.loads(f.read_text())
    meth, opts = METHODS[method]
    ev = text_generation_eval(work / f'run-s{seed}', split=split, method=meth, device='cpu', seed=seed, iters=iters,
                              items=True, options=opts or None)
    f.write_text(json.dumps(ev, ensure_ascii=False))
    return ev


def mean_chrf(ev: dict) -> float: return float(np.mean([r['generated']['chrf'] for r in ev['sets'].values()]))


def pooled(evs: list, iters: int) -> dict:
    "Per source set: mean-of-seeds scores, pooled paired bootstrap of generated against each control, distinct outputs"
    from cmrl.eval.textgen import item_stats, bootstrap_scores, text_scores, CONTROLS
    out = {}
    for name in evs[0]['sets']:
        its = [e['sets'][name]['items'] for e in evs]
        ids = [i for it in its for i in it['ids']]
        refs = [r for it in its for r in it['true']]
        stats = {w: item_stats([h for it in its for h in it[w]], refs) for w in ('generated',) + CONTROLS}
        out[name] = {'n_items': len(its[0]['ids']), 'n_rows': len(ids),
                     'mean': {w: {k: float(np.mean([e['sets'][name][w][k] for e in evs]))
                                  for k in ('cer', 'bleu', 'chrf')} for w in ('generated',) + CONTROLS},
                     'pooled': {w: text_scores([h for it in its for h in it[w]], refs)
                                for w in ('generated',) + CONTROLS},
                     'distinct': float(np.mean([e['sets'][name]['distinct'] for e in evs])),
                     # the share of texts that are training captions word for word: the decoder's, the test items' own
                     **({'copied': {w: float(np.mean([e['sets'][name]['copied'][w] for e in evs])) for w in ('generated', 'true')}}
                        if all('copied' in e['sets'][name] for e in evs) else {}),
                     'vs': {w: bootstrap_scores(stats['generated'], stats[w], groups=ids, iters=iters)
                            for w in CONTROLS}}
    return out


def goals(pool: dict) -> dict:
    "The goals of issue 29 (item 2), each met or not, from the pooled intervals"
    g = {}
    for name, what in GOAL_SETS.items():
        if name not in pool: continue
        vs, p = pool[name]['vs'], pool[name]
        g[f'{name}: beats nearest on chrF and BLEU'] = (vs['nearest']['chrf']['better']
                                                        and vs['nearest']['bleu']['better'])
        for w in ('medoid', 'shuffled'):
            g[f'{name}: beats {w} on CER, chrF and BLEU'] = all(vs[w][k]['better'] for k in ('cer', 'chrf', 'bleu'))
        g[f'{name}: distinct outputs >= 50%'] = p['distinct'] >= 0.5
    return g


def missed(pool: dict, gl: dict) -> list:
    "One plain sentence per missed goal, naming the control it loses to and by how much"
    out = []
    for key, ok in gl.items():
        if ok: continue
        name, what = key.split(': ', 1)
        p = pool[name]
        if 'distinct' in what:
            out.append(f"{GOAL_SETS[name].capitalize()}, the decoder writes distinct captions for "
                       f"{p['distinct']:.0%} of the test items (goal: 50 %).")
            continue
        w = what.split()[1]
        ks = ('chrf', 'bleu') if w == 'nearest' else ('cer', 'chrf', 'bleu')
        v = p['vs'][w]
        parts = [f"{k.upper() if k != 'chrf' else 'chrF'} {p['pooled']['generated'][k]:.3g} vs {p['pooled'][w][k]:.3g} "
                 f"(difference {v[k]['diff']:+.3g}, 95 % interval [{v[k]['lo']:+.3g}, {v[k]['hi']:+.3g}])"
                 for k in ks if not v[k]['better']]
        out.append(f"{GOAL_SETS[name].capitalize()}, the decoder does not beat the {w} caption: "
                   + '; '.join(parts) + '.')
    return out


def examples(ev: dict, k_good: int = 3, k_bad: int = 2) -> list:
    "Ten queries of one seed, pictures and recordings: the best and the worst captions by sentence chrF"
    from sacrebleu.metrics import CHRF
    ch, out = CHRF(), []
    for name in GOAL_SETS:
        it = ev['sets'][name]['items']
        sc = [ch.sentence_score(h, [r]).score for h, r in zip(it['generated'], it['true'])]
        order = sorted(range(len(sc)), key=lambda i: -sc[i])
        for tag, rows in (('good', order[:k_good]), ('bad', order[-k_bad:])):
            out += [{'query': name, 'id': it['ids'][i], 'kind': tag, 'chrf': round(sc[i], 1), 'true': it['true'][i],
                     'generated': it['generated'][i], 'nearest': it['nearest'][i],
                     'nearest_item': it['nearest_item'][i]}
                    for i in rows]
    return out


def transcripts(manifest: Path, ev: dict) -> dict | None:
    "CER / BLEU / chrF of Whisper's own transcripts of the scored recordings, against the same references"
    try:
        from cmrl.data.whisper import WhisperFrontend
        from cmrl.data.whisper import SpeechConfig
    except ImportError: return None
    if not hasattr(WhisperFrontend, 'transcribe'): return None
    from cmrl.eval.textgen import text_scores
    rows = {json.loads(l)['id']: json.loads(l) for l in manifest.read_text().splitlines() if l.strip()}
    it = ev['sets']['speech']['items']
    fe = WhisperFrontend(SpeechConfig(frontend='whisper_base'))
    hyp = fe.transcribe([rows[i]['speech'] for i in it['ids']], 'fr')
    return {**text_scores(hyp, it['true']), 'examples': [{'id': i, 'true': r, 'transcript': h}
                                                        for i, r, h in list(zip(it['ids'], it['true'], hyp))[:10]]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--work', required=True, help='folder for the manifest and the runs')
    p.add_argument('--seeds', default='0,1,2')
    p.add_argument('--iters', type=int, default=1000, help='bootstrap resamples')
    p.add_argument('--reuse', action='store_true', help='keep finished runs in --work')
    p.add_argument('--no-transcripts', action='store_true')
    p.add_argument('--methods', default=','.join(METHODS), help='decoding methods (names in METHODS) to choose from on valid')
    p.add_argument('--only-seed', type=int, help='train and score one seed into --work, then stop')
    p.add_argument('--out', default=str(ROOT / 'benchmarks' / 'generation.json'))
    a = p.parse_args(argv)
    from cmrl.eval.textgen import eval_table
    warnings.simplefilter('ignore')
    work, seeds, t0 = Path(a.work), [int(s) for s in a.seeds.split(',')], time.time()
    methods = [m for m in a.methods.split(',') if m]
    if bad := [m for m in methods if m not in METHODS]: p.error(f"--methods: unknown {bad}; choose among {list(METHODS)}")
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / 'cmrl.jsonl'  # kept when reusing: runs side by side read it
    if not (a.reuse and manifest.exists()): manifest = write_manifests(read_split(SPLIT_FILE), work)['paths']['cmrl']
    res = {'command': f"python benchmarks/generation.py --work WORK --seeds {a.seeds} --iters {a.iters} "
                      f"--methods {a.methods}",
           'train_command': "cmrl train --data MANIFEST --decoders text --steps 4 --seed S --threads 1",
           'split_file': str(SPLIT_FILE.relative_to(ROOT)), 'seeds': seeds,
           'machine': {'cpus': os.cpu_count(), 'platform': platform.platform(), 'load_before': os.getloadavg()[0]},
           'measured_at': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'train': {}, 'valid': {}, 'test': {}}
    if a.only_seed is not None:  # one seed's share, to run seeds side by side; the full command then reuses it
        train_seed(manifest, work, a.only_seed, a.reuse)
        v = {m: mean_chrf(evaluate(work, a.only_seed, 'valid', m, 200, a.reuse)) for m in methods}
        evaluate(work, a.only_seed, 'test', max(v, key=v.get), a.iters, a.reuse)  # the full command scores the others
        return
    for s in seeds:
        m = train_seed(manifest, work, s, a.reuse)
        res['train'][str(s)] = {k: m.get(k) for k in ('fit_seconds', 'best', 'n_train', 'n_valid', 'n_test')}
        td = m.get('text_decoder') or {}
        res['train'][str(s)]['text_decoder'] = {k: v for k, v in td.items() if k != 'history'}
        res['train'][str(s)]['retrieval_valid'] = m.get('retrieval')
        print(f"seed {s}: trained ({m.get('fit_seconds')} s)", flush=True)
    for meth in methods:  # the choice: validation chrF only
        evs = [evaluate(work, s, 'valid', meth, 200, a.reuse) for s in seeds]  # the choice reads scores, not intervals
        res['valid'][meth] = {'decoding': METHODS[meth][0], 'options': METHODS[meth][1],
                              'mean_chrf': float(np.mean([mean_chrf(e) for e in evs])),
                              'sets': {n: {w: float(np.mean([e['sets'][n][w]['chrf'] for e in evs]))
                                           for w in ('generated', 'nearest', 'nearest_item')} for n in evs[0]['sets']}}
    method = max(methods, key=lambda m: res['valid'][m]['mean_chrf'])
    res['method'], res['method_options'] = method, METHODS[method][1]
    evs = []
    for s in seeds:
        ev = evaluate(work, s, 'test', method, a.iters, a.reuse)
        print(f"seed {s}\n" + eval_table(ev), flush=True)
        evs.append(ev)
        res['test'][str(s)] = {k: v for k, v in ev.items() if k != 'sets'}
        res['test'][str(s)]['sets'] = {n: {k: v for k, v in r.items() if k != 'items'} for n, r in ev['sets'].items()}
    res['pooled'] = pooled(evs, a.iters)
    res['goals'] = goals(res['pooled'])
    res['missed'] = missed(res['pooled'], res['goals'])
    res['examples'] = examples(evs[0])
    res['items_seed0'] = {n: r['items'] for n, r in evs[0]['sets'].items()}
    res['transcripts'] = None if a.no_transcripts else transcripts(manifest, evs[0])
    res['total_seconds'] = round(time.time() - t0, 1)
    Path(a.out).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    for k, v in res['goals'].items(): print(('met    ' if v else 'MISSED ') + k)
    print('wrote', a.out)


if __name__ == '__main__': main()
