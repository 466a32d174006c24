"""`cmrl train`'s contract with a user's own data (issue 12, train side): empty validation parts, manifests in any
language with or without `split` fields, modality names checked, runs never overwritten silently, clear messages (exit 2,
no traceback) for bad settings and files, Ctrl-C keeps the last finished epoch (exit 130), the precision that ran."""
import json, math, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest, torch
from PIL import Image
from fastai.callback.core import Callback
from cmrl.checkpoint import read_checkpoint
from cmrl.train import train, train_cli, TrainConfig, Interrupted

torch.set_num_threads(1)
SMALL = ['--model', 'continuous', '--epochs', '1', '--bs', '4', '--d', '8', '--n-layers', '1', '--image-size', '16']
TINY_SYNTH = ['--data', 'synth', '--n-train', '16', '--n-valid', '8', '--bs', '8', '--d', '8', '--steps', '2', '--n-layers', '1',
              '--n-codes', '8', '--mi-steps', '1', '--epochs', '1']


def manifest(tmp: Path, n: int, label=lambda i: f"c{i % 3}", extra=lambda i: {}, name='items.jsonl') -> Path:
    "A manifest of `n` items, each a small PNG and a text, in `tmp`"
    rng = np.random.default_rng(0)
    (tmp / 'img').mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp / 'img' / f'{i}.png')
        lines.append(json.dumps({'id': f'item{i}', 'image': f'img/{i}.png', 'text': f'thing number {i}', 'label': label(i), **extra(i)}))
    p = tmp / name
    p.write_text('\n'.join(lines) + '\n')
    return p


def run(argv, capsys):
    "(exit status, stdout, stderr) of `cmrl train argv`"
    rc = train_cli([str(a) for a in argv])
    o = capsys.readouterr()
    return rc, o.out, o.err


def metrics(out: Path) -> dict: return json.loads((out / 'metrics.json').read_text())


# ---------------------------------------------------------------- 2: empty validation part
@pytest.mark.parametrize('case', ['one_item', '20_items_16_labels', 'one_group', 'split_train_test_only'])
def test_empty_validation_trains_without_it(tmp_path, capsys, case):
    if case == 'one_item': m = manifest(tmp_path, 1)
    elif case == '20_items_16_labels': m = manifest(tmp_path, 20, label=lambda i: f"c{i % 16}")
    elif case == 'one_group': m = manifest(tmp_path, 12, extra=lambda i: {'group': 'all'})
    else: m = manifest(tmp_path, 12, extra=lambda i: {'split': 'train' if i < 8 else 'test'})
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 0, se
    assert 'Traceback' not in se
    mt = metrics(out)
    if mt['n_valid'] == 0:
        assert 'training without validation' in se and mt['valid_loss'] is None and mt['validation'] is False
        assert '(trained without validation)' in se  # the summary: standard error
    assert math.isfinite(mt['train_loss'])
    assert (out / 'checkpoint.pt').exists()
    if case != '20_items_16_labels': assert mt['n_valid'] == 0  # these have no item to hold out
    if case == 'split_train_test_only': assert (mt['n_train'], mt['n_test']) == (8, 4)


# ---------------------------------------------------------------- 3: no language filter for manifests
def test_manifest_in_any_language_keeps_every_item(tmp_path, capsys):
    m = manifest(tmp_path, 12, extra=lambda i: {'lang': 'de'} if i % 2 else {})  # German, and items without `lang`
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 0, se
    mt = metrics(out)
    assert mt['n_train'] + mt['n_valid'] + mt['n_test'] == 12
    cfg = json.loads((out / 'config.json').read_text())
    assert 'langs' not in cfg['source']  # no filter passed: the source's own default (every item)
    # asked for explicitly, a filter applies
    rc, so, se = run(['--data', m, '--out', tmp_path / 'de', '--langs', 'de', '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 0, se
    mt = metrics(tmp_path / 'de')
    assert mt['n_train'] + mt['n_valid'] + mt['n_test'] == 6


# ---------------------------------------------------------------- 4: splits honoured; valid part only; train_ids
def test_split_fields_are_honoured(tmp_path, capsys):
    parts = ['train'] * 6 + ['valid'] * 3 + ['test'] * 3
    m = manifest(tmp_path, 12, extra=lambda i: {'split': parts[i]})
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 0, se
    mt = metrics(out)
    assert (mt['n_train'], mt['n_valid'], mt['n_test']) == (6, 3, 3)
    assert '6 train / 3 valid / 3 test' in se  # said at the start and in the summary, both on standard error
    assert read_checkpoint(out)['train_ids'] == [f'item{i}' for i in range(6)]


@pytest.mark.parametrize('valid_pct', [None, 0.5])
def test_without_split_fields_a_grouped_valid_part_and_no_test(tmp_path, capsys, valid_pct):
    m = manifest(tmp_path, 20)
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL]
                     + ([] if valid_pct is None else ['--valid-pct', valid_pct]), capsys)
    assert rc == 0, se
    mt = metrics(out)
    pct = 0.2 if valid_pct is None else valid_pct
    assert mt['n_test'] == 0 and mt['n_train'] + mt['n_valid'] == 20
    assert abs(mt['n_valid'] - pct * 20) <= 2, mt['n_valid']
    ids = read_checkpoint(out)['train_ids']
    assert len(ids) == mt['n_train'] and len(set(ids)) == len(ids) and set(ids) <= {f'item{i}' for i in range(20)}
    assert json.loads((out / 'config.json').read_text())['source']['valid_pct'] == pct


def test_synth_goes_through_the_data_layer(tmp_path, capsys):
    "No synthetic path of its own: the ids trained on are those of `get_source('synth', ...)`'s training part"
    from cmrl.data.loaders import get_source
    out = tmp_path / 'run'
    rc, so, se = run([*TINY_SYNTH, '--out', out], capsys)
    assert rc == 0, se
    ck = read_checkpoint(out)
    src = ck['config']['source']
    ids = [str(r['id']) for r in get_source(src.pop('name'), **src).split('train')]
    assert ck['train_ids'] == ids and len(ids) == 16


# ---------------------------------------------------------------- 5: modality names the source lacks
@pytest.mark.parametrize('mods,bad', [('image,imgae', 'imgae'), ('image,text,speech', 'speech')])
def test_modalities_the_source_lacks_are_refused(tmp_path, capsys, mods, bad):
    m = manifest(tmp_path, 8)
    rc, so, se = run(['--data', m, '--out', tmp_path / 'run', '--modalities', mods, '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 2 and 'Traceback' not in se
    assert bad in se and 'image, text' in se  # names what is wrong and what the source has
    assert not (tmp_path / 'run' / 'checkpoint.pt').exists()


def test_synth_refuses_image(tmp_path, capsys):
    rc, so, se = run([*TINY_SYNTH, '--modalities', 'image', '--out', tmp_path / 'run'], capsys)
    assert rc == 2 and 'video, audio, text' in se


# ---------------------------------------------------------------- 6: runs are never overwritten silently
def test_out_holding_a_run_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / 'run'
    assert run([*TINY_SYNTH, '--model', 'unicode', '--out', out, '--quiet'], capsys)[0] == 0
    assert (out / 'codebook.png').exists()
    before = (out / 'checkpoint.pt').stat().st_mtime_ns
    rc, so, se = run([*TINY_SYNTH, '--model', 'continuous', '--out', out, '--quiet'], capsys)
    assert rc == 2 and '--resume' in se and '--overwrite' in se
    assert (out / 'checkpoint.pt').stat().st_mtime_ns == before  # untouched
    rc, so, se = run([*TINY_SYNTH, '--model', 'continuous', '--out', out, '--overwrite', '--quiet'], capsys)
    assert rc == 0, se
    assert not (out / 'codebook.png').exists()  # the old run's plot is gone (a continuous model has no codebook)
    assert metrics(out)['model'] == 'continuous' and read_checkpoint(out)['config']['model'] == 'continuous'


def test_main_job_takes_the_next_free_numbered_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    outs = []
    for _ in range(3):
        rc, so, se = run([*TINY_SYNTH, '--quiet'], capsys)
        assert rc == 0, se
        outs.append(json.loads(so.strip().splitlines()[-1])['out'])
        assert f"writing to {outs[-1]}" in se
    assert outs == [str(Path('runs') / n) for n in ('cmrl-train', 'cmrl-train-2', 'cmrl-train-3')]
    assert all((tmp_path / o / 'checkpoint.pt').exists() for o in outs)
    rc, so, se = run(['--resume', '--epochs', '2', '--quiet'], capsys)  # no --out: the latest numbered run
    assert rc == 0, se
    assert f"resuming {Path(outs[-1]) / 'checkpoint.pt'}: 1 of 1 epoch(s) done" in se
    assert read_checkpoint(tmp_path / outs[-1])['epoch'] == 1 and read_checkpoint(tmp_path / outs[0])['epoch'] == 0


def test_resume_says_what_it_found_and_refuses_nothing(tmp_path, capsys):
    out = tmp_path / 'run'
    rc, so, se = run([*TINY_SYNTH, '--out', out, '--resume'], capsys)
    assert rc == 2 and 'nothing to resume' in se
    assert run([*TINY_SYNTH, '--epochs', '2', '--out', out, '--quiet'], capsys)[0] == 0
    rc, so, se = run(['--out', out, '--resume', '--epochs', '3', '--quiet'], capsys)  # the run's own settings, one more epoch
    assert rc == 0, se
    assert f"resuming {out / 'checkpoint.pt'}: 2 of 2 epoch(s) done" in se
    ck = read_checkpoint(out)
    assert ck['epoch'] == 2 and ck['config']['data'] == 'synth' and ck['config']['d'] == 8
    assert len(metrics(out)['loss_history']) == 3
    rc, so, se = run(['--out', out, '--resume', '--quiet'], capsys)
    assert rc == 2 and 'finished its 3 epoch(s)' in se


# ---------------------------------------------------------------- 9: clear messages, exit 2, no traceback
def _zero_byte(d: Path): d.mkdir(parents=True, exist_ok=True); (d / 'checkpoint.pt').write_bytes(b'')


def _truncated(d: Path, src: Path):
    d.mkdir(parents=True, exist_ok=True)
    b = (src / 'checkpoint.pt').read_bytes()
    (d / 'checkpoint.pt').write_bytes(b[:len(b) // 2])


BAD = {
    'bs_0': (['--bs', '0'], '--bs 0'),
    'epochs_0': (['--epochs', '0'], '--epochs 0'),
    'epochs_negative': (['--epochs', '-3'], '--epochs -3'),
    'device_gpu': (['--device', 'gpu'], "unknown device"),
    'device_cuda_without_cuda': (['--device', 'cuda'], 'no CUDA device'),
    'out_is_a_file': (['--out', '{tmp}/afile'], 'that is a file'),
    'zero_byte_checkpoint': (['--out', '{tmp}/zero', '--resume'], 'empty (0 bytes)'),
    'truncated_checkpoint': (['--out', '{tmp}/cut', '--resume'], 'truncated or corrupt'),
    'resume_other_widths': (['--out', '{tmp}/good', '--resume', '--d', '16'], 'use the same settings'),
}


@pytest.fixture(scope='module')
def good_run(tmp_path_factory):
    d = tmp_path_factory.mktemp('good') / 'run'
    s = train(TrainConfig(data='synth', n_train=16, n_valid=8, bs=8, d=8, steps=2, n_layers=1, n_codes=8, mi_steps=1, epochs=2, out=str(d)), quiet=True)
    assert s['epochs'] == 2
    return d


@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_one_clear_line(tmp_path, capsys, case, good_run):
    if case == 'device_cuda_without_cuda' and torch.cuda.is_available(): pytest.skip('this machine has CUDA')
    args, want = BAD[case]
    args = [a.format(tmp=tmp_path) for a in args]
    (tmp_path / 'afile').write_text('not a folder')
    _zero_byte(tmp_path / 'zero')
    _truncated(tmp_path / 'cut', good_run)
    if case == 'resume_other_widths':
        import shutil; shutil.copytree(good_run, tmp_path / 'good')
    base = [a for a in TINY_SYNTH]
    rc, so, se = run(base + args + ([] if '--out' in args else ['--out', tmp_path / 'new']), capsys)
    assert rc == 2, (rc, se)
    assert want in se, se
    assert 'Traceback' not in se and se.startswith('cmrl train:')
    if case in ('bs_0', 'epochs_0', 'epochs_negative', 'device_gpu'): assert not (tmp_path / 'new').exists()
    if case == 'resume_other_widths':
        assert read_checkpoint(tmp_path / 'good')['epoch'] == 1  # the run is left as it was


# ---------------------------------------------------------------- 9: Ctrl-C
class _CtrlC(Callback):
    "Press Ctrl-C in the middle of epoch `n` (0-based)"
    order = 99
    def __init__(self, n): self.n = n
    def after_batch(self):
        if self.training and self.epoch == self.n and self.iter == 0: raise KeyboardInterrupt()


def test_ctrl_c_keeps_last_epoch_and_says_how_to_resume(tmp_path):
    out = tmp_path / 'run'
    cfg = TrainConfig(data='synth', n_train=16, n_valid=8, bs=8, d=8, steps=2, n_layers=1, n_codes=8, mi_steps=1, epochs=4, out=str(out))
    with pytest.raises(Interrupted) as e: train(cfg, quiet=True, cbs=[_CtrlC(2)])
    assert e.value.epoch == 1 and f"cmrl train --out {out} --resume" in str(e.value) and '2 of 4 epochs done' in str(e.value)
    assert read_checkpoint(out)['epoch'] == 1
    assert not [p for p in out.iterdir() if p.name.endswith('.tmp')]
    s = train(out=str(out), resume=True, quiet=True)  # the run's own settings
    assert s['start_epoch'] == 2 and read_checkpoint(out)['epoch'] == 3


def test_ctrl_c_from_the_command_line_exits_130(tmp_path):
    "A real SIGINT to `cmrl train`: exit status 130, the message says how to resume, the checkpoint of a finished epoch is kept"
    out = tmp_path / 'run'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    argv = [sys.executable, '-m', 'cmrl.cli', 'train', *TINY_SYNTH[:-2], '--epochs', '500', '--out', str(out)]
    err = tmp_path / 'stderr.txt'
    with open(err, 'w') as fe:  # a file, not a pipe: 500 epoch lines would fill a pipe nobody reads yet
        # SIGINT as a terminal delivers it (a test runner started in the background may ignore it, and children inherit that)
        p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=fe, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        t0 = time.time()
        while not (out / 'checkpoint.pt').exists() and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.2)
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        so, _ = p.communicate(timeout=120)
    se = err.read_text()
    assert p.returncode == 130, se[-2000:]
    assert f"cmrl train --out {out} --resume" in se and 'Traceback' not in se
    e = read_checkpoint(out)['epoch']
    assert 0 <= e < 499 and f"{e + 1} of 500 epochs done" in se


# ---------------------------------------------------------------- 10: the precision that ran
def test_fp16_on_cpu_records_fp32(tmp_path, capsys):
    if torch.cuda.is_available(): pytest.skip('CPU-only behaviour')
    out = tmp_path / 'run'
    rc, so, se = run([*TINY_SYNTH, '--precision', 'fp16', '--device', 'cpu', '--out', out, '--quiet'], capsys)
    assert rc == 0, se
    mt = metrics(out)
    assert mt['precision'] == 'fp32' and mt['precision_requested'] == 'fp16'
    assert 'training in fp32' in se


# ---------------------------------------------------------------- logs
def test_logs_one_line_per_epoch_off_a_terminal(tmp_path, capsys):
    rc, so, se = run([*TINY_SYNTH[:-2], '--epochs', '3', '--out', tmp_path / 'run'], capsys)  # capsys: stderr is no terminal
    assert rc == 0, se
    assert '█' not in se and '\r' not in se  # no progress bar
    epochs = [l for l in se.splitlines() if l.startswith('epoch ')]
    assert [l.split()[1] for l in epochs] == ['1/3', '2/3', '3/3'], se
    assert all('train_loss' in l and 'valid_loss' in l for l in epochs)
    assert len(se) < 4000


def test_progress_flag_shows_bars(tmp_path, capsys):
    rc, so, se = run([*TINY_SYNTH, '--progress', '--out', tmp_path / 'run'], capsys)
    assert rc == 0, se
    assert '█' in se  # fastprogress bars


# ---------------------------------------------------------------- precomputed features in a manifest
def test_trains_on_precomputed_features(tmp_path, capsys):
    "`image_features` / `speech_features` `.npy` files stand in for the files; the model gets the matching input projections"
    rng = np.random.default_rng(0)
    (tmp_path / 'f').mkdir()
    lines = []
    for i in range(12):
        np.save(tmp_path / 'f' / f'img{i}.npy', rng.standard_normal(24).astype(np.float32))  # [D]: one step
        np.save(tmp_path / 'f' / f'sp{i}.npy', rng.standard_normal((5, 10)).astype(np.float32))  # [T, D]
        lines.append(json.dumps({'id': f'x{i}', 'image_features': f'f/img{i}.npy', 'speech_features': f'f/sp{i}.npy', 'label': f'c{i % 2}'}))
    m = tmp_path / 'feats.jsonl'; m.write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', '--model', 'continuous', '--epochs', '2', '--bs', '4',
                      '--d', '8', '--quiet'], capsys)
    assert rc == 0, se
    ck = read_checkpoint(out)
    stem = dict(feature_hidden=512, feature_dropout=0.3, feature_norm='standard')  # the default stem of float features
    assert ck['config']['dims'] == {'image': {'in_dim': 24, **stem}, 'speech': {'in_dim': 10, **stem}}
    assert ck['frontends']['feature_dims'] == {'image': 24, 'speech': 10}
    assert math.isfinite(metrics(out)['train_loss'])


@pytest.mark.parametrize('model', ['unicode', 'liu2022', 'opt', 'continuous', 'plain_codebook'])
def test_every_model_trains_on_a_manifest(tmp_path, capsys, model):
    "Files padded to the loaders' fixed lengths (text 64 tokens) train every registered model (OPT once failed here)"
    m = manifest(tmp_path, 10, extra=lambda i: {'split': 'valid' if i < 3 else 'train'})
    rc, so, se = run(['--data', m, '--out', tmp_path / 'run', '--cache', tmp_path / 'cache', *SMALL, '--model', model, '--n-codes', '8',
                      '--mi-steps', '1', '--quiet'], capsys)
    assert rc == 0, se
    mt = metrics(tmp_path / 'run')
    assert mt['model'] == model and math.isfinite(mt['train_loss']) and math.isfinite(mt['valid_loss'])


def test_frozen_image_features_front_end(tmp_path, capsys):
    "`--image-frontend efficientnet_lite0`: pictures become frozen ImageNet features; the model gets a feature projection"
    m = manifest(tmp_path, 8, extra=lambda i: {'split': 'valid' if i < 2 else 'train'})
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--image-frontend', 'efficientnet_lite0', '--quiet'], capsys)
    assert rc == 0, se
    ck = read_checkpoint(out)
    assert ck['config']['dims']['image'] == dict(in_dim=1280, feature_hidden=512, feature_dropout=0.3, feature_norm='standard')  # the default stem of frozen features
    assert ck['config']['source']['image_frontend'] == 'efficientnet_lite0'
    assert ck['frontends']['config']['image']['frontend'] == 'efficientnet_lite0'



def test_feature_stem_settings_are_recorded_and_rebuilt(tmp_path, capsys):
    "`--feature-norm standard --feature-hidden H --feature-dropout p`: the frozen features' stem is built with them, they are recorded in the dims, and the checkpoint rebuilds the same model with the training statistics"
    from cmrl.checkpoint import load_model
    from cmrl.encoders import RunningStandardize
    m = manifest(tmp_path, 8, extra=lambda i: {'split': 'valid' if i < 2 else 'train'})
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--image-frontend', 'efficientnet_lite0',
                      '--feature-norm', 'standard', '--feature-hidden', '24', '--feature-dropout', '0.2', '--quiet'], capsys)
    assert rc == 0, se
    ck = read_checkpoint(out)
    assert ck['config']['dims']['image'] == dict(in_dim=1280, feature_hidden=24, feature_dropout=0.2, feature_norm='standard')
    stem = load_model(out)[0].encoders['image'].stem
    assert isinstance(stem.norm, RunningStandardize) and stem.hidden == 24 and int(stem.norm.batches) > 0
    assert torch.equal(stem.norm.mean, ck['model']['encoders.image.stem.norm.mean']) and stem.norm.mean.abs().sum() > 0
    for bad, opt in (('-0.1', '--feature-dropout'), ('1', '--feature-dropout'), ('batch', '--feature-norm'), ('-3', '--feature-hidden')):
        rc, so, se = run(['--data', m, '--out', tmp_path / 'bad', '--cache', tmp_path / 'cache', *SMALL, opt, bad], capsys)
        assert rc == 2 and opt in se and 'Traceback' not in se

def _train_french(tmp_path, capsys, *options) -> tuple:
    "(manifest, run folder) of a one-epoch Uni-Code run on 8 pictures with French captions"
    fr = ['Un tigre.', 'Une pomme rouge.', "L'abeille.", 'Un chat noir.', 'Une poire.', 'Un lion.', 'La mairie.', 'Une fleur.']
    m = manifest(tmp_path, 8, extra=lambda i: {'split': 'valid' if i < 2 else 'train', 'text': fr[i]})
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--model', 'unicode', '--n-codes', '8',
                      '--mi-steps', '1', *options, '--quiet'], capsys)
    assert rc == 0, se
    return m, out


def test_word_vector_text_front_end(tmp_path, capsys):
    "`--text-frontend wordvec`: French texts become frozen `[T, 300]` word vectors; `cmrl eval` rebuilds them from the checkpoint"
    m, out = _train_french(tmp_path, capsys, '--text-frontend', 'wordvec')
    ck = read_checkpoint(out)
    assert ck['config']['dims']['text'] == dict(in_dim=300, feature_hidden=512, feature_dropout=0.3, feature_norm='standard')
    assert ck['config']['source']['text_kind'] == 'wordvec'
    assert ck['frontends']['config']['text']['kind'] == 'wordvec' and ck['config']['text_frontend'] == 'wordvec'
    from cmrl.checkpoint import load_model
    from cmrl.eval.report import ckpt_source
    model, ck2 = load_model(out)
    src = ckpt_source(ck2, str(m))  # another copy of the data gets the same text front-end
    assert src.frontend_cfg.text.kind == 'wordvec' and src.shapes['text'] == ((300,), torch.float32)
    x = src.dataset('all', cache=False)[2]['text']
    assert x.shape == (3, 300) and x.dtype == torch.float32  # "L'abeille." -> L', abeille, .


def test_default_text_is_bytes_with_word_vectors(tmp_path, capsys):
    "The default `--text-frontend bytes+wordvec`: byte ids with their word's vector, `[L, 301]`; the stem records `word_dim`; eval rebuilds it"
    m, out = _train_french(tmp_path, capsys)
    ck = read_checkpoint(out)
    assert ck['config']['dims']['text'] == {'vocab': 259, 'text_ngram': 5, 'word_dim': 300}
    assert ck['config']['source']['text_kind'] == 'bytes+wordvec' and ck['model']['encoders.text.stem.words.weight'].shape == (8, 300)
    from cmrl.checkpoint import load_model
    from cmrl.eval.report import ckpt_source
    model, ck2 = load_model(out)
    src = ckpt_source(ck2, str(m))
    assert src.frontend_cfg.text.kind == 'bytes+wordvec' and src.word_dim == 300
    x = src.dataset('all', cache=False)[0]['text']
    assert x.shape == (len('Un tigre.'), 301) and x[:, 0].tolist() == [b + 3 for b in 'Un tigre.'.encode()]
    from cmrl.retrieve import retrieve_cli
    assert retrieve_cli(['--ckpt', str(out), '--query', 'Un tigre.', '--to', 'text', '--k', '2', '--json']) == 0  # a typed query gets its vectors too
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])['results']['text']
    assert hits[0]['text'] == 'Un tigre.' and hits[0]['score'] == pytest.approx(1., abs=1e-4)
    rc, so, se = run(['--data', m, '--out', tmp_path / 'bytes', '--cache', tmp_path / 'cache', *SMALL, '--text-frontend', 'bytes', '--quiet'], capsys)
    assert rc == 0, se
    assert read_checkpoint(tmp_path / 'bytes')['config']['dims']['text'] == {'vocab': 259, 'text_ngram': 5}  # bytes alone: ids only


def test_synth_ignores_the_text_front_end(capsys, tmp_path):
    "Like the image front-end, `--text-frontend` is for Tux Paint and manifests: the synthetic events keep their own word ids"
    rc, so, se = run([*TINY_SYNTH, '--out', tmp_path / 'run', '--quiet'], capsys)
    assert rc == 0, se
    ck = read_checkpoint(tmp_path / 'run')
    assert 'word_dim' not in ck['config']['dims']['text'] and 'text_kind' not in ck['config']['source']


def test_word_vectors_on_other_languages_warn(tmp_path):
    "Texts that are mostly not French: `--text-frontend wordvec` and the default `bytes+wordvec` say how few words have a vector, and how to read any language"
    from cmrl.data.loaders import get_source
    from cmrl.train import wordvec_coverage
    m = manifest(tmp_path, 6, extra=lambda i: {'text': ['Жаба.', 'Лягушка зелёная.', 'Кот.', 'Собака.', 'Дом.', 'Un tigre.'][i]})
    why = wordvec_coverage(get_source(str(m), text_kind='wordvec', valid_pct=0.))
    assert why and 'French' in why and '--text-frontend bytes' in why
    assert wordvec_coverage(get_source(str(m), valid_pct=0.)) is None  # bytes: nothing to say
    fr = manifest(tmp_path, 6, extra=lambda i: {'text': 'Une pomme rouge.'}, name='fr.jsonl')
    assert wordvec_coverage(get_source(str(fr), text_kind='wordvec', valid_pct=0.)) is None
    why = wordvec_coverage(get_source(str(m), text_kind='bytes+wordvec', valid_pct=0.))  # the default says so too
    assert why.startswith('--text-frontend bytes+wordvec (the default): only 3 of the 8 words') and 'validation part' in why
    assert wordvec_coverage(get_source(str(fr), text_kind='bytes+wordvec', valid_pct=0.)) is None


# ================================================================ issue 28 (round two): runs lost, mixed or mis-scored
def _cli(argv, cwd, **kw):
    "A `cmrl train` process (stdout, stderr to files in `cwd`)"
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', 'PYTHONPATH': str(Path(__file__).parents[1])}
    n = len(list(Path(cwd).glob('stderr*.txt')))
    fe = open(Path(cwd) / f'stderr{n}.txt', 'w')
    p = subprocess.Popen([sys.executable, '-m', 'cmrl.cli', 'train', *map(str, argv)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=fe, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)
    p.err_file = Path(fe.name)
    return p


def test_two_runs_at_once_take_two_folders(tmp_path, capsys, monkeypatch):
    "Item 2: a second `cmrl train` without --out starts while the first builds its data: each claims its own run folder"
    import cmrl.train as ct
    monkeypatch.chdir(tmp_path)
    make_dls, seen = ct.make_dls, []
    def racing(cfg, **kw):  # the first run has picked its folder and not written to it yet: the second starts now
        if not seen:
            seen.append(None); seen[0] = run([*TINY_SYNTH, '--model', 'continuous', '--quiet'], capsys)
        return make_dls(cfg, **kw)
    monkeypatch.setattr(ct, 'make_dls', racing)
    rc, so, se = run([*TINY_SYNTH, '--model', 'unicode', '--quiet'], capsys)
    assert rc == 0 and seen[0][0] == 0, (se, seen)
    # the second run ran inside the first, whose runner sends what is printed meanwhile to stderr: its document is there
    inner = [l for l in seen[0][2].splitlines() if l.startswith('{"')]
    outs = {'continuous': json.loads(inner[-1])['out'], 'unicode': json.loads(so)['out']}
    assert outs == {'unicode': str(Path('runs') / 'cmrl-train'), 'continuous': str(Path('runs') / 'cmrl-train-2')}, outs
    for m, o in outs.items():
        assert read_checkpoint(tmp_path / o)['config']['model'] == m and metrics(tmp_path / o)['model'] == m
        assert json.loads((tmp_path / o / 'config.json').read_text())['model'] == m


def test_a_folder_in_use_is_refused_or_skipped(tmp_path, capsys, monkeypatch):
    "Item 2: a folder another `cmrl train` holds: with --out it is refused in one line; without, the next folder is taken"
    from cmrl.train import RunLock
    monkeypatch.chdir(tmp_path)
    held = RunLock(tmp_path / 'runs' / 'cmrl-train')
    assert held.acquire()
    try:
        rc, so, se = run([*TINY_SYNTH, '--out', tmp_path / 'runs' / 'cmrl-train', '--quiet'], capsys)
        assert rc == 2 and 'another cmrl train' in se and f"pid {os.getpid()}" in se and len(se.strip().splitlines()) == 1, se
        rc, so, se = run([*TINY_SYNTH, '--quiet'], capsys)
        assert rc == 0 and f"writing to {Path('runs') / 'cmrl-train-2'}" in se, se
    finally: held.release()
    assert not (tmp_path / 'runs' / 'cmrl-train').exists()  # the holder made it and left it empty: gone with the claim
    assert not list((tmp_path / 'runs' / 'cmrl-train-2').glob('.*lock*'))  # a finished run lets go of its folder


@pytest.mark.parametrize('opt', [['--seed', '3'], ['--valid-pct', '0.5']])
def test_resume_keeps_the_split(tmp_path, capsys, opt):
    "Item 3: options that would re-split the items are refused on --resume, naming the option and the run's value"
    m = manifest(tmp_path, 12)
    out = tmp_path / 'run'
    assert run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--quiet'], capsys)[0] == 0
    ids = read_checkpoint(out)['train_ids']
    rc, so, se = run(['--out', out, '--resume', '--epochs', '2', *opt, '--quiet'], capsys)
    assert rc == 2 and opt[0] in se and 'split' in se and 'Traceback' not in se, se
    assert read_checkpoint(out)['epoch'] == 0 and read_checkpoint(out)['train_ids'] == ids


def test_resume_train_ids_are_every_item_trained_on(tmp_path, capsys):
    "Item 3: the manifest's split fields changed between sessions: `train_ids` holds every item any epoch trained on"
    m = manifest(tmp_path, 12, extra=lambda i: {'split': 'train' if i < 8 else 'valid'})
    out = tmp_path / 'run'
    assert run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--quiet'], capsys)[0] == 0
    manifest(tmp_path, 12, extra=lambda i: {'split': 'train' if i < 4 or i >= 8 else 'valid'})  # 4..7 now held out
    rc, so, se = run(['--out', out, '--resume', '--epochs', '2', '--quiet'], capsys)
    assert rc == 0, se
    assert read_checkpoint(out)['train_ids'] == [f'item{i}' for i in (*range(8), *range(8, 12))]
    assert '4 item(s) of the validation part were trained on' in se, se


def test_overwrite_removes_every_output_of_the_old_run(tmp_path, capsys):
    "Item 4 (and 13): --overwrite deletes eval outputs and a stale checkpoint temp file too; the user's own files stay"
    out = tmp_path / 'run'
    assert run([*TINY_SYNTH, '--out', out, '--quiet'], capsys)[0] == 0
    (out / 'eval-retrieval').mkdir(); (out / 'eval-retrieval' / 'metrics.json').write_text('{}')
    (out / 'eval-retrieval' / 'ranks.png').write_bytes(b'png')
    (out / 'eval-probe').mkdir(); (out / 'eval-probe' / 'metrics.json').write_text('{}'); (out / 'eval-probe' / 'notes.txt').write_text('mine')
    (out / 'eval-generate.json').write_text('{}')  # an eval output written as a file beside the run's
    (out / '.checkpoint.pt.99999999.tmp').write_bytes(b'half a checkpoint')  # a SIGKILL during a save
    (out / 'notes.md').write_text('mine')
    rc, so, se = run([*TINY_SYNTH, '--out', out, '--overwrite', '--quiet'], capsys)
    assert rc == 0, se
    left = sorted(str(p.relative_to(out)) for p in out.rglob('*'))
    assert left == ['checkpoint.pt', 'codebook.png', 'config.json', 'eval-probe', 'eval-probe/notes.txt', 'losses.png', 'metrics.json',
                    'notes.md'], left
    assert 'eval-retrieval' in se and '.checkpoint.pt.99999999.tmp' in se


def test_resume_removes_a_stale_checkpoint_temp_file(tmp_path, capsys):
    "Item 13: `.checkpoint.pt.PID.tmp` of a process that died during a save is removed by --resume"
    out = tmp_path / 'run'
    assert run([*TINY_SYNTH, '--out', out, '--quiet'], capsys)[0] == 0
    (out / '.checkpoint.pt.99999999.tmp').write_bytes(b'half a checkpoint')
    rc, so, se = run(['--out', out, '--resume', '--epochs', '2', '--quiet'], capsys)
    assert rc == 0, se
    assert not list(out.glob('.checkpoint.pt.*')) and read_checkpoint(out)['epoch'] == 1


@pytest.mark.parametrize('sigs', [('SIGINT', 'SIGINT'), ('SIGTERM',), ('SIGHUP',)])
def test_signals_stop_a_run_like_ctrl_c(tmp_path, sigs):
    "Item 13: Ctrl-C twice 50 ms apart, SIGTERM and SIGHUP mid-epoch: the last finished epoch kept, the resume hint, exit 130"
    out = tmp_path / 'run'
    p = _cli([*TINY_SYNTH[:-2], '--epochs', '500', '--out', out], tmp_path)
    t0 = time.time()
    while not (out / 'checkpoint.pt').exists() and time.time() - t0 < 300 and p.poll() is None: time.sleep(0.1)
    time.sleep(0.3)
    for i, s in enumerate(sigs):
        if i: time.sleep(0.05)
        p.send_signal(getattr(signal, s))
    p.communicate(timeout=120)
    se = p.err_file.read_text()
    assert p.returncode == 130, (p.returncode, se[-2000:])
    assert 'nothing was saved' not in se and 'Traceback' not in se, se[-2000:]
    e = read_checkpoint(out)['epoch']
    assert f"{e + 1} of 500 epochs done" in se and f"cmrl train --out {out} --resume" in se, se[-2000:]
    assert not list(out.glob('.checkpoint.pt.*'))


# ---------------------------------------------------------------- issue 28: messages
def test_no_item_pairs_two_modalities_is_refused(tmp_path, capsys):
    "Item 11: pictures and texts that never share an item teach no cross-modal link: one line, exit 2"
    m = manifest(tmp_path, 12, extra=lambda i: {'text': None} if i % 2 else {'image': None})
    rc, so, se = run(['--data', m, '--out', tmp_path / 'run', '--cache', tmp_path / 'cache', *SMALL], capsys)
    assert rc == 2 and 'Traceback' not in se, se
    import re
    assert 'no item of the training part pairs two modalities' in se and re.search(r'\(image \d+, text \d+ item', se), se
    assert not (tmp_path / 'run').exists()


def test_long_precomputed_features_are_cropped_with_a_warning(tmp_path, capsys):
    "Item 10: `[200000, D]` features: cropped to the model's limit, a warning names the first files and counts them"
    rng = np.random.default_rng(0)
    (tmp_path / 'f').mkdir()
    lines = []
    for i in range(8):
        T = 200_000 if i in (2, 5) else 3
        np.save(tmp_path / 'f' / f'img{i}.npy', rng.standard_normal((T, 8)).astype(np.float32))
        lines.append(json.dumps({'id': f'x{i}', 'image_features': f'f/img{i}.npy', 'text': f'chose {i}', 'split': 'train'}))
    m = tmp_path / 'feats.jsonl'; m.write_text('\n'.join(lines) + '\n')
    out = tmp_path / 'run'
    rc, so, se = run(['--data', m, '--out', out, '--cache', tmp_path / 'cache', *SMALL, '--quiet'], capsys)
    assert rc == 0, se
    assert 'max_len' not in se
    w = [l for l in se.splitlines() if 'cropped' in l]
    assert len(w) == 1 and '2 item(s)' in w[0] and 'img2.npy' in w[0] and 'img5.npy' in w[0] and '200000' in w[0], se
    assert json.loads((out / 'config.json').read_text())['max_len']['image'] == 512
