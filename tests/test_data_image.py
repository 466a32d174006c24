"Image front-end: modes and transparency, fit modes, sizes, bad files, SVG (tmp files only)."
import numpy as np, pytest, torch
from PIL import Image
from cmrl.data.audio import DecodeError
from cmrl.data.image import *

torch.set_num_threads(1)


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P', 'RGB', 'L'])
def test_image_modes_composite_white(tmp_path, mode):
    a = np.zeros((10, 10, 4), np.uint8); a[..., 3] = 0; a[:5, :, :] = (0, 0, 255, 255)  # top half opaque blue, bottom transparent
    im = Image.fromarray(a, 'RGBA')
    if mode == 'LA': im = im.convert('LA')
    elif mode == 'P': im = im.convert('RGBA').quantize(colors=4).convert('P'); im.info['transparency'] = None
    elif mode in ('RGB', 'L'): im = im.convert(mode)
    p = tmp_path / f"{mode}.png"; im.save(p)
    x = ImageFrontend(ImageConfig(size=10))(p)
    assert x.shape == (1, 3, 10, 10) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    if mode in ('RGBA', 'LA'):
        assert torch.allclose(x[0, :, 8, 5], torch.ones(3), atol=0.02)  # transparent -> white


def test_image_fit_modes(tmp_path):
    Image.fromarray(np.zeros((50, 100, 3), np.uint8)).save(tmp_path / 'black.png')  # black, 2:1
    pad = ImageFrontend(ImageConfig(size=64, fit='pad'))(tmp_path / 'black.png')
    assert pad[0, :, 32, 32].max() < 0.05 and pad[0, :, 2, 32].min() > 0.95  # band in the middle, white above
    crop = ImageFrontend(ImageConfig(size=64, fit='crop'))(tmp_path / 'black.png')
    assert crop.max() < 0.05  # fills the square
    st = ImageFrontend(ImageConfig(size=(20, 30), fit='stretch'))(tmp_path / 'black.png')
    assert st.shape == (1, 3, 20, 30)
    with pytest.raises(ValueError, match='fit'): ImageFrontend(ImageConfig(fit='zoom'))(tmp_path / 'black.png')


def test_image_huge_and_tiny(tmp_path):
    Image.fromarray(np.full((2000, 1500, 3), 128, np.uint8)).save(tmp_path / 'big.png')
    Image.fromarray(np.full((3, 2, 3), 10, np.uint8)).save(tmp_path / 'tiny.png')
    assert ImageFrontend()(tmp_path / 'big.png').shape == (1, 3, 64, 64)
    assert ImageFrontend()(tmp_path / 'tiny.png').shape == (1, 3, 64, 64)


@pytest.mark.parametrize('content', [b'', b'\x89PNG\r\n\x1a\nnope', b'GIF89a', b'hello'])
def test_image_bad_files(tmp_path, content):
    p = tmp_path / 'bad.png'; p.write_bytes(content)
    with pytest.raises(DecodeError, match='unreadable image'): ImageFrontend()(p)


def test_svg(tmp_path):
    pytest.importorskip('cairosvg')
    (tmp_path / 'a.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                                    '<rect x="0" y="0" width="20" height="20" fill="#ff0000"/></svg>')
    x = ImageFrontend()(tmp_path / 'a.svg')
    assert torch.allclose(x[0, :, 32, 8], torch.tensor([1., 0., 0.]), atol=0.03)
    assert torch.allclose(x[0, :, 32, 56], torch.ones(3), atol=0.03)  # transparent right half -> white
    (tmp_path / 'b.svg').write_text('<svg xmlns="http://www.w3.org/2000/svg"><rect')
    with pytest.raises(DecodeError, match='unreadable SVG'): ImageFrontend()(tmp_path / 'b.svg')
