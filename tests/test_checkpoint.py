"""The checkpoint format (`cmrl.checkpoint`): nothing in a file ever runs (crafted pickles are refused), every broken file gets a
clear `CheckpointError`, writes are atomic, resume is exact and refuses another model or width, and every registered model
rebuilds from its checkpoint alone (`cmrl.models.registry`)."""
import io, os, pickle, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback, CancelFitException
from cmrl.core import set_seed, modality_dls, collate_items
from cmrl.data.synth import SynthEvents
from cmrl.encoders import input_dims
from cmrl.learner import cmrl_learner
from cmrl.callbacks import SaveCheckpoint
from cmrl.checkpoint import (FORMAT, VERSION, CheckpointError, save_checkpoint, read_checkpoint, load_checkpoint, find_checkpoint,
                             load_model, plain)
from cmrl.models.registry import MODELS, make_model, rebuild

KEYS = {'format', 'version', 'config', 'model_config', 'model', 'best', 'opt', 'epoch', 'n_epoch', 'rng', 'callbacks', 'train_ids',
        'frontends', 'extra', 'torch_version'}


def _data(n_train=24, n_valid=16):
    set_seed(0)
    trn, val = SynthEvents(n_train, seed=0), SynthEvents(max(n_valid, 1), seed=1)
    dls = modality_dls([trn[i] for i in range(n_train)], [val[i] for i in range(n_valid)], bs=8, device='cpu')
    xb, = dls.one_batch()
    return dls, xb, input_dims(xb, vocab=len(trn.vocab))


def _learner(path, cbs=(), name='unicode', d=16, **opts):
    dls, xb, dims = _data()
    set_seed(0)
    model = make_model(name, xb.modalities, dims, d=d, steps=5, n_layers=1, n_codes=16, **opts)
    return cmrl_learner(dls, model, lr=3e-3, mi_steps=1, path=path, cbs=list(cbs), progress=False)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A 2-epoch run of a tiny Uni-Code that keeps the best weights by validation R@10"
    p = tmp_path_factory.mktemp('run')
    learn = _learner(p, [SaveCheckpoint(config={'lr': 3e-3, 'mods': ('video', 'audio')}, monitor='valid_R@10', train_ids=range(24),
                                        frontends={'image_size': 32}, extra={'heads': ['probe']})])
    with learn.no_logging(): learn.fit(2)
    return p, learn


# --- loading never runs code -------------------------------------------------------------------------------------------------

class _Marker:
    "A pickle payload: unpickling it runs `touch <marker>` (what a crafted checkpoint.pt does)"
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def _crafted_files(d: Path, marker: Path) -> dict:
    "Malicious checkpoints: torch's zip format and a bare pickle, each a cmrl-looking dict whose values run a command"
    files = {}
    files['zip'] = d / 'zip' / 'checkpoint.pt'
    files['zip'].parent.mkdir()
    torch.save({'format': FORMAT, 'version': VERSION, 'model': {'w': torch.zeros(1)}, 'epoch': 0, 'model_config': '{}',
                'config': _Marker(marker)}, files['zip'])
    files['pickle'] = d / 'pickle.pt'
    files['pickle'].write_bytes(pickle.dumps({'format': FORMAT, 'version': VERSION, 'rng': _Marker(marker)}, protocol=2))
    files['exec'] = d / 'exec.pt'
    files['exec'].write_bytes(pickle.dumps(_Exec(marker)))
    return files


class _Exec:
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (exec, (f"open({self.marker!r}, 'w').write('x')",))


def test_crafted_checkpoints_are_refused_and_run_nothing(tmp_path, run):
    marker = tmp_path / 'marker'
    files = _crafted_files(tmp_path, marker)
    learn = run[1]
    for kind, f in files.items():
        with pytest.raises(CheckpointError, match='not a cmrl checkpoint') as e: read_checkpoint(f)
        print(f'{kind}: {e.value}')
        with pytest.raises(CheckpointError, match='not a cmrl checkpoint'): load_model(f)
        with pytest.raises(CheckpointError, match='not a cmrl checkpoint'): load_checkpoint(learn, f)
        assert not marker.exists(), f'{kind}: code ran'
    with pytest.raises(CheckpointError, match=r'unsafe/older version\): it holds posix.system'): read_checkpoint(files['zip'])
    # the payloads are real: an unsafe load (in another process) does run them
    code = f"import pickle; pickle.load(open({str(files['pickle'])!r}, 'rb'))"
    subprocess.run([sys.executable, '-c', code], check=True, cwd=tmp_path)
    assert marker.exists()


def test_old_unsafe_checkpoints_are_refused(tmp_path):
    "The previous format (NumPy RNG state, pickled with weights_only=False) is refused with the same clear message"
    import numpy as np, random
    p = tmp_path / 'checkpoint.pt'
    torch.save({'model': {'w': torch.zeros(2)}, 'epoch': 3, 'rng': {'numpy': np.random.get_state(), 'python': random.getstate()}}, p)
    with pytest.raises(CheckpointError, match=r'not a cmrl checkpoint \(or was written by an unsafe/older version\): it holds numpy'):
        read_checkpoint(tmp_path)


# --- every broken file gets a clear error ------------------------------------------------------------------------------------

def test_broken_files(tmp_path, run):
    good = (run[0] / 'checkpoint.pt').read_bytes()
    cases = {'empty.pt': (b'', r'is empty \(0 bytes\)'), 'text.pt': (b'hello, not a checkpoint\n', 'not a cmrl checkpoint'),
             'half.pt': (good[:len(good) // 2], 'truncated or corrupt'), 'head.pt': (good[:100], 'truncated or corrupt'),
             'tail.pt': (good[:-10], 'truncated or corrupt')}
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=msg): read_checkpoint(tmp_path / name)
    ck = torch.load(run[0] / 'checkpoint.pt', weights_only=True)
    for name, obj, msg in [('sd.pt', {'w': torch.zeros(1)}, "not a cmrl checkpoint: it holds a dict without 'format'"),
                           ('tensor.pt', torch.zeros(3), 'not a cmrl checkpoint: it holds a Tensor'),
                           ('newer.pt', {**ck, 'version': VERSION + 1}, f'newer cmrl \\(checkpoint format version {VERSION + 1}; this one reads version {VERSION}\\): upgrade'),
                           ('older.pt', {**ck, 'version': 1}, 'older checkpoint format version 1'),
                           ('badjson.pt', {**ck, 'config': '{oops'}, "'config' entry is not valid JSON"),
                           ('nomodel.pt', {k: v for k, v in ck.items() if k != 'model'}, 'incomplete: no model')]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=msg): read_checkpoint(tmp_path / name)
    assert issubclass(CheckpointError, ValueError)
    with pytest.raises(FileNotFoundError, match='no checkpoint at'): find_checkpoint(tmp_path / 'nothing')
    (tmp_path / 'emptydir').mkdir()
    with pytest.raises(FileNotFoundError, match='no checkpoint.pt in it'): read_checkpoint(tmp_path / 'emptydir')
    (tmp_path / 'm').mkdir(); torch.save({**ck, 'model_config': '{"model": "gone"}'}, tmp_path / 'm' / 'checkpoint.pt')
    with pytest.raises(CheckpointError, match="model 'gone' is unknown to this installation; known: unicode"): load_model(tmp_path / 'm')


# --- the format ------------------------------------------------------------------------------------------------------------

def _only_plain(o, where='ck'):
    if isinstance(o, torch.Tensor) or o is None or type(o) in (bool, int, float, str): return
    assert type(o) in (dict, list, tuple) or isinstance(o, dict), f'{where}: {type(o)}'
    for k, v in (o.items() if isinstance(o, dict) else enumerate(o)): _only_plain(v, f'{where}[{k!r}]')


def test_format_keys_and_plain_types(run):
    p, learn = run
    raw = torch.load(p / 'checkpoint.pt', weights_only=True)
    assert set(raw) == KEYS and (raw['format'], raw['version']) == ('cmrl-checkpoint', 3)
    _only_plain(raw)
    ids = raw['train_ids']  # one UTF-8 buffer and its offsets, not a list of Python strings
    assert set(ids) == {'utf8', 'offsets'} and ids['utf8'].dtype == torch.uint8 and ids['offsets'].tolist()[-1] == len(ids['utf8'])
    for k in ('config', 'model_config', 'frontends', 'extra'): assert isinstance(raw[k], str)  # JSON text
    ck = read_checkpoint(p)
    assert ck['config'] == {'lr': 3e-3, 'mods': ['video', 'audio']} and ck['frontends'] == {'image_size': 32}
    assert ck['extra'] == {'heads': ['probe']} and ck['train_ids'] == [str(i) for i in range(24)]
    assert ck['model_config'] == __import__('json').loads(__import__('json').dumps(learn.model.config))
    assert ck['epoch'] == 1 and ck['n_epoch'] == 2
    assert ck['best']['metric'] == 'valid_R@10' and ck['best']['epoch'] in (0, 1)
    assert set(ck['callbacks']) >= {'LossBreakdown', 'NaNGuard', 'MIEstimatorSteps', 'CodebookStats', 'ValidRetrieval'}


def test_save_refuses_what_cannot_be_read_back_safely(tmp_path, run):
    class Bad(Callback):
        def state_dict(self): return {'fn': print}
        def load_state_dict(self, sd): pass
    learn = run[1]
    learn.add_cb(Bad())
    try:
        with pytest.raises(TypeError, match="callback Bad\\['fn'\\]: a builtin_function_or_method cannot be stored safely"):
            save_checkpoint(learn, tmp_path / 'x' / 'checkpoint.pt', 0)
    finally: learn.remove_cb(Bad)
    assert not (tmp_path / 'x' / 'checkpoint.pt').exists()
    with pytest.raises(TypeError): plain({('a', 1): 2})


def test_atomic_write_keeps_the_previous_checkpoint(tmp_path, run, monkeypatch):
    learn = run[1]
    p = save_checkpoint(learn, tmp_path / 'checkpoint.pt', 0)
    before = p.read_bytes()
    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b'partial'); raise KeyboardInterrupt()
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt): save_checkpoint(learn, p, 1)
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ['checkpoint.pt']
    monkeypatch.undo()
    assert read_checkpoint(p)['epoch'] == 0


# --- resume ------------------------------------------------------------------------------------------------------------------

class _StopAfter(Callback):
    order = 95
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 >= self.n: raise CancelFitException()


def test_exact_resume(tmp_path):
    "Interrupted after epoch 1 and resumed from the checkpoint = never interrupted: parameters, codebook, optimiser, histories, best"
    a, b = tmp_path / 'straight', tmp_path / 'resumed'
    la = _learner(a, [SaveCheckpoint(monitor='valid_R@10')])
    with la.no_logging(): la.fit_one_cycle(3)
    lb = _learner(b, [SaveCheckpoint(monitor='valid_R@10'), _StopAfter(1)])
    with lb.no_logging(): lb.fit_one_cycle(3)
    assert read_checkpoint(b)['epoch'] == 0
    lc = _learner(b, [SaveCheckpoint(monitor='valid_R@10')])
    done = load_checkpoint(lc, b)
    with lc.no_logging(): lc.fit_one_cycle(3, start_epoch=done['epoch'] + 1)
    ca, cc = read_checkpoint(a), read_checkpoint(b)
    assert ca['epoch'] == cc['epoch'] == 2
    diff = [k for k in ca['model'] if not torch.equal(ca['model'][k], cc['model'][k])]
    assert not diff, diff
    assert int(ca['model']['codebook.steps']) == int(cc['model']['codebook.steps']) > 0
    clock = lambda st: {**st, 'history': [{k: v for k, v in h.items() if k != 'seconds'} for h in st['history']]} if 'history' in st else st
    for k in ('LossBreakdown', 'CodebookStats', 'ValidRetrieval', 'NaNGuard'):  # wall seconds differ; every number else is exact
        assert clock(ca['callbacks'][k]) == clock(cc['callbacks'][k]), k
    assert len(ca['callbacks']['LossBreakdown']['history']) == 3
    assert ca['callbacks']['MIEstimatorSteps']['opt'] is not None
    sa, sc = ca['opt']['state'], cc['opt']['state']
    assert all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for x, y in zip(sa, sc) for k in x)
    assert (ca['best']['epoch'], ca['best']['value']) == (cc['best']['epoch'], cc['best']['value'])
    assert all(torch.equal(ca['best']['model'][k], cc['best']['model'][k]) for k in ca['best']['model'])


def test_resume_refuses_another_width_or_model(tmp_path, run):
    p = run[0]
    with pytest.raises(CheckpointError) as e: load_checkpoint(_learner(tmp_path, d=32), p)
    assert str(e.value) == f'--resume: the checkpoint in {p} was trained with d=16, this run asks for d=32; use the same settings or a new --out'
    with pytest.raises(CheckpointError, match='trained with model="unicode".*asks for model="plain_codebook"'):
        load_checkpoint(_learner(tmp_path, name='plain_codebook'), p)
    with pytest.raises(CheckpointError, match='n_codes=16.*n_codes=8'):
        dls, xb, dims = _data()
        load_checkpoint(cmrl_learner(dls, make_model('unicode', xb.modalities, dims, d=16, steps=5, n_layers=1, n_codes=8), progress=False), p)
    ok = _learner(tmp_path, seed=3)  # another seed: same model, resumable
    load_checkpoint(ok, p)


# --- rebuilding from the checkpoint alone ------------------------------------------------------------------------------------

def test_load_model_best_and_last(run):
    p, learn = run
    ck = read_checkpoint(p)
    last, c1 = load_model(p, weights='last')
    best, c2 = load_model(p)
    assert (c1['weights'], c2['weights']) == ('last', 'best') and not last.training
    assert all(torch.equal(v, ck['model'][k]) for k, v in last.state_dict().items())
    assert all(torch.equal(v, ck['best']['model'][k]) for k, v in best.state_dict().items())
    with pytest.raises(ValueError, match="'best' or 'last'"): load_model(p, weights='first')


@pytest.mark.parametrize('name', list(MODELS))
def test_every_model_rebuilds_from_its_checkpoint(tmp_path, name):
    dls, xb, dims = _data()
    model = make_model(name, xb.modalities, dims, d=16, steps=5, n_layers=1, n_codes=16, not_an_option=1)
    learn = cmrl_learner(dls, model, progress=False)
    save_checkpoint(learn, tmp_path / 'checkpoint.pt', 0)
    m, ck = load_model(tmp_path)
    assert ck['weights'] == 'last' and m.config['model'] == name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in m.state_dict().items())
    with torch.no_grad():
        e1, e2 = model.eval().embed(xb), m.embed(xb)
    assert all(torch.allclose(e1[k], e2[k]) for k in e1)


def test_registry():
    dls, xb, dims = _data()
    with pytest.raises(ValueError, match="unknown model 'nope'; choose from unicode, liu2022, opt, continuous, plain_codebook"):
        make_model('nope', xb.modalities, dims)
    with pytest.raises(ValueError, match='has no model'): rebuild({'modalities': ['video'], 'dims': {}})
