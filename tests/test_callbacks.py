"""Callbacks and learner options that would clutter the docs: an empty validation part, model selection on validation
retrieval, progress output by where it goes, the precision that actually ran."""
import io, math, re, sys, warnings
import numpy as np, pytest, torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from cmrl.core import set_seed, modality_dls
from cmrl.data.synth import SynthEvents
from cmrl.encoders import input_dims
from cmrl.models.registry import make_model
from cmrl.learner import cmrl_learner
from cmrl.callbacks import SaveCheckpoint, EpochLog, ValidRetrieval, CodebookStats
from cmrl.checkpoint import read_checkpoint, load_model


def _learner(path, n_valid=16, cbs=(), name='unicode', **kw):
    set_seed(0)
    trn, val = SynthEvents(24, seed=0), SynthEvents(max(n_valid, 1), seed=1)
    dls = modality_dls([trn[i] for i in range(24)], [val[i] for i in range(n_valid)], bs=8, device='cpu')
    xb, = dls.one_batch()
    model = make_model(name, xb.modalities, input_dims(xb, vocab=len(trn.vocab)), d=16, steps=5, n_layers=1, n_codes=16)
    return cmrl_learner(dls, model, lr=3e-3, mi_steps=1, path=path, cbs=list(cbs), **kw)


def _log(learn) -> io.StringIO:
    buf = io.StringIO()
    next(cb for cb in learn.cbs if isinstance(cb, EpochLog)).file = buf
    return buf


def test_empty_validation_part(tmp_path):
    "No validation items: training runs, every callback copes, the log says '-', and the checkpoint keeps the last weights only"
    learn = _learner(tmp_path, n_valid=0, cbs=[SaveCheckpoint(monitor='valid_R@10')], progress=False)
    buf = _log(learn)
    learn.fit(2)
    assert [r['valid'] for r in learn.loss_history] == [{}, {}]
    assert all(math.isfinite(r['train']['loss']) for r in learn.loss_history)
    assert next(cb for cb in learn.cbs if isinstance(cb, CodebookStats)).history == []
    assert next(cb for cb in learn.cbs if isinstance(cb, ValidRetrieval)).history == []
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all('valid_loss -' in l and 'valid_R@10 -' in l for l in lines)
    ck = read_checkpoint(tmp_path)
    assert ck['best'] is None and ck['epoch'] == 1
    model, ck = load_model(tmp_path)  # 'best' asked, none kept: the last weights
    assert ck['weights'] == 'last'


def test_best_weights_by_validation_retrieval(tmp_path):
    class Snap(Callback):
        order = 95
        def before_fit(self): self.states = []
        def after_epoch(self): self.states.append({k: v.clone() for k, v in self.model.state_dict().items()})
    snap = Snap()
    learn = _learner(tmp_path, cbs=[SaveCheckpoint(monitor='valid_R@10'), snap], progress=False)
    with learn.no_logging(): learn.fit(4, 1e-2)
    col = learn.recorder.metric_names.index('valid_R@10') - 1
    r10 = [float(v[col]) for v in learn.recorder.values]
    hist = next(cb for cb in learn.cbs if isinstance(cb, ValidRetrieval)).history
    assert [h['valid_R@10'] for h in hist] == pytest.approx(r10)
    assert all(0 <= v <= 100 for v in r10)
    ck = read_checkpoint(tmp_path)
    best = int(np.argmax(r10))  # the first epoch with the highest value (ties do not replace it)
    assert (ck['best']['metric'], ck['best']['epoch']) == ('valid_R@10', best) and ck['best']['value'] == pytest.approx(r10[best])
    assert all(torch.equal(ck['best']['model'][k], snap.states[best][k]) for k in ck['best']['model'])


def test_unknown_monitor_warns_and_keeps_last(tmp_path):
    learn = _learner(tmp_path, cbs=[SaveCheckpoint(monitor='valid_accuracy')], progress=False)
    with pytest.warns(UserWarning, match="no 'valid_accuracy' column"), learn.no_logging(): learn.fit(1)
    assert read_checkpoint(tmp_path)['best'] is None


def test_progress_follows_the_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: False, raising=False)
    logged = _learner(tmp_path)
    assert not any(isinstance(cb, ProgressCallback) for cb in logged.cbs) and any(isinstance(cb, EpochLog) for cb in logged.cbs)
    monkeypatch.setattr(sys.stderr, 'isatty', lambda: True, raising=False)
    bars = _learner(tmp_path)
    assert any(isinstance(cb, ProgressCallback) for cb in bars.cbs) and not any(isinstance(cb, EpochLog) for cb in bars.cbs)
    assert not any(isinstance(cb, ProgressCallback) for cb in _learner(tmp_path, progress=False).cbs)
    assert any(isinstance(cb, ProgressCallback) for cb in _learner(tmp_path, progress=True).cbs)


def test_one_line_per_epoch_and_quiet(tmp_path):
    learn = _learner(tmp_path, progress=False)
    buf = _log(learn)
    learn.fit(3)
    lines = buf.getvalue().splitlines()
    assert [l.split('  ')[0] for l in lines] == ['epoch 1/3', 'epoch 2/3', 'epoch 3/3']
    assert all(re.search(r'train_loss [\d.]+  valid_loss [\d.]+ .* time \d\d:\d\d$', l) for l in lines), lines
    buf.truncate(0)
    with learn.no_logging(): learn.fit(1)
    assert buf.getvalue() == ''


def test_precision_used(tmp_path):
    if torch.cuda.is_available(): pytest.skip('CPU-only behaviour')
    with pytest.warns(UserWarning, match='needs CUDA'): learn = _learner(tmp_path, precision='fp16')
    assert learn.precision_used == 'fp32'
    assert _learner(tmp_path).precision_used == 'fp32'



def test_validation_cancelled_by_another_callback(tmp_path):
    "A run whose validation a callback cancels (as `cmrl train` does with no validation part): callbacks cope, the log has no valid column"
    from fastai.callback.core import CancelValidException
    class NoValid(Callback):
        order = 0
        def before_validate(self): raise CancelValidException()
    learn = _learner(tmp_path, cbs=[NoValid(), SaveCheckpoint(monitor='valid_loss')], progress=False)
    buf = _log(learn)
    learn.fit(2)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(re.fullmatch(r'epoch \d/2  train_loss [\d.]+  time \d\d:\d\d', l) for l in lines), lines
    assert next(cb for cb in learn.cbs if isinstance(cb, CodebookStats)).history == []
    assert next(cb for cb in learn.cbs if isinstance(cb, ValidRetrieval)).history == []
    assert read_checkpoint(tmp_path)['best'] is None
