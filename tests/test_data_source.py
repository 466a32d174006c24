"Front-end configuration keys, grouped split properties, label maps."
import numpy as np, pytest, torch
from cmrl.data.cache import FrontendConfig
from cmrl.data.source import *

torch.set_num_threads(1)


def test_frontend_config_keys():
    c = FrontendConfig()
    keys = {c.key(), c.replace(n_mels=80).key(), c.replace(size=32).key(), c.replace(kind='chars').key(), c.replace(hop_ms=20).key()}
    assert len(keys) == 5
    assert c.replace(size=32).key('audio') == c.key('audio')
    assert FrontendConfig.from_dict(c.to_dict()) == c


def test_group_split_properties():
    rng = np.random.default_rng(0)
    groups = [f"g{int(g)}" for g in rng.integers(0, 120, 600)]
    strata = [int(g[1:]) % 5 for g in groups]
    sp = group_split(groups, strata, seed=3)
    by = {}
    for g, s in zip(groups, sp): by.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in by.values())
    n = {s: sp.count(s) for s in ('train', 'valid', 'test')}
    assert abs(n['train'] / 600 - .7) < .08 and n['valid'] > 40 and n['test'] > 40
    assert sp == group_split(groups, strata, seed=3)
    with pytest.raises(ValueError): group_split(groups, fracs=(('a', -1), ('b', 1)))


def test_label_map_stable():
    assert list(label_map(['b', 'a', 'c', 'a'])) == list(label_map(['c', 'a', 'b', None])) == ['a', 'b', 'c']
    assert list(label_map([10, 2, '1'])) == ['1', '2', '10'] and label_map(['x', 'y']).o2i == {'x': 0, 'y': 1}

