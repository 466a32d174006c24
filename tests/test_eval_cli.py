"`cmrl eval` and `cmrl retrieve` on a checkpoint from `cmrl train --data synth`, on a codebook model, and on a manifest."
import contextlib, io, json, math, warnings
from pathlib import Path
import numpy as np, pytest, torch
from cmrl.core import *


def run(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        rc = fn(argv)
    return rc, out.getvalue(), err.getvalue()


def last_json(s: str) -> dict: return json.loads(s.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def synth_ckpt(tmp_path_factory):
    "A real `cmrl train --data synth --steps 10` run of the default model (Uni-Code), one short epoch"
    from cmrl.train import train_cli
    d = tmp_path_factory.mktemp('synth') / 'run'
    rc, out, err = run(train_cli, ['--data', 'synth', '--steps', '10', '--epochs', '1', '--n-train', '32', '--n-valid', '16', '--bs', '16',
                                   '--out', str(d), '--quiet'])
    assert rc == 0, err
    return d


def save_ckpt(model, d: Path, **config):
    "A checkpoint in the format `cmrl train` writes (model state + the builder's config)"
    d.mkdir(parents=True, exist_ok=True)
    torch.save({'model': model.state_dict(), 'config': {**config, 'model_config': model.config}, 'model_config': model.config}, d / 'checkpoint.pt')
    return d


@pytest.fixture(scope='module')
def cont_ckpt(tmp_path_factory):
    "`cmrl train --data synth --model continuous`: no codebook"
    from cmrl.train import train_cli
    d = tmp_path_factory.mktemp('cont') / 'run'
    rc, out, err = run(train_cli, ['--data', 'synth', '--model', 'continuous', '--epochs', '1', '--n-train', '32', '--n-valid', '16', '--bs', '16',
                                   '--out', str(d), '--quiet'])
    assert rc == 0, err
    return d


def test_eval_retrieval_on_trained_synth(synth_ckpt):
    from cmrl.eval.cli import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'synth', '--task', 'retrieval', '--n-test', '24'])
    assert rc == 0, err
    r = last_json(out)
    assert r['task'] == 'retrieval' and r['model'] == json.loads((synth_ckpt / 'config.json').read_text())['model']
    assert r['n_items'] == 24 and r['split'] == 'test'
    assert set(r['embedding']) == {f'{a}->{b}' for a in ('video', 'audio', 'text') for b in ('video', 'audio', 'text') if a != b}
    for v in r['embedding'].values():
        assert v['n'] == 24 and 0 <= v['R@1'] <= v['R@5'] <= v['R@10'] <= 100 and 1 <= v['medr'] <= 24
        assert v['chance']['R@10'] == pytest.approx(100 * 10 / 24) and v['chance']['meanr'] == pytest.approx(12.5)
    assert set(r['length_reference']) == {'audio->text', 'text->audio'}
    files = sorted(p.name for p in (synth_ckpt / 'eval-retrieval').iterdir())
    assert files == ['metrics.json', 'retrieval_r10.png']
    assert json.loads((synth_ckpt / 'eval-retrieval' / 'metrics.json').read_text())['embedding'] == r['embedding']


def test_eval_generalization_pair_and_localization(synth_ckpt, tmp_path):
    from cmrl.eval.cli import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'synth', '--task', 'generalization', '--from', 'video', '--to', 'audio',
                                  '--n-test', '16', '--out', str(tmp_path / 'g')])
    assert rc == 0, err
    r = last_json(out)
    assert list(r['generalization']) == ['video->audio'] and list(r['localization']) == ['video->audio']
    g = r['generalization']['video->audio']
    assert g['n'] == 16 and g['n_train'] == 32 and g['chance'] == pytest.approx(1 / 8) and 0 <= g['bacc'] <= 1
    assert r['localization']['video->audio']['n'] == 160
    assert r['fit'] == {'data': 'synth', 'split': 'train', 'n_items': 32} and r['features'] == 'quantised'
    assert (tmp_path / 'g' / 'generalization_bacc.png').is_file()


def test_localization_needs_time_steps(cont_ckpt):
    "A model with one step per item (the `cmrl train` default) cannot localise: said, not faked"
    from cmrl.eval.cli import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(cont_ckpt), '--task', 'generalization', '--from', 'audio', '--to', 'video', '--n-test', '8', '--out', '-'])
    assert rc == 0, err
    r = last_json(out)
    assert r['localization'].startswith('skipped') and '--steps 10' in r['localization'] and r['generalization']['audio->video']['n'] == 8


def test_eval_refuses_overlapping_fit_and_test(synth_ckpt):
    from cmrl.eval.cli import eval_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'generalization', '--split', 'train', '--out', '-'])
    assert rc == 2 and 'share' in err


def test_eval_bad_inputs(synth_ckpt, cont_ckpt, tmp_path):
    from cmrl.eval.cli import eval_cli
    rc, _, err = run(eval_cli, ['--ckpt', str(tmp_path / 'nothing'), '--data', 'synth'])
    assert rc == 2 and 'no checkpoint' in err
    rc, _, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', 'no-such-source', '--out', '-'])
    assert rc == 2 and 'unknown data source' in err
    rc, _, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--from', 'speech', '--out', '-', '--n-test', '8'])
    assert rc == 2 and "'speech' is not usable" in err
    rc, _, err = run(eval_cli, ['--ckpt', str(cont_ckpt), '--task', 'codes', '--out', '-', '--n-test', '8'])
    assert rc == 2 and 'no codebook' in err


def test_retrieve_text_query_finds_its_own_caption(synth_ckpt):
    from cmrl.eval.cli import retrieve_cli, eval_source, load_model
    _, cfg = load_model(synth_ckpt)
    ds = eval_source('synth', cfg, n_test=16).dataset('test')
    cap = ds[5]['extra']['caption']
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', cap, '--gallery', 'synth', '--to', 'text,audio', '--k', '5', '--n-test', '16'])
    assert rc == 0, err
    r = last_json(out)
    top = r['results']['text']
    same = [h['id'] for h in top if h['score'] > 0.9999]
    assert 'synth-2-5' in same and top[0]['score'] == pytest.approx(1., abs=1e-4)  # the identical caption, cosine 1
    assert [h['rank'] for h in r['results']['audio']] == [1, 2, 3, 4, 5]
    assert 'query (text)' in out  # the human-readable table comes first


def test_retrieve_image_file_query_and_errors(synth_ckpt, tmp_path):
    from PIL import Image
    from cmrl.eval.cli import retrieve_cli
    from cmrl.data.synth import SynthEvents
    fr = SynthEvents(1, seed=9)[0]['video'][5]
    Image.fromarray((fr.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(tmp_path / 'q.png')
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', str(tmp_path / 'q.png'), '--k', '3', '--n-test', '16', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['modality'] == 'video' and set(r['results']) == {'audio', 'text'} and len(r['results']['text']) == 3
    rc, _, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', str(tmp_path / 'missing.png'), '--n-test', '8'])
    assert rc == 2 and 'no such file' in err
    rc, _, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'zebra xylophone', '--n-test', '8'])
    assert rc == 2 and 'vocabulary' in err


def test_codes_task_and_code_retrieval(synth_ckpt):
    from cmrl.eval.cli import eval_cli, retrieve_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'codes', '--n-test', '16'])
    assert rc == 0, err
    r = last_json(out)
    K = r['n_codes']
    assert K >= 2 and 1 <= r['usage']['audio/perplexity'] <= K and 0 < r['usage']['all/used'] <= 1
    assert sum(row['items'] >= 1 for row in r['codes']) == len(r['codes']) and r['code_words']
    assert (synth_ckpt / 'eval-codes' / 'code_usage.png').is_file()
    rc, out, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--task', 'retrieval', '--n-test', '16', '--out', '-'])
    assert rc == 0, err
    r = last_json(out)
    assert set(r['codes']) == set(r['embedding']) and all(0 <= v['R@10'] <= 100 for v in r['codes'].values())
    rc, out, err = run(retrieve_cli, ['--ckpt', str(synth_ckpt), '--query', 'a red circle', '--codes', '--to', 'text,video', '--k', '4', '--n-test', '16', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['by'] == 'codes' and 1 <= len(r['results']['text']) <= 4 and len(r['results']['video']) <= 4  # only items sharing a code are found


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "A tiny manifest: 12 items, image + speech + text, 3 labels, explicit splits; two 'languages' of the same group"
    import soundfile as sf
    from PIL import Image
    d = tmp_path_factory.mktemp('manifest')
    cols = {'red': (220, 30, 30), 'green': (30, 200, 30), 'blue': (30, 30, 220)}
    lines = []
    for i in range(12):
        name = list(cols)[i % 3]; lang = 'en' if i % 2 == 0 else 'fr'
        im = np.zeros((24, 24, 3), np.uint8) + np.array(cols[name], np.uint8); im[i % 20:(i % 20) + 4] = 255
        Image.fromarray(im).save(d / f'{i}.png')
        t = np.arange(int(16000 * (0.3 + 0.05 * i))) / 16000
        sf.write(d / f'{i}.wav', 0.3 * np.sin(2 * np.pi * (300 + 200 * (i % 3)) * t), 16000)
        lines.append({'id': f'item{i}', 'image': f'{i}.png', 'speech': f'{i}.wav', 'text': f'a {name} square number {i}', 'label': name,
                      'lang': lang, 'group': f'g{i // 2}', 'split': 'test' if i >= 8 else 'train'})
    (d / 'items.jsonl').write_text('\n'.join(json.dumps(l) for l in lines))
    return d / 'items.jsonl'


@pytest.fixture(scope='module')
def manifest_ckpt(manifest, tmp_path_factory):
    "A continuous model built for the manifest's modalities (cmrl train only reads synth in this build)"
    from cmrl.data.loaders import get_source, source_dl
    from cmrl.encoders import input_dims
    from cmrl.models.baselines import continuous_baseline
    src = get_source(str(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        b, = source_dl(src, 'train', bs=4, cache=False).one_batch()
    dims = input_dims(b, vocab=src.text_vocab_size)
    set_seed(0)
    m = continuous_baseline(list(dims), dims, d=16, n_layers=1)
    return save_ckpt(m, tmp_path_factory.mktemp('mck') / 'run', data=str(manifest))


def test_eval_and_retrieve_on_manifest(manifest, manifest_ckpt):
    from cmrl.eval.cli import eval_cli, retrieve_cli
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest), '--task', 'retrieval', '--out', '-'])
    assert rc == 0, err
    r = last_json(out)
    assert r['modalities'] == ['image', 'speech', 'text'] and r['n_items'] == 4 and r['false_negative_mask'] is True
    v = r['embedding']['image->speech']
    # 4 test items in 2 groups of 2: each query has 1 partner, 1 ignored twin, 2 negatives
    assert v['n'] == 4 and v['chance']['R@1'] == pytest.approx(100 / 3) and v['chance']['meanr'] == pytest.approx(2.)
    lr = r['length_reference']  # speech duration grows with i, like the text length: the reference ranks well
    assert set(lr) == {'speech->text', 'text->speech'} and lr['speech->text']['a'] > 0
    rc, out, err = run(eval_cli, ['--ckpt', str(manifest_ckpt), '--data', str(manifest), '--task', 'generalization', '--out', '-'])
    assert rc == 0, err
    g = last_json(out)
    assert g['generalization']['image->text']['n'] == 4 and g['generalization']['image->text']['n_train'] == 8
    assert 'localization' not in g
    rc, out, err = run(retrieve_cli, ['--ckpt', str(manifest_ckpt), '--query', 'a blue square number 11', '--gallery', str(manifest),
                                      '--to', 'text,image', '--k', '2', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['results']['text'][0]['id'] == 'item11' and r['results']['text'][0]['score'] == pytest.approx(1., abs=1e-4)
    assert r['results']['image'][0]['file'].endswith('.png') and r['results']['image'][0]['label'] in ('red', 'green', 'blue')
    rc, out, err = run(retrieve_cli, ['--ckpt', str(manifest_ckpt), '--query', str(manifest.parent / '3.wav'), '--gallery', str(manifest),
                                      '--split', 'all', '--k', '12', '--json'])
    assert rc == 0, err
    r = json.loads(out)
    assert r['modality'] == 'speech' and len(r['results']['image']) == 12 and r['split'] == 'all'


def test_synth_model_on_manifest_warns_and_keeps_what_fits(synth_ckpt, manifest):
    "A synth model (video/audio/text, 43 token ids) shares no usable modality with an image/speech/text byte-token manifest"
    from cmrl.eval.cli import eval_cli
    rc, _, err = run(eval_cli, ['--ckpt', str(synth_ckpt), '--data', str(manifest), '--out', '-'])
    assert rc == 2 and ('share no usable modality' in err or 'needs two modalities' in err)
