"benchmarks/scale.py (issue 30) at a small size: the `scale:` line, a store of about the raw size, a working CCA peer."
import mmap, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).parents[1]
LINE = re.compile(r"^scale: n=(\d+) pack_s=([\d.]+) store_mb=([\d.]+) raw_mb=([\d.]+) load_items_per_s=(\d+) "
                  r"train_items_per_s_per_core=(\d+) peak_rss_mb=(\d+) loader_share=([\d.]+) "
                  r"heldout_R@10=([\d.]+)$", re.M)


def test_scale_small(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'scale.py'), '--sizes', '2000',
                        '--json', str(tmp_path / 's.json'), '--work', str(tmp_path / 'w')],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    m = LINE.search(r.stdout)
    assert m, r.stdout
    n, pack_s, store_mb, raw_mb, load, train, rss, share, r10 = m.groups()
    assert int(n) == 2000 and float(store_mb) <= 1.1 * float(raw_mb) and int(load) > 0 and int(train) > 0
    assert 0 <= float(share) <= 1 and 0 <= float(r10) <= 100
    cca = float(re.search(r"^cca: n=2000 heldout_R@10=([\d.]+)$", r.stdout, re.M).group(1))
    assert cca >= 90  # the planted structure is linear: a linear CCA finds it on 1,000 training items
    assert not list((tmp_path / 'w').glob('store-*'))  # cleaned up
    gl = re.findall(r"^goal: (.+): (met|MISSED) \((.+)\)$", r.stdout, re.M)
    assert {g[0] for g in gl} >= {'loader <= 10 % of a step (n=2000)', 'random reads >= 20,000 items/s (n=2000)',
                                  'training >= 2,000 items/s/core (n=2000)', 'store <= 1.1 x raw bytes (n=2000)'}
    import json
    j = json.loads((tmp_path / 's.json').read_text())
    assert j['goals'] == [f"goal: {a}: {b} ({c})" for a, b, c in gl] and j['sizes'][0]['item_load_items_per_s'] > 0


def test_store_reads_through_memory_maps(tmp_path):
    "Streaming: a store's rows stay memory-mapped files; a read copies one item, nothing is loaded whole"
    import numpy as np
    import importlib.util
    spec = importlib.util.spec_from_file_location('scale', ROOT / 'benchmarks' / 'scale.py')
    scale = importlib.util.module_from_spec(spec); spec.loader.exec_module(scale)
    from cmrl.data.store import FeatureStore, StoreDataset
    scale.pack_planted(1500, tmp_path / 'st', shard_size=500)
    fs = FeatureStore(tmp_path / 'st')
    ds = StoreDataset(fs, np.arange(fs.n), scale.MODS)
    for i in range(0, fs.n, 7): ds[i]
    assert len(fs.meta['shards']) == 3
    def mapped(a):  # a view of a memory-mapped file
        while a is not None and not isinstance(a, mmap.mmap): a = getattr(a, 'base', None)
        return a is not None
    for k in range(3):
        for m in scale.MODS: assert all(map(mapped, fs.shard(k)['mods'][m]))
    x = ds[1234]['audio']
    assert x.shape == (10, 128) and x.dtype.is_floating_point and not isinstance(x.numpy(), np.memmap)


def test_scale_phases_small(tmp_path):
    "benchmarks/scale_phases.py: every phase of a step in CPU milliseconds, shares summing to 1; bad --variants: exit 2"
    import json
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'scale_phases.py'), '--n', '1600',
           '--json', str(tmp_path / 'p.json')]
    r = subprocess.run(cmd + ['--variants', '[{"mi_steps": 0}]'], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    v, = json.loads((tmp_path / 'p.json').read_text())['variants']
    assert v['kw'] == {'mi_steps': 0} and v['steps'] == 1 and v['n_train'] == 600
    assert abs(sum(p['share'] for p in v['phases'].values()) - 1) < 1e-6
    assert v['phases']['forward']['cpu_ms_per_step'] > 0
    bad = subprocess.run(cmd + ['--variants', '{"mi_steps": 0}'], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and 'JSON list' in bad.stderr and 'Traceback' not in bad.stderr


def test_scale_ceiling_small(tmp_path):
    "benchmarks/scale_ceiling.py: counted work per item, a ceiling above the measured rate, the goal line; too few items: exit 2"
    import json
    cmd = [sys.executable, str(ROOT / 'benchmarks' / 'scale_ceiling.py'), '--json', str(tmp_path / 'c.json')]
    r = subprocess.run(cmd + ['--n', '3600', '--timed', '3', '--profiled', '2'], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    j = json.loads((tmp_path / 'c.json').read_text())
    assert j['flops_per_item'] > 1e6 and j['steps_timed'] == 3 and 0 < sum(j['op_share'].values()) <= 1
    assert j['items_per_cpu_s'] < j['ceiling_items_per_s_per_core'] and 0 < j['efficiency'] < 1
    # the model's parts timed alone (no --compile: eager only): a stem and two stacks per modality, summed by kind
    parts, tot = j['parts_ms']['eager'], j['parts_total_ms']
    assert set(tot) == {'eager'} and j['budget_ms'] == 128 and len(parts) == 9 and min(parts.values()) > 0
    assert abs(tot['eager']['all'] - tot['eager']['stem'] - tot['eager']['transformer']) < 1e-6
    assert j['first_optimizer']['seconds'] > 0 and j['first_optimizer']['dynamo_before'] is False
    assert re.search(r"^goal: training >= 2,000 items/s/core: .+ no implementation exceeds \d+ items/s/core", r.stdout, re.M)
    bad = subprocess.run(cmd + ['--n', '2000'], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert bad.returncode == 2 and '--n 2000' in bad.stderr


def test_scale_memory_small(tmp_path):
    "benchmarks/scale_memory.py: RssAnon of each setup stage in a fresh process, and the count of recorded train_ids"
    import json
    r = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'scale_memory.py'), '--sizes', '1500', '--work',
                        str(tmp_path / 'w'), '--json', str(tmp_path / 'm.json')], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads((tmp_path / 'm.json').read_text())['sizes'][0]
    assert row['n'] == 1500 and row['n_train_ids'] == 500 and row['imports_mb'] > 0
    assert {'source', 'make_dls', 'make_dls_without_train_ids', 'first_batch'} <= set(row)
    assert re.search(r"^memory: n=1500 .*n_train_ids=500", r.stdout, re.M)
