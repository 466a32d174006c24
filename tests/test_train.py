"Training loop: exact resume, NaN/Inf guard, the `cmrl train` command, mixed precision and devices."
import json, math, warnings
from pathlib import Path
import pytest, torch
from fastai.callback.core import Callback, CancelFitException
from cmrl.core import set_seed, modality_dls, collate_items, AUDIO
from cmrl.data.synth import SynthEvents
from cmrl.encoders import input_dims
from cmrl.models.unicode import unicode_model
from cmrl.models.baselines import continuous_baseline
from cmrl.learner import cmrl_learner
from cmrl.checkpoint import load_checkpoint, read_checkpoint
from cmrl.models.registry import rebuild
from cmrl.train import train, train_cli, TrainConfig

torch.set_num_threads(1)
TINY = dict(data='synth', model='unicode', epochs=3, n_train=32, n_valid=16, bs=8, d=16, steps=5, n_layers=1, n_codes=16,
            mi_steps=2, lr=3e-3)

class _Interrupt(Callback):
    "Stop the run after `n` epochs, as a crash or Ctrl-C would (the checkpoint of that epoch is written first)"
    order = 95
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 >= self.n: raise CancelFitException()

def _state(path):
    ck = read_checkpoint(path)
    return ck['model'], ck

def test_exact_resume(tmp_path):
    "Interrupting after epoch 1 and resuming from the checkpoint gives the same parameters and codebook as an uninterrupted run"
    a, b = tmp_path / 'straight', tmp_path / 'resumed'
    train(TrainConfig(**TINY, out=str(a)), quiet=True)
    train(TrainConfig(**TINY, out=str(b)), quiet=True, cbs=[_Interrupt(1)])
    assert read_checkpoint(b)['epoch'] == 0
    s = train(TrainConfig(**TINY, out=str(b), resume=True), quiet=True)
    sa, ca = _state(a); sb, cb = _state(b)
    assert ca['epoch'] == cb['epoch'] == 2
    assert sa.keys() == sb.keys()
    diff = {k: (sa[k].float() - sb[k].float()).abs().max().item() for k in sa if not torch.equal(sa[k], sb[k])}
    assert not diff, diff
    assert int(sa['codebook.steps']) == int(sb['codebook.steps']) > 0
    assert ca['callbacks']['MIEstimatorSteps']['opt'] is not None
    assert ca['callbacks']['LossBreakdown']['history'] == cb['callbacks']['LossBreakdown']['history']  # the history continues
    assert len(s['loss_history']) == 3

class _Poison(Callback):
    "Put NaN into the audio of training batch `i` (input corruption)"
    order = -60
    def __init__(self, i): self.i = i
    def before_batch(self):
        if self.training and self.iter == self.i:
            self.learn.xb[0]['x'][AUDIO][0, :3] = float('nan')  # fastai hands the moved batch on as a plain dict

class _BadLoss(Callback):
    "Make the loss of training batch `i` non-finite after the forward pass (after the codebook's EMA update)"
    order = 12
    def __init__(self, i): self.i = i
    def after_pred(self):
        if self.training and self.iter == self.i: self.learn.pred = self.learn.pred._replace(loss=self.learn.pred.loss * float('inf'))

def _learner(cbs):
    set_seed(0)
    trn, val = SynthEvents(32, seed=0), SynthEvents(16, seed=1)
    dls = modality_dls([trn[i] for i in range(32)], [val[i] for i in range(16)], bs=8, device='cpu')
    xb, = dls.one_batch()
    model = unicode_model(xb.modalities, input_dims(xb, vocab=len(trn.vocab)), d=16, steps=5, n_layers=1, n_codes=16)
    return cmrl_learner(dls, model, lr=3e-3, mi_steps=1, cbs=cbs)

def test_nan_guard_skips_and_keeps_weights_finite():
    learn = _learner([_Poison(1), _BadLoss(2)])
    with pytest.warns(UserWarning, match='skipped a batch'):
        with learn.no_bar(), learn.no_logging(): learn.fit(2, 3e-3)
    assert learn.nan_skipped == 4  # 2 epochs x (1 poisoned input + 1 non-finite loss)
    nanguard = next(cb for cb in learn.cbs if type(cb).__name__ == 'NaNGuard')
    assert nanguard.reasons == {'non-finite inputs': 2, 'a non-finite loss': 2}
    for n, t in list(learn.model.named_parameters()) + list(learn.model.named_buffers()):
        if t.is_floating_point(): assert torch.isfinite(t).all(), n
    assert all(math.isfinite(v) for r in learn.loss_history for s in ('train', 'valid') for v in r[s].values())
    assert all(math.isfinite(l) for l in learn.recorder.losses)

def test_nan_guard_restores_codebook():
    "A non-finite loss puts the codebook's EMA state back to what it was before the batch"
    learn = _learner([_BadLoss(0)])
    cb = learn.model.codebook
    snap = {}
    class _Snap(Callback):
        order = -70
        def before_batch(self):
            if self.training and self.iter == 0: snap.update({k: v.clone() for k, v in cb.state_dict().items()})
    class _Check(Callback):
        order = 99
        def after_cancel_batch(self):
            for k, v in cb.state_dict().items(): assert torch.equal(v, snap[k]), k
            snap['checked'] = True
    learn.add_cbs([_Snap(), _Check()])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 3e-3)
    assert snap.get('checked')

def test_nan_guard_stops_when_most_batches_bad():
    class _AllBad(_BadLoss):
        def after_pred(self):
            if self.training: self.learn.pred = self.learn.pred._replace(loss=self.learn.pred.loss * float('nan'))
    learn = _learner([_AllBad(0)])
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match='non-finite'):
        warnings.simplefilter('ignore')
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 3e-3)

def test_cli_synth_writes_outputs(tmp_path, capsys):
    rc = train_cli(['--data', 'synth', '--epochs', '1', '--n-train', '32', '--n-valid', '16', '--bs', '8', '--d', '16', '--steps', '5',
                    '--n-layers', '1', '--n-codes', '16', '--out', str(tmp_path), '--quiet'])
    assert rc == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ['checkpoint.pt', 'codebook.png', 'config.json', 'losses.png', 'metrics.json']
    m = json.loads((tmp_path / 'metrics.json').read_text())
    assert m['model'] == 'unicode' and m['epochs'] == 1 and math.isfinite(m['train_loss']) and m['codebook'][0]['epoch'] == 0
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['model_config']['n_codes'] == 16 and cfg['modalities'] == ['video', 'audio', 'text']
    o = capsys.readouterr()  # stdout: one JSON document; the summary for people: stderr
    assert 'cmrl train: unicode on synth' in o.err and json.loads(o.out)['n_params'] == m['n_params']
    # the checkpoint rebuilds the model through the registry
    ck = read_checkpoint(tmp_path)
    model = rebuild(ck['model_config'])
    model.load_state_dict(ck['model'])
    assert ck['config']['source'] == {'name': 'synth', 'n_train': 32, 'n_valid': 16, 'n_test': 0, 'seed': 0}


@pytest.mark.parametrize('name', ['continuous', 'liu2022', 'opt', 'plain_codebook'])
def test_cli_other_models(tmp_path, name):
    s = train(TrainConfig(**{**TINY, 'model': name, 'epochs': 1}, out=str(tmp_path)), quiet=True)
    assert math.isfinite(s['train_loss']) and (tmp_path / 'checkpoint.pt').exists()

def test_cli_bad_arguments(tmp_path, capsys):
    assert train_cli(['--data', 'nowhere', '--out', str(tmp_path)]) == 2
    assert 'unknown data source' in capsys.readouterr().err
    assert train_cli(['--model', 'nonsense']) == 2  # argparse's refusal, as every command's


def test_cli_flags_come_from_the_config():
    "One option per `TrainConfig` field, its help the field's docments comment (no parsing of the source by hand)"
    from dataclasses import fields
    from fastcore.docments import docments
    import cmrl.train as t
    assert not hasattr(t, '_field_help')
    p = t.train_parser()
    acts = {a.dest: a for a in p._actions}
    helps = docments(TrainConfig)
    for f in fields(TrainConfig):
        assert f.name in acts, f.name
        assert acts[f.name].help.startswith(helps[f.name]), f.name
    for extra in ('quiet', 'progress'): assert extra in acts
    a = vars(p.parse_args(['--no-cosine', '--resume', '--overwrite', '--valid-pct', '0.3', '--n-train', '5', '--quiet', '--progress']))
    assert a == {'cosine': False, 'resume': True, 'overwrite': True, 'valid_pct': 0.3, 'n_train': 5, 'quiet': True, 'progress': True}


@pytest.mark.gpu
@pytest.mark.parametrize('precision', ['fp32', 'fp16', 'bf16'])
def test_gpu_training(tmp_path, precision):
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA device')
    s = train(TrainConfig(**{**TINY, 'epochs': 2, 'precision': precision, 'device': 'cuda'}, out=str(tmp_path)), quiet=True)
    assert s['device'].startswith('cuda') and math.isfinite(s['train_loss']) and s['nan_skipped'] == 0
    assert s['precision'] == s['precision_requested'] == precision  # what ran, on CUDA
    ck = read_checkpoint(tmp_path)
    assert all(torch.isfinite(v).all() for v in ck['model'].values() if v.is_floating_point())
    assert ck['model']['codebook.embed'].dtype == torch.float32


def test_train_defaults_and_audio_width():
    "The main job's defaults: 40 epochs, the wider log-mel stem, 5-byte n-grams, bytes with word vectors; a negative width is refused by its option"
    from cmrl.train import TrainConfig, check_config
    assert TrainConfig().audio_width == 128 and TrainConfig().epochs == 40 and TrainConfig().text_ngram == 5
    assert TrainConfig().text_frontend == 'bytes+wordvec'
    assert (TrainConfig().feature_hidden, TrainConfig().feature_dropout, TrainConfig().feature_norm) == (512, 0.3, 'standard')
    with pytest.raises(ValueError, match='--text-frontend'): check_config(TrainConfig(text_frontend='glove'))
    with pytest.raises(ValueError, match='--audio-width'): check_config(TrainConfig(audio_width=-1))


def test_train_records_text_ngram(tmp_path):
    "`--text-ngram K` builds the token stem's n-gram convolution, records K in the run's dims, and the checkpoint loads with it"
    from cmrl.train import TrainConfig, check_config
    for bad in (-1, 4):
        with pytest.raises(ValueError, match='--text-ngram'): check_config(TrainConfig(text_ngram=bad))
    train(TrainConfig(**{**TINY, 'epochs': 1, 'text_ngram': 3}, out=str(tmp_path)), quiet=True)
    ck = read_checkpoint(tmp_path)
    assert ck['config']['dims']['text']['text_ngram'] == 3 and ck['model']['encoders.text.stem.conv.weight'].shape[-1] == 3
    from cmrl.checkpoint import load_model
    assert load_model(tmp_path)[0].encoders['text'].stem.ngram == 3


def test_old_format_checkpoint_resumes_with_the_stems_it_trained_with(tmp_path):
    """Issue 27 item 9: a version-2 checkpoint whose config predates --audio-width, --text-ngram and --text-frontend:
    `read_checkpoint` fills them from its format version (not `cmrl.train`); the run resumes with the stems it was built with"""
    out = tmp_path / 'run'
    train(TrainConfig(data='synth', n_train=16, n_valid=8, bs=8, d=8, steps=2, n_layers=1, n_codes=8, mi_steps=1, epochs=1,
                      audio_width=0, text_ngram=0, text_frontend='bytes', out=str(out)), quiet=True)
    ck = torch.load(out / 'checkpoint.pt', weights_only=True)
    cfg = json.loads(ck['config']) if isinstance(ck['config'], str) else ck['config']
    for k in ('audio_width', 'text_ngram', 'text_frontend'): del cfg[k]
    ck['config'] = json.dumps(cfg) if isinstance(ck['config'], str) else cfg
    from cmrl.core import ItemIds
    ck['version'], ck['train_ids'] = 2, list(ItemIds.from_state(ck['train_ids']))  # format 2 kept the ids as a list
    torch.save(ck, out / 'checkpoint.pt')
    old = read_checkpoint(out)['config']
    assert (old['audio_width'], old['text_ngram'], old['text_frontend']) == (0, 0, 'bytes')
    s = train(out=str(out), resume=True, epochs=2, quiet=True)
    assert s['start_epoch'] == 1 and read_checkpoint(out)['config']['audio_width'] == 0
    import cmrl.train
    assert not hasattr(cmrl.train, 'LEGACY_STEMS')
