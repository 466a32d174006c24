"""benchmarks/hashing.py (issue 29 items 4-5) on tiny data: the real-data scorer on synthetic paired embeddings (the scorer's
rules, seeds aggregated, the goals computed from the means), and the scale path end to end at a few thousand items."""
import importlib.util, json, math
from pathlib import Path
import numpy as np
import pytest
import torch
from cmrl.eval.benchmark import aggregate
from cmrl.eval.hashing import hash_retrieval
from cmrl.heads.hashing import HashHead, lsh_codes, fit_hash_head
from cmrl.metrics import cross_modal_retrieval

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def H():
    spec = importlib.util.spec_from_file_location('hashing_bench', ROOT / 'benchmarks' / 'hashing.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m


def _toy(n, seed=0, d=16, mods=('image', 'speech', 'text')):
    "Paired embeddings: a shared latent per item seen by each modality through its own map plus noise"
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g)
    return {m: z @ torch.randn(8, d, generator=g) + 0.3 * torch.randn(n, d, generator=g) for m in mods}


def _part(emb, groups=None):
    n = len(next(iter(emb.values())))
    return dict(ids=[f'i{i}' for i in range(n)], groups=groups or [f'g{i}' for i in range(n)], emb=emb)


def test_score_part_uses_the_scorers_rules_and_goals_follow_the_means(H):
    allp = _toy(140)
    tr = _part({m: v[:100] for m, v in allp.items()})
    ev = _part({m: v[100:] for m, v in allp.items()}, groups=[f'g{i // 2}' for i in range(40)])  # pairs of items share a group
    per = {str(s): H.score_part(tr, ev, (16,), {'learned': dict(epochs=3)}, s) for s in (0, 1)}
    r = per['0']
    assert set(r['float']) == {f'{a}->{b}' for a in allp for b in allp if a != b}
    # the same numbers as the library's scorer with the same ids, groups and pessimistic ties
    ref = cross_modal_retrieval(ev['emb'], ids=ev['ids'], groups=ev['groups'])
    assert all(r['float'][d]['R@10'] == ref[d]['R@10'] for d in ref)
    lsh = hash_retrieval({m: lsh_codes(v, 16, 0) for m, v in ev['emb'].items()}, ids=ev['ids'], groups=ev['groups'])
    assert all(r['lsh']['16'][d]['R@1'] == lsh[d]['R@1'] for d in lsh)
    assert all(0 <= v['tied'] <= 100 for v in r['ties']['learned']['16'].values())
    res = {'seeds': [0, 1], 'per_seed': per, 'summary': aggregate(per)}
    g = H.real_goals(res, 16)
    for d, v in g.items():
        want = np.mean([per[s]['learned']['16'][d]['R@10'] for s in per])
        assert v['learned'] == pytest.approx(want)
        assert v['beats_lsh'] == (v['learned'] >= v['lsh']) and v['ge_0.8_float'] == (v['learned'] >= 0.8 * v['float'])


def test_scale_quick_path_writes_every_number(H, tmp_path, capsys):
    out = tmp_path / 'h.json'
    rc = H.main(['--no-real', '--n', '3000', '--q', '20', '--hash-fit', '300', '--hash-epochs', '2', '--reps', '1',
                 '--nprobe', '4', '--nlist', '32', '--work', str(tmp_path), '--out', str(out)])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith('hashing: scale 3,000:')
    s = json.loads(out.read_text())['scale']
    assert s['n'] == 3000 and s['d'] == 64 and s['memory_ratio'] == 32.0  # 64-d float32 (256 B) against 64 bits (8 B)
    assert s['ivf']['memory_ratio'] == pytest.approx(256 * 3000 / (16 * 3000 + s['ivf']['nlist'] * 8))
    for w in ('learned', 'lsh'):
        assert 0 <= s[w]['hamming_only_recall@k'] <= s[w]['recall@k'] + 1e-9 <= 1 + 1e-9  # re-ranking only helps
    assert s['torch_recall_vs_faiss'] == 1.0  # the two exact searches agree
    assert set(s['goals']) == {'flat', 'ivf', 'partitioned'} and s['goals']['flat']['memory_ratio']['met']
    P = s['partitioned']  # in memory: 48-bit codes (+8 bytes), 33 offsets, 32 float16 centroids of 64 dims
    assert P['index_bytes'] == 6 * 3000 + 8 + 33 * 8 + 32 * 64 * 2 and P['memory_ratio'] == pytest.approx(256 * 3000 / P['index_bytes'])
    ok = [int(k) for k, r in P['tune_recall@k'].items() if r >= P['tune_recall_goal']]  # the fewest cells reaching the goal
    assert P['nprobe'] == (min(ok) if ok else max(int(k) for k in P['tune_recall@k'])) and 0 <= P['recall@k'] <= 1
    assert all(type(v['met']) is bool for v in s['goals']['partitioned'].values())
    assert P['limits']['speedup_bound_gather_only'] == pytest.approx(s['median_seconds'][s['baseline']] / s['median_seconds']['partitioned gather only'])
    assert not list(tmp_path.glob('**/gallery.npy'))  # the memory-mapped floats were a temporary file
    med, L = s['median_seconds'], s['limits']
    assert s['baseline'] in ('faiss', 'torch') and med[s['baseline']] == min(med['faiss'], med['torch'])
    assert {'faiss per-query loop', 'learned hamming top-C', 'gather only'} <= set(med)
    assert L['rerank_seconds'] == pytest.approx(med['learned'] - med['learned hamming top-C'])
    assert L['speedup_bound_free_candidates'] == pytest.approx(med[s['baseline']] / med['gather only'])
    assert L['speedup_bound_flat_scan'] == pytest.approx(med[s['baseline']] / (med['learned hamming only'] + med['gather only']))
    assert L['faiss_blas_speedup'] == pytest.approx(med['faiss per-query loop'] / med['faiss'])
    assert set(s['load_1min']) == {'start', 'end'} and s['load_1min']['start'] >= 0


def test_default_head_starts_at_lsh_and_keeps_ssahs_recipe(H):
    "init='lsh' gives LSH's codes before training; SSAH's recipe still runs (it is the `ssah` row of the benchmark)"
    e = _toy(50)
    head = HashHead(list(e), 16, 32, init='lsh', seed=3, shared=True)
    assert all(torch.equal(head.encode(e)[m], lsh_codes(v, 32, 3)) for m, v in e.items())
    assert head.proj['image'] is head.proj['text']  # one projection
    ssah = fit_hash_head(e, bits=16, seed=0, **{**H.SSAH, 'epochs': 2})
    assert ssah.proj['image'] is not ssah.proj['text'] and not ssah.shared

