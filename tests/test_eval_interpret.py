"Code tables, code plots and the explorer: values on hand-made codes."
import numpy as np, pytest, torch
import matplotlib
matplotlib.use('Agg')
from cmrl.eval.interpret import item_code_counts, code_label_table, code_word_table, step_of_position, plot_codes_on_spectrogram, plot_codes_on_image, CodeExplorer


@pytest.fixture
def codes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    # class c uses code 10 + c in both modalities at a few steps; every item also uses noise codes 0..5
    a = torch.randint(0, 6, (60, 8), generator=g); b = torch.randint(0, 6, (60, 8), generator=g)
    a[:, 0] = 10 + y; b[:, 3] = 10 + y
    b[::4, 5:] = -1  # padding
    return {'image': a, 'speech': b}, y


def test_label_table_precision_lift(codes):
    c, y = codes
    tab = code_label_table(c, y, ['cat', 'dog', 'frog'])
    for k, name in zip((10, 11, 12), ('cat', 'dog', 'frog')):
        assert tab.loc[k, 'items'] == 20 and tab.loc[k, 'top labels'].startswith(f'{name} (1.00)')
        assert tab.loc[k, 'precision'] == 1. and tab.loc[k, 'lift'] == pytest.approx(3.)
        assert tab.loc[k, 'image'] == 20 and tab.loc[k, 'speech'] == 20
    assert all(tab.loc[k, 'lift'] < 1.6 for k in range(6))  # noise codes: about the label shares
    # per-modality counting and unknown labels
    y2 = y.clone(); y2[:30] = -1
    t2 = code_label_table(c, y2, ['cat', 'dog', 'frog'], modalities=['image'])
    assert t2.loc[10, 'items'] == 10 and 'speech' not in t2.columns


def test_item_code_counts_sum_over_modalities(codes):
    c, _ = codes
    m = item_code_counts(c, 13)
    assert m.shape == (60, 13)
    assert m[0, 10] == 2  # code 10 once in image and once in speech of item 0
    assert m.sum() == (c['image'] >= 0).sum() + (c['speech'] >= 0).sum()


def test_word_table(codes):
    c, y = codes
    names = ['cat', 'dog', 'frog']
    texts = [f"a {names[int(v)]} here" for v in y]
    tw = code_word_table(c, texts, 13)
    assert tw.loc[10, 'top words'] == 'cat (3.0x)' and tw.loc[12, 'top words'] == 'frog (3.0x)'
    with pytest.raises(ValueError, match='texts'): code_word_table(c, texts[:5], 13)


def test_step_of_position_matches_resample_steps():
    from cmrl.core import resample_steps
    for L, T in [(16, 10), (100, 10), (7, 10), (37, 5)]:
        x = torch.eye(L)[None]  # one-hot positions
        y, _ = resample_steps(x, torch.ones(1, L, dtype=torch.bool), T)  # [1, T, L]: weight of each position in each step
        dominant = y[0].argmax(0)  # the step that weighs each position most
        assert torch.equal(step_of_position(L, T), dominant), (L, T)
    with pytest.raises(ValueError): step_of_position(0, 10)


def test_plots_label_every_step():
    fig = plot_codes_on_spectrogram(torch.randn(100, 64), torch.tensor([3, 3, 3, 7, 7, 7, 7, 3, 3, -1]))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ['3', '3', '3', '7', '7', '7', '7', '3', '3']  # the padded step has no label
    fig2 = plot_codes_on_image(torch.rand(3, 32, 32), torch.arange(10), grid=4)
    assert [t.get_text() for t in fig2.axes[0].texts] == [str(int(v)) for v in step_of_position(16, 10)]
    with pytest.raises(ValueError, match=r'\[3, H, W\]'): plot_codes_on_image(torch.rand(32, 32), torch.arange(10))


def test_explorer_lookups(codes):
    c, y = codes
    ex = CodeExplorer(c, [f'i{i}' for i in range(60)], y, ['cat', 'dog', 'frog'])
    got = ex.items_for_code(11)
    assert [r for r, _ in got['image']] == list(range(1, 60, 3)) and all(n >= 1 for _, n in got['speech'])
    assert ex.codes_for_item(4)['speech'] == [v for v in c['speech'][4].tolist() if v >= 0]
    assert len(ex.codes_for_item(4)['speech']) == 5  # item 4 has padding at steps 5..7
    assert ex.items_for_code(99) == {'image': [], 'speech': []}
    w = ex.widget()
    w._code_dd.value = 12
    assert ex.last_report.startswith('image: 20 item(s) use code 12')
    with pytest.raises(ValueError, match='same rows'): CodeExplorer({'a': torch.zeros(3, 2), 'b': torch.zeros(4, 2)})
