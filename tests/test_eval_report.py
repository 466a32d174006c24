"""`cmrl eval` on real `cmrl train` checkpoints (synthetic events, a manifest): which items are scored and fit, the
probes, the codebook's health, and every refusal (exit 2 with a message, never a traceback)."""
import contextlib, io, json, math, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch


from cmrl.testing import invoke as run


def quiet_train(**kw):
    from cmrl.train import train
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter('ignore')
        return train(quiet=True, **kw)


@pytest.fixture(scope='module')
def synth_ckpt(tmp_path_factory):
    "Uni-Code (the default model) on 32 synthetic items, 10 steps per item, one epoch"
    d = tmp_path_factory.mktemp('synth') / 'run'
    quiet_train(data='synth', steps=10, epochs=1, n_train=32, n_valid=16, bs=16, out=str(d))
    return d


@pytest.fixture(scope='module')
def cont_ckpt(tmp_path_factory):
    "The continuous model (no codebook), one step per item"
    d = tmp_path_factory.mktemp('cont') / 'run'
    quiet_train(data='synth', model='continuous', epochs=1, n_train=32, n_valid=16, bs=16, out=str(d))
    return d


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "A tiny manifest WITHOUT split fields: 16 items, image + speech + text, 2 labels, groups of 2"
    import soundfile as sf
    from PIL import Image
    d = tmp_path_factory.mktemp('manifest')
    cols = {'red': (220, 30, 30), 'blue': (30, 30, 220)}
    lines = []
    for i in range(16):
        name = list(cols)[i % 2]
        im = np.zeros((24, 24, 3), np.uint8) + np.array(cols[name], np.uint8); im[i:i + 4] = 255
        Image.fromarray(im).save(d / f'{i}.png')
        t = np.arange(int(16000 * (0.3 + 0.05 * i))) / 16000
        sf.write(d / f'{i}.wav', 0.3 * np.sin(2 * np.pi * (300 + 300 * (i % 2)) * t), 16000)
        lines.append({'id': f'item{i}', 'image': f'{i}.png', 'speech': f'{i}.wav', 'text': f'a {name} square number {i}', 'label': name,
                      'group': f'g{i // 2}'})
    (d / 'all.jsonl').write_text('\n'.join(json.dumps(l) for l in lines))
    (d / 'other.jsonl').write_text('\n'.join(json.dumps(l) for l in lines[:6]))  # 6 items, some of them trained on
    return d


@pytest.fixture(scope='module')
def manifest_ckpt(manifest, tmp_path_factory):
    d = tmp_path_factory.mktemp('mck') / 'run'
    quiet_train(data=str(manifest / 'all.jsonl'), model='continuous', epochs=1, bs=4, image_size=16, d=16, n_layers=1, out=str(d),
                cache=str(tmp_path_factory.mktemp('cache')))
    return d


def ck_of(d):
    from cmrl.checkpoint import read_checkpoint
    return read_checkpoint(d)


# --- which items are scored, which fit (issue 12 item 4) ------------------------------------------------------------------

def test_no_data_scores_the_checkpoints_held_out_items(synth_ckpt):
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--out', '-'])
    assert rc == 0, err
    r = json.loads(out)
    trained = set(ck_of(synth_ckpt)['train_ids'])
    sc, fit = r['items']['scored'], r['items']['fit']
    assert sc['data'] == 'synth' and sc['n'] == 16 == len(sc['ids']) == r['n_items'] and not trained & set(sc['ids'])
    assert fit['n'] == 32 and set(fit['ids']) == trained and fit['split'] == 'trained'
    assert sc['left_out_trained'] == 32  # every item of the data, less the 32 trained on
    assert err.strip().splitlines()[-1] == 'scored 16 item(s) of synth:all (32 the checkpoint trained on left out); fit on 32 item(s) of synth:trained'


def test_data_scores_every_item_less_the_trained_ones(manifest, manifest_ckpt):
    "A manifest without split fields: training held out a validation part only; eval scores everything it did not train on"
    from cmrl.eval.report import eval_cli
    ck = ck_of(manifest_ckpt)
    trained = set(ck['train_ids'])
    assert 0 < len(trained) < 16
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest / 'all.jsonl'), '--out', '-'])
    assert rc == 0, err
    r = json.loads(out)
    sc = r['items']['scored']
    assert sc['n'] == 16 - len(trained) and sc['left_out_trained'] == len(trained) and sc['split'] == 'all'
    assert set(sc['ids']) == {f'item{i}' for i in range(16)} - trained
    # another manifest that shares some items with the training data: those are left out and counted
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest / 'other.jsonl'), '--out', '-'])
    assert rc == 0, err
    sc = json.loads(out)['items']['scored']
    shared = trained & {f'item{i}' for i in range(6)}
    assert sc['left_out_trained'] == len(shared) and sc['n'] == 6 - len(shared)
    assert sc['data'] == str(manifest / 'other.jsonl')


def test_probe_fit_on_the_checkpoints_training_items_unless_fit_names_data(manifest, manifest_ckpt, tmp_path):
    from cmrl.eval.report import eval_cli
    trained = set(ck_of(manifest_ckpt)['train_ids'])
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest / 'all.jsonl'), '--task', 'generalization',
                                  '--out', str(tmp_path / 'g')])
    assert rc == 0, err
    r = json.loads(out)
    assert set(r['items']['fit']['ids']) == trained and r['items']['fit']['n'] == len(trained)
    g = r['generalization']['image->speech']
    assert g['n_train'] == len(trained) and g['n'] == 16 - len(trained) and 0 <= g['bacc'] <= 1 and g['C'] > 0
    assert r['features'] == 'embedding' and 'generalization_continuous' not in r  # a continuous model: its embeddings
    saved = json.loads((tmp_path / 'g' / 'metrics.json').read_text())
    assert saved['items'] == r['items'] and (tmp_path / 'g' / 'generalization_bacc.png').is_file()
    # --fit names other data: the probes are fit on all of it (and it must not share items with the scored ones)
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest / 'all.jsonl'), '--fit', str(manifest / 'other.jsonl'),
                                  '--task', 'generalization', '--out', '-'])
    shared = {f'item{i}' for i in range(6)} - trained  # items of other.jsonl that all.jsonl scores
    if shared: assert rc == 2 and f'share {len(shared)} item(s)' in err  # fit and scored items must be disjoint
    else: assert rc == 0 and json.loads(out)['items']['fit']['n'] == 6, err
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest / 'other.jsonl'), '--fit', str(manifest / 'all.jsonl'),
                                  '--fit-split', 'train', '--task', 'generalization', '--out', '-'])
    assert rc == 0, err
    f = json.loads(out)['items']['fit']
    assert f['data'] == str(manifest / 'all.jsonl') and f['split'] == 'train' and set(f['ids']) == trained


def test_overlapping_parts_and_nothing_to_score_are_refused(synth_ckpt):
    from cmrl.eval.report import eval_cli
    rc, _, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'generalization', '--fit', 'synth', '--fit-split', 'valid', '--out', '-'])
    assert rc == 2 and 'share 16 item(s)' in err
    rc, _, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--split', 'train', '--out', '-'])
    assert rc == 2 and 'nothing to score' in err and 'were all trained on' in err


# --- reports ------------------------------------------------------------------------------------------------------------

def test_retrieval_report_with_codes_length_reference_and_codebook_health(synth_ckpt):
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'synth'])
    assert rc == 0, err
    r = json.loads(out)
    mods = ('video', 'audio', 'text')
    assert r['task'] == 'retrieval' and r['model'] == 'unicode' and r['n_items'] == 16
    assert set(r['embedding']) == {f'{a}->{b}' for a in mods for b in mods if a != b} and set(r['codes']) == set(r['embedding'])
    for v in r['embedding'].values():
        assert v['n'] == 16 and 0 <= v['R@1'] <= v['R@5'] <= v['R@10'] <= 100 and v['chance']['R@10'] == pytest.approx(100 * 10 / 16)
    assert set(r['length_reference']) == {'audio->text', 'text->audio'}
    cb = r['codebook']
    assert cb['n_codes'] == 64 and cb['n_items'] == 16 and set(cb['perplexity']) == set(mods)
    assert all(1 <= p <= 64 for p in cb['perplexity'].values())
    for pair, a in cb['agreement'].items():
        assert a['n'] == 16 and 0 <= a['p_o'] <= 1 and 0 <= a['p_e'] <= 1
        assert a['kappa'] is None or a['kappa'] == pytest.approx((a['p_o'] - a['p_e']) / (1 - a['p_e']))
    files = sorted(p.name for p in (synth_ckpt / 'eval-retrieval').iterdir())
    assert files == ['metrics.json', 'retrieval_r10.png']


def test_retrieval_reports_hash_codes_beside_float(synth_ckpt):
    "Issue 14 item 5: B-bit codes (a head fitted on the checkpoint's training items, and LSH) scored beside the float retrieval"
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'synth', '--bits', '16', '--out', '-'])
    assert rc == 0, err
    r = json.loads(out)
    h = r['hashing']
    assert h['bits'] == 16 and h['n_eval'] == 16 and h['n_fit'] == 32 and 'float' not in h  # float = r['embedding']
    assert h['bytes_per_item']['hash'] == h['bytes_per_item']['lsh'] == 2 and h['bytes_per_item']['float'] > 2
    for w in ('hash', 'lsh'):
        assert set(h[w]) == set(r['embedding'])
        for d, v in h[w].items():
            assert v['n'] == 16 and 0 <= v['R@1'] <= v['R@5'] <= v['R@10'] <= 100
            assert v['chance'] == pytest.approx(r['embedding'][d]['chance'])  # the same relevance and false-negative mask
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'synth', '--bits', '0', '--out', '-'])
    assert rc == 0 and 'hashing' not in json.loads(out), err
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--bits', '12', '--out', '-'])
    assert rc == 2 and '--bits 12' in err


def test_code_kappa_hand_computed():
    from cmrl.eval.report import code_kappa
    k = code_kappa(torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 0, 1, 2, 2, 1]), 3)
    assert k['p_o'] == pytest.approx(2 / 3) and k['p_e'] == pytest.approx(1 / 3) and k['kappa'] == pytest.approx(0.5)
    # skewed code frequencies: raw agreement 0.6 but chance 0.68 -> kappa -1/4, worse than chance
    a, b = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 1, 0])
    k = code_kappa(a, b, 2)
    assert k['p_o'] == pytest.approx(0.6) and k['p_e'] == pytest.approx(0.8 * 0.8 + 0.2 * 0.2) and k['kappa'] == pytest.approx((0.6 - 0.68) / 0.32)
    assert math.isnan(code_kappa(torch.tensor([-1]), torch.tensor([2]), 3)['kappa'])


def test_generalization_codebook_model_probes_quantised_and_continuous(synth_ckpt):
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'generalization', '--from', 'audio', '--out', '-'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['features'] == 'quantised' and set(r['generalization']) == set(r['generalization_continuous']) == {'audio->video', 'audio->audio', 'audio->text'}
    for res in (r['generalization'], r['generalization_continuous']):
        for v in res.values():
            assert v['n'] == 16 and v['n_train'] == 32 and 0 <= v['acc'] <= 1 and 0 <= v['bacc'] <= 1 and v['C'] in (0.01, 0.1, 1., 10., 100.)
    assert r['localization']['audio->audio']['n'] == 160  # 16 items x 10 steps


def test_localization_needs_time_steps(cont_ckpt):
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(cont_ckpt), '--task', 'generalization', '--from', 'audio', '--to', 'video', '--out', '-'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['localization'].startswith('skipped') and '--steps 10' in r['localization'] and r['features'] == 'embedding'


def test_codes_task(synth_ckpt, cont_ckpt):
    from cmrl.eval.report import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'codes'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['n_codes'] == 64 and 1 <= r['usage']['audio/perplexity'] <= 64 and r['code_words']
    assert (synth_ckpt / 'eval-codes' / 'code_usage.png').is_file()
    rc, _, err = run(eval_cli, ['--ckpt', str(cont_ckpt), '--task', 'codes', '--out', '-'])
    assert rc == 2 and 'no codebook' in err


# --- refusals (issue 12 items 4, 9) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('make, msg', [
    (lambda p: p.write_bytes(b''), 'is empty (0 bytes)'),
    (lambda p: p.write_bytes(b'PK\x03\x04 truncated zip'), 'truncated or corrupt'),
    (lambda p: torch.save({'weights': torch.zeros(2)}, p), 'is not a cmrl checkpoint'),
])
def test_bad_checkpoints_give_the_checkpoint_error(tmp_path, make, msg):
    from cmrl.eval.report import eval_cli
    p = tmp_path / 'checkpoint.pt'; make(p)
    rc, out, err = run(eval_cli, ['--ckpt', str(p), '--data', 'synth'])
    assert rc == 2 and msg in err and 'Traceback' not in err and err.startswith('cmrl eval: ')


def test_bad_requests(synth_ckpt, tmp_path):
    from cmrl.eval.report import eval_cli
    cases = [(['--ckpt', str(tmp_path / 'nothing')], 'no checkpoint'),
             (['--ckpt', str(synth_ckpt), '--bs', '0'], '--bs 0'),
             (['--ckpt', str(synth_ckpt), '--device', 'gpu'], "--device 'gpu'"),
             (['--ckpt', str(synth_ckpt), '--data', 'no-such-source'], 'unknown data source'),
             (['--ckpt', str(synth_ckpt), '--from', 'speech'], "'speech' is not usable"),
             (['--ckpt', str(synth_ckpt), '--data', 'synth', '--langs', 'fr'], 'English only')]
    for argv, msg in cases:
        rc, _, err = run(eval_cli, [*argv, '--out', '-'])
        assert rc == 2 and msg in err, (argv, err)
    rc, _, err = run(eval_cli, ['--task', 'retrieval'])  # argparse: --ckpt is required
    assert rc == 2 and '--ckpt' in err


def test_flags_superset_of_the_old_cli():
    from cmrl.eval.report import eval_cmd
    from cmrl.command import command_parser
    p = command_parser(eval_cmd, 'cmrl eval', src_from='--from')
    flags = {s for a in p._actions for s in a.option_strings}
    old = {'--ckpt', '--data', '--task', '--from', '--to', '--fit', '--split', '--fit-split', '--pool', '--out', '--n-test', '--langs',
           '--bs', '--device', '--progress'}
    assert old <= flags and '--weights' in flags


def test_evaluation_does_not_import_training():
    code = ("import sys, cmrl.eval.report, cmrl.retrieve, cmrl.generate, cmrl.eval.textgen; "
            "print(sorted(m for m in sys.modules if m in ('cmrl.train', 'cmrl.learner', 'cmrl.callbacks', 'cmrl.distributed')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '[]'


def test_dispatcher_runs_eval(synth_ckpt):
    from cmrl.cli import main
    rc, out, err = run(main, ['eval', '--ckpt', str(synth_ckpt), '--task', 'codes', '--out', '-'])
    assert rc == 0, err
    assert json.loads(out)['task'] == 'codes'
