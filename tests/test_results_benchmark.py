"""benchmarks/*.py: thin drivers over the library's scorer (`cmrl.eval.benchmark`) and splits (`cmrl.data.splits`),
their pieces on small known inputs (no training; the benchmarks themselves are run by hand)"""
import json, math, re, subprocess, sys, tempfile
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.data.splits import read_split, write_manifests
from cmrl.eval.benchmark import Part, score, aggregate
from cmrl.eval.report import code_kappa
from benchmarks import results as R, kappa_ceiling as KC, ceiling, main_job

ROOT = Path(__file__).resolve().parent.parent


def test_kappa_worked_example():
    "The one kappa the benchmarks score with (`cmrl.eval.report.code_kappa`)"
    # 4 paired items: codes agree on 3 (p_o = 0.75); a uses codes 0,0,1,1 and b 0,0,1,0: p_e = .5*.75 + .5*.25 = .5
    k = code_kappa(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]), 2)
    assert k['p_o'] == pytest.approx(0.75) and k['p_e'] == pytest.approx(0.5)
    assert k['kappa'] == pytest.approx(0.5)  # (0.75 - 0.5) / (1 - 0.5)
    one = code_kappa(np.array([3, 3]), np.array([3, 3]), 4)  # one code everywhere: p_e = 1, kappa undefined
    assert one['p_e'] == 1.0 and math.isnan(one['kappa'])
    assert math.isnan(code_kappa(np.array([-1]), np.array([2]), 4)['kappa'])  # no paired item


def test_one_kappa_and_one_length_reference():
    "No second scorer in the drivers: kappa and the length reference come from cmrl.eval.report"
    for f in (ROOT / 'benchmarks').rglob('*.py'):
        src = f.read_text()
        assert not re.search(r'^def (kappa|length_reference|aggregate|score|_leaves)\(', src, re.M), f


def test_score_perfect_and_shuffled():
    g = torch.Generator().manual_seed(0)
    n, labels = 40, [f'c{i % 4}' for i in range(40)]
    base = torch.nn.functional.one_hot(torch.arange(n) % 4, 4).float() * 3 + 0.1 * torch.randn(n, 4, generator=g)
    uniq = torch.randn(n, 16, generator=g)
    emb = torch.cat([base, uniq], 1)
    ids, groups = [f'i{i}' for i in range(n)], [f'g{i}' for i in range(n)]
    mk = lambda e: Part(ids, groups, labels, {'image': e, 'speech': e.clone(), 'text': e.clone()})
    res = score(mk(emb), mk(emb), None)
    assert res['retrieval']['image->speech']['R@1'] == 100.0  # identical embeddings: every partner first
    assert res['probe']['image->speech']['acc'] == 100.0
    assert 0 < res['retrieval']['image->speech']['chance_R@10'] < 100
    sh = Part([f'i{i}' for i in range(n)], [f'g{i}' for i in range(n)], labels,
                {'image': emb, 'speech': emb[torch.randperm(n, generator=g)], 'text': emb})
    assert score(mk(emb), sh, None)['retrieval']['image->speech']['R@1'] < 50


def test_aggregate_table_and_targets():
    row = lambda v: {'probe': {'image->speech': {'acc': v, 'bacc': v, 'majority': 30., 'chance': 6.25}},
                     'retrieval': {'image->speech': {'R@1': 1., 'R@10': v, 'chance_R@1': 1., 'chance_R@10': 9.}}}
    res = {'rows': {'unicode': {'per_seed': {'0': row(50.), '1': row(60.)}, 'seeds': [0, 1]},
                    'reference': {'per_seed': {'0': row(40.), '1': row(40.)}, 'seeds': [0, 1]},
                    'liu2022': {'per_seed': {}, 'seeds': [], 'note': 'not run'}}}
    for r in res['rows'].values():
        if r['per_seed']: r['summary'] = aggregate(r['per_seed'])
    s = res['rows']['unicode']['summary']['probe/image->speech/acc']
    assert (s['mean'], s['min'], s['max'], s['n']) == (55., 50., 60., 2)
    t = R.table(res)
    assert '| liu2022 | not run |' in t and '| chance |' in t and '| majority class |' in t
    assert '55.0 [50.0, 60.0]' in t
    tg = R.targets(res)
    assert tg['0']['probe/image->speech/acc >= ref+10']['met'] and tg['1']['probe/image->speech/acc >= ref+10']['met']
    assert tg['0']['retrieval/image->speech/R@10 >= ref']['met']  # 50 >= 40
    assert 'probe/speech->image/acc >= ref+10' not in tg['0']  # not measured: no goal line


@pytest.mark.parametrize('path', sorted((ROOT / 'benchmarks' / 'splits').glob('tuxpaint_*.json')), ids=lambda p: p.stem)
def test_committed_split_is_disjoint_and_grouped(path):
    d = read_split(path)
    assert path.stem == f"tuxpaint_{d['lang']}"  # the file names its language
    ids = [i['id'] for i in d['items']]
    assert len(ids) == len(set(ids))
    parts = {}
    for i in d['items']: parts.setdefault(i['group'], set()).add(i['split'])
    assert all(len(s) == 1 for s in parts.values())  # no group straddles parts
    assert d['counts'] == {p: sum(i['split'] == p for i in d['items']) for p in ('train', 'valid', 'test')}


RESULTS_FILES = sorted((ROOT / 'benchmarks').glob('results*.json'))

def test_results_files_found():
    assert {'results', 'results_valid', 'results_ru'} <= {p.stem for p in RESULTS_FILES}


@pytest.mark.parametrize('path', RESULTS_FILES, ids=lambda p: p.stem)
def test_committed_results_read_their_own_split(path):
    # every committed results file names a committed split file of its language and scored exactly that split's part sizes
    res = json.loads(path.read_text())
    split = read_split(ROOT / res['split_file'])
    assert split['lang'] == res['lang'] and split['counts'] == res['counts'] and '/work/' not in json.dumps(res)
    other = read_split(ROOT / res['zero_shot_split']) if res.get('zero_shot_split') else None
    for name, row in res['rows'].items():
        counts = other['counts'] if ' -> ' in name else split['counts']  # zero-shot rows: another language's split
        for r in row.get('per_seed', {}).values():
            assert r['n_test'] == counts[res['scored_part']]  # the scored part, every item of it


def test_read_split_refuses_other_files(tmp_path):
    (tmp_path / 'x.json').write_text(json.dumps({'lang': 'fr'}))
    with pytest.raises(ValueError, match='not a split file'): read_split(tmp_path / 'x.json')


def _stamps_installed() -> bool:
    from cmrl.data.tuxpaint import tuxpaint_root
    try: return bool(tuxpaint_root())
    except FileNotFoundError: return False


@pytest.mark.skipif(not _stamps_installed(), reason='Tux Paint stamps not installed')
@pytest.mark.parametrize('name', ['results', 'results_ru'])
def test_length_reference_through_the_library_reproduces_the_committed_rows(name):
    "the driver's length row goes through cmrl.eval.report.length_reference (seconds and characters): same numbers"
    res = json.loads((ROOT / 'benchmarks' / f'{name}.json').read_text())
    rows = write_manifests(read_split(ROOT / res['split_file']), Path(tempfile.mkdtemp()))['rows']
    assert R.length_row(rows, res['scored_part']) == res['length_reference']


DRIVERS = ['results', 'kappa_ceiling', 'ceiling', 'generation', 'imagegen', 'time_to_quality']

@pytest.mark.parametrize('how', ['file', 'module'])
@pytest.mark.parametrize('name', DRIVERS)
def test_drivers_run_as_files_and_modules(name, how):
    "`python benchmarks/X.py` and `python -m benchmarks.X` both start (no sys.path edits)"
    cmd = [sys.executable, f'benchmarks/{name}.py'] if how == 'file' else [sys.executable, '-m', f'benchmarks.{name}']
    p = subprocess.run(cmd + ['--help'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and 'usage' in p.stdout, p.stderr[-2000:]


def test_no_sys_path_edits_and_no_benchmarks_import_in_the_library():
    for f in [*(ROOT / 'cmrl').rglob('*.py'), *(ROOT / 'benchmarks').rglob('*.py'), *(ROOT / 'nbs').rglob('*.ipynb')]:
        src = f.read_text()
        assert not re.search(r'sys\.path\s*(\.(insert|append)|\+=|=)', src), f
        if f.suffix == '.ipynb' or f.is_relative_to(ROOT / 'cmrl'):
            assert not re.search(r'(from|import) benchmarks\b', src), f


def test_main_job_reads_time_v():
    M = main_job
    rep = ("\tCommand being timed: \"cmrl\"\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 5:46.70\n"
           "\tMaximum resident set size (kbytes): 1298400\n")
    assert M.parse_time_v(rep) == {'wall_s': 346.7, 'peak_rss_mb': 1298.4}
    assert M.parse_time_v(rep.replace('5:46.70', '1:02:03'))['wall_s'] == 3723.0  # h:mm:ss
    with pytest.raises(ValueError, match='time -v'): M.parse_time_v('no report here')


def test_ceiling_speech_classifiers_train_and_score():
    "benchmarks/ceiling.py: both speech classifiers train through fastai on tiny log-mels and report last and best epochs"
    C = ceiling
    g = torch.Generator().manual_seed(0)
    def part(n):
        lab = [f'c{i % 2}' for i in range(n)]
        sp = [torch.randn(30 + i % 7, 64, generator=g) + (2. * (i % 2)) * (torch.arange(64) < 32) for i in range(n)]
        return {'speech': sp, 'label': lab}
    tr, te = part(32), part(12)
    x, m = C.pad(te['speech'])
    assert x.shape == (12, 36, 64) and m.sum(1).tolist() == [len(s) for s in te['speech']]
    for arch in ('cmrl', 'conv1d'):
        r = C.train_speech(arch, tr, te, ['c0', 'c1'], seed=0, epochs=2, bs=8)
        assert 1 <= r['best_epoch'] <= 2 and r['best']['bacc'] >= r['last']['bacc'] - 1e-9
        assert all(0 <= r[w][k] <= 100 for w in ('last', 'best') for k in ('acc', 'bacc')) and r['last']['chance'] == 50.0


def test_generation_benchmarks_train_with_the_defaults():
    "cmrl < 0.3's stems stay options `cmrl train` accepts; generation.py and imagegen.py train with today's defaults (issue 29)"
    from cmrl.train import TrainConfig, check_config
    from cmrl.checkpoint import CONFIG_DEFAULTS
    opts = dict(CONFIG_DEFAULTS[2])
    check_config(TrainConfig(**opts))
    assert all(getattr(TrainConfig(), k) != v for k, v in opts.items())  # today's defaults differ from the old stems
    for name in ('generation', 'imagegen'):  # issue 29: the defaults, no pinned stems
        src = (ROOT / 'benchmarks' / f'{name}.py').read_text()
        assert 'CONFIG_DEFAULTS' not in src and not any(f"--{k.replace('_', '-')}" in src for k in opts)
    ran = json.loads((ROOT / 'benchmarks' / 'imagegen.json').read_text())['train_command']
    assert ran.startswith('cmrl train --data MANIFEST --decoders image') and '--steps' not in ran and '--text-ngram' not in ran


def test_reference_runs_its_full_steps_unless_told():
    # the reference script stops at 450 s of wall time by default: on a loaded machine that cuts its 1000 steps short,
    # so the benchmark lifts the cap unless the caller sets one
    paths = {'ref_train': Path('tr.jsonl'), 'ref_test': Path('te.jsonl')}
    cmd = R.reference_command(Path('ref.py'), 1, paths, Path('w'), 'test', ['--threads', '1'])
    assert cmd[cmd.index('--time-budget') + 1] == R.REF_TIME_BUDGET and float(R.REF_TIME_BUDGET) > 450
    assert cmd[cmd.index('--seed') + 1] == '1' and cmd[-2:] == ['--threads', '1'] and cmd[2:4] == ['tr.jsonl', 'te.jsonl']
    own = R.reference_command(Path('ref.py'), 0, paths, Path('w'), 'test', ['--time-budget', '60'])
    assert own.count('--time-budget') == 1 and own[own.index('--time-budget') + 1] == '60'


def test_kappa_ceiling_aligned_vs_unrelated():
    "k-means cells of aligned embeddings agree across modalities; of unrelated ones, only by chance"
    g = torch.Generator().manual_seed(0)
    n, d = 240, 8
    centres = torch.randn(6, d, generator=g) * 4
    z = centres[torch.arange(n) % 6] + torch.randn(n, d, generator=g)  # six well-separated blobs
    near = lambda x: x + 0.05 * torch.randn(x.shape, generator=g)
    mk = lambda emb: Part([f'i{i}' for i in range(n)], [f'g{i}' for i in range(n)], ['c'] * n, emb)
    aligned = mk({'image': z, 'speech': near(z), 'text': near(z)})
    h = KC.code_health(KC.kmeans_codes(aligned.emb, aligned.emb, 6), 6, aligned)
    assert h['kappa']['image-speech']['kappa'] > 0.9 and h['perplexity']['image'] > 5  # the same cell for a pair, six cells used
    assert h['codes_R@10']['image->speech'] < 100  # one code per item: the pair ties with its cell's other items
    unrelated = mk({'image': z, 'speech': z[torch.randperm(n, generator=g)], 'text': z})
    u = KC.code_health(KC.kmeans_codes(unrelated.emb, unrelated.emb, 6), 6, unrelated)
    assert abs(u['kappa']['image-speech']['kappa']) < 0.1 and u['kappa']['image-text']['kappa'] > 0.9
    # a modality offset alone (the 'modality gap') splits the cells by modality unless each modality is centred
    pad = lambda x, c: torch.cat([x, torch.full((n, 1), float(c))], 1)  # an offset along a direction of its own
    shifted = mk({'image': pad(z, 0), 'speech': pad(near(z), 20), 'text': pad(near(z), 0)})
    assert KC.code_health(KC.kmeans_codes(shifted.emb, shifted.emb, 6, centre=False), 6, shifted)['kappa']['image-speech']['kappa'] < 0.5
    assert KC.code_health(KC.kmeans_codes(shifted.emb, shifted.emb, 6, centre=True), 6, shifted)['kappa']['image-speech']['kappa'] > 0.9


def test_kappa_ceiling_reads_the_curve_at_a_perplexity_floor():
    row = lambda ppl, k, c: {'perplexity': {'image': ppl, 'speech': ppl + 1}, 'kappa': {'image-speech': {'kappa': k}},
                             'codes_R@10': {'image->speech': c, 'speech->image': c + 2}}
    sweep = {'8': row(7., 0.5, 30.), '16': row(15.9, 0.3, 20.), '32': row(20., 0.12, 8.), '64': row(30., 0.08, 10.)}
    # the best kappa among the K whose lower perplexity is >= 16, and (at any such K) the best codes-only R@10, mean of both directions
    assert KC.at_perplexity(sweep, 'image-speech') == {'K': 32, 'kappa': 0.12, 'perplexity': 20., 'codes_R@10': 11.}
    assert KC.at_perplexity(sweep, 'image-speech', floor=40.) is None


def test_kappa_ceiling_committed_file():
    p = ROOT / 'benchmarks' / 'kappa_ceiling.json'
    if not p.exists(): pytest.skip('benchmarks/kappa_ceiling.json not committed')
    res = json.loads(p.read_text())
    split = read_split(R.SPLIT_FILE)
    assert res['lang'] == split['lang'] and res['counts'] == split['counts'] and res['scored_part'] == 'test'
    assert res['ks'] == list(KC.KS) and set(res['rows']) == {'unicode', 'reference'}
    for name, row in res['rows'].items():
        for s, r in row['per_seed'].items():
            for sw in r['sweep'].values():
                assert [int(k) for k in sw] == list(KC.KS)
                for k, v in sw.items():
                    assert all(1 <= p <= int(k) + 1e-6 for p in v['perplexity'].values())
                    assert all(-1 <= x['kappa'] <= 1 for x in v['kappa'].values())
    assert res['summary'] == KC.summary(res)  # the summary is what the rows say


def test_goals_and_paired_intervals():
    "issue 26's goals read the six-seed means; the paired interval matches items by id whatever their order"
    ids = [f'i{j}' for j in range(50)]
    hits = lambda frac: [100. if j < frac * 50 else 0. for j in range(50)]
    def row(r10, acc):
        per_seed = {str(s): {'retrieval': {'image->speech': {'R@1': 1., 'R@10': r10, 'chance_R@1': 2., 'chance_R@10': 9.}},
                             'probe': {'image->speech': {'acc': acc, 'bacc': acc, 'majority': 30., 'chance': 6.25}}}
                    for s in range(2)}
        per_item = {str(s): {'ids': ids, 'retrieval/image->speech/R@10': hits(r10 / 100), 'probe/image->speech/acc': hits(acc / 100)}
                    for s in range(2)}
        r = {'per_seed': per_seed, 'per_item': per_item, 'seeds': [0, 1]}
        r['summary'], r['intervals'] = aggregate(per_seed), R.intervals(r)
        return r
    res = {'rows': {'unicode': row(60., 50.), 'reference': row(40., 48.)}}
    rev = dict(res['rows']['reference']); rev['per_item'] = {s: {k: (v[::-1]) for k, v in p.items()} for s, p in rev['per_item'].items()}
    g = R.goals(res)
    assert g['retrieval/image->speech/R@10 >= reference']['met'] and not g['retrieval/image->speech/R@10 >= 45']['by'] < 0
    d = g['retrieval/image->speech/R@10 >= reference']['paired_vs_reference']
    assert d['mean'] == pytest.approx(20.) and d['lo'] > 0  # 10 items hit by unicode only, none the other way
    assert R.paired(res['rows']['unicode'], rev, 'retrieval/image->speech/R@10')['mean'] == pytest.approx(20.)  # order-free
    assert not g['probe/image->speech/acc >= reference + 5']['met'] and g['probe/image->speech/acc >= reference + 5']['by'] == pytest.approx(-3.)
    assert res['rows']['unicode']['intervals']['retrieval/image->speech/R@10']['mean'] == pytest.approx(60.)
    it = R.interval_table(res)
    assert '60.0 [' in it and '| chance | – | 9.0 |' in it  # chance from the same items


def test_merge_from_joins_a_row_seed_by_seed():
    "Queues run side by side with the same row on other seeds: `--merge-from` joins them seed by seed, summary and intervals of all seeds"
    ids = [f'i{j}' for j in range(10)]
    def queue(seeds, r10):
        per_seed = {str(s): {'retrieval': {'image->speech': {'R@1': 1., 'R@10': r10 + s, 'chance_R@1': 2., 'chance_R@10': 9.}}} for s in seeds}
        per_item = {str(s): {'ids': ids, 'retrieval/image->speech/R@10': [100.] * (s + 1) + [0.] * (9 - s)} for s in seeds}
        return {'unicode': {'per_seed': per_seed, 'per_item': per_item, 'seeds': list(seeds), 'note': 'n'}, 'empty': {'per_seed': {}}}
    j = R.join_rows([queue([0, 1, 2], 30.), queue([3, 4, 5], 30.)])
    u = j['unicode']
    assert u['seeds'] == [0, 1, 2, 3, 4, 5] and sorted(u['per_item']) == ['0', '1', '2', '3', '4', '5'] and 'empty' not in j
    assert u['summary']['retrieval/image->speech/R@10']['mean'] == pytest.approx(32.5) and u['note'] == 'n'
    assert u['intervals']['retrieval/image->speech/R@10']['mean'] == pytest.approx(35.)  # (1 + ... + 6) hits of 10 items over six seeds
    assert R.join_rows([queue([0], 30.), queue([0], 50.)])['unicode']['summary']['retrieval/image->speech/R@10']['mean'] == 50.  # a later file's seed wins
    q = queue([3], 30.); q['unicode']['failed'] = {'0': 'stopped', '3': 'an earlier try', '7': 'out of memory'}
    assert R.join_rows([queue([0, 1, 2], 30.), q])['unicode']['failed'] == {'7': 'out of memory'}  # seeds measured elsewhere are not failures
    assert 'failed' not in R.join_rows([queue([0], 30.)])['unicode']


def test_learning_curve_cuts_fit_and_committed_file():
    "benchmarks/learning_curve.py: nested group cuts of the training part only, the valid part moved into training, "
    "the log-linear fit and its last segment, and the committed file's own points"
    from benchmarks import learning_curve as LC
    items = [{'id': f'{p}{g}-{v}', 'split': p, 'group': f'{p}{g}', 'category': 'c'}
             for p, n in (('train', 20), ('valid', 4), ('test', 4)) for g in range(n) for v in range(2)]
    split = {'lang': 'fr', 'items': items, 'counts': {}}
    q, h = LC.subset_split(split, .25), LC.subset_split(split, .5)
    tq, th = ({i['id'] for i in s['items'] if i['split'] == 'train'} for s in (q, h))
    assert q['counts'] == {'train': 10, 'valid': 8, 'test': 8} and h['counts']['train'] == 20 and tq < th  # nested
    assert all(len({i['group'] for i in s['items'] if i['id'] in t}) * 2 == len(t) for s, t in ((q, tq), (h, th)))
    wv = LC.with_valid_split(split)
    assert wv['counts'] == {'train': 48, 'valid': 0, 'test': 8}
    pts = [{'n_train': n, 'mean': {'mean': m}} for n, m in ((100, 20.), (200, 30.), (400, 35.))]
    f = LC.fit(pts)
    b, a = np.polyfit(np.log2([100, 200, 400]), [20., 30., 35.], 1)
    assert f['per_doubling'] == pytest.approx(b) and f['pairs_for'] == pytest.approx(2 ** ((45 - a) / b))
    assert f['last_per_doubling'] == pytest.approx(5.) and f['pairs_for_last'] == pytest.approx(1600.)  # 35 + 5 per doubling: 2 doublings past 400
    d = json.loads((ROOT / 'benchmarks' / 'learning_curve.json').read_text())
    assert LC.fit(d['points'])['per_doubling'] == pytest.approx(d['fit']['per_doubling'])
    assert [p['n_train'] for p in d['points']] == sorted(p['n_train'] for p in d['points'])


def test_code_levels_choice_and_committed_file():
    "benchmarks/code_levels.py: the best valid mean of codes-only R@10 over the seeds, the fewest levels on a tie; "
    "the committed file's choice is its own best and the default of `cmrl train`"
    import dataclasses
    from benchmarks import code_levels as CL
    from cmrl.train import TrainConfig
    lv = lambda a, b: {'codes': {'image->speech': a, 'speech->image': b}, 'lsh': {'image->speech': 0., 'speech->image': 0.}, 'bits': 6}
    per = {'0': {'levels': {'1': lv(10, 20), '2': lv(30, 30), '3': lv(30, 30)}, 'embedding': {'image->speech': 40., 'speech->image': 40.}},
           '1': {'levels': {'1': lv(20, 10), '2': lv(20, 40), '3': lv(40, 20)}, 'embedding': {'image->speech': 40., 'speech->image': 40.}}}
    c = CL.choose(per)
    assert c['codes_R@10'] == {'1': 15., '2': 30., '3': 30.} and c['best'] == 2  # 2 and 3 tie: the fewer bits
    assert c['ratio_to_embedding']['2'] == pytest.approx(0.75)
    d = json.loads((ROOT / 'benchmarks' / 'code_levels.json').read_text())
    assert d['part'] == 'valid' and CL.choose(d['per_seed']) == d['choice']
    assert {f.name: f.default for f in dataclasses.fields(TrainConfig)}['code_levels'] == d['choice']['best']


def test_code_health_ranks_by_code_vectors_beside_tfidf_bags():
    "Codes-only retrieval: by the cosine of the codes' vectors when given (items sharing a code still differ by their "
    "residual codes), and by tf-idf bags of the shared codes beside it"
    import torch
    from cmrl.eval.benchmark import code_health
    codes = {'image': torch.tensor([0, 0, 1, 1]), 'speech': torch.tensor([0, 0, 1, 1])}
    vecs = {m: torch.tensor([[1., 0.1], [1., -0.1], [-1., 0.1], [-1., -0.1]]) for m in codes}
    ids, groups = ['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd']
    bag = code_health(codes, 2, ids, groups)
    vec = code_health(codes, 2, ids, groups, vecs)
    assert bag['codes_retrieval'] == bag['codes_bag_retrieval'] == vec['codes_bag_retrieval']  # no vectors: the bags
    assert vec['codes_retrieval']['image->speech']['R@1'] == 100.  # the vectors tell the pairs sharing a code apart
    assert bag['codes_retrieval']['image->speech']['R@1'] == 0.  # the bags tie them, and ties count against the query


def test_extra_language_manifest_adds_only_training_stamps(tmp_path):
    "--extra-langs: other languages' pairs of the training part's stamps join it (same group, split train); valid and test unchanged"
    man = write_manifests(read_split(ROOT / 'benchmarks' / 'splits' / 'tuxpaint_fr.json'), tmp_path)['paths']['cmrl']
    info = R.extra_language_manifest(man, 'ca', tmp_path / 'x.jsonl')
    rows = [json.loads(l) for l in (tmp_path / 'x.jsonl').read_text(encoding='utf-8').splitlines()]
    fr, extra = rows[:info['split_rows']], rows[info['split_rows']:]
    assert fr == [json.loads(l) for l in man.read_text(encoding='utf-8').splitlines()]  # the split's rows first, as they were
    assert len(extra) == info['extra_train_pairs']['ca'] > 300 and {r['lang'] for r in extra} == {'ca'}
    group = {r['id'].rsplit(':', 1)[0]: (r['split'], r['group']) for r in fr}
    assert all(r['split'] == 'train' and group[r['id'].rsplit(':', 1)[0]] == ('train', r['group']) for r in extra)
    with pytest.raises(ValueError, match='other than'): R.extra_language_manifest(man, 'fr', tmp_path / 'y.jsonl')
