"""Text into model input through the one tokenizer interface, for both tokenizers."""
import pytest
import torch

from bertlite.inputs import encode_batch, encode_text, truncate_pair
from bertlite.model import BERTConfig, BERTModel, get_bert_encoding
from bertlite.vocab import Vocab
from bertlite.wordpiece import WordPieceTokenizer

PIECES = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "crane", "flew", "over", "bank",
          "river", "##s", "."]


def tokenizers():
    return {"words": Vocab("the crane flew over the river bank .".split()),
            "wordpiece": WordPieceTokenizer(PIECES)}


@pytest.mark.parametrize("kind", ["words", "wordpiece"])
def test_one_text_and_a_pair(kind):
    tok = tokenizers()[kind]
    ids, segments = encode_text(tok, "The crane flew.", "Over the banks")
    tokens = tok.convert_ids_to_tokens(ids)
    assert tokens[0] == tok.cls_token and tokens.count(tok.sep_token) == 2
    cut = tokens.index(tok.sep_token) + 1
    assert segments == [0] * cut + [1] * (len(tokens) - cut)
    if kind == "wordpiece":
        assert tokens == ["[CLS]", "the", "crane", "flew", ".", "[SEP]", "over", "the", "bank",
                          "##s", "[SEP]"]


def test_truncation_cuts_the_longer_part_first():
    assert truncate_pair([1, 2, 3], [4, 5, 6, 7, 8], 6) == ([1, 2, 3], [4, 5, 6])
    assert truncate_pair([1, 2, 3, 4], None, 2) == ([1, 2], None)
    # both too long: half each, the odd token to the part that was longer (as transformers)
    assert [len(p) for p in truncate_pair([0] * 37, [1] * 33, 61)] == [31, 30]
    assert [len(p) for p in truncate_pair([0] * 40, [1] * 40, 21)] == [10, 11]
    ids, _ = encode_text(tokenizers()["wordpiece"], "the crane flew over the river", max_len=4)
    assert len(ids) == 4
    with pytest.raises(ValueError, match="no room"):
        encode_text(tokenizers()["wordpiece"], "the crane", "flew", max_len=3)


@pytest.mark.parametrize("kind", ["words", "wordpiece"])
def test_padded_batch_gives_each_row_its_own_states(kind):
    tok = tokenizers()[kind]
    texts = ["the crane flew over the river bank .", "the bank"]
    batch = encode_batch(tok, texts)
    assert batch["tokens"].shape == batch["segments"].shape == (2, batch["valid_lens"].max())
    pad = tok.convert_tokens_to_ids([tok.pad_token])[0]
    assert batch["tokens"][1, batch["valid_lens"][1]:].eq(pad).all()
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("bert-tiny", len(tok), max_len=16)).eval()
    with torch.no_grad():
        padded = net(**batch).encoded[1, :batch["valid_lens"][1]]
    alone = get_bert_encoding(net, tok, texts[1])  # a text: the tokenizer cuts it
    assert torch.allclose(padded, alone, atol=1e-5)
    with pytest.raises(ValueError, match="one pair per text"):
        encode_batch(tok, texts, ["x"])


def test_article_folds_keep_articles_whole_and_cover_every_topic():
    from bertlite.baselines import article_folds, concat_topics, logistic_regression, subset
    from bertlite.finetune import load_topic_dataset
    data = concat_topics(load_topic_dataset(s, Vocab(["the"]), 8) for s in ("train", "valid", "test"))
    folds = article_folds(data, 3)
    assert sorted(i for f in folds for i in f) == list(range(len(data))) == list(range(567))
    titles = [{data.titles[i] for i in f} for f in folds]
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    for f in folds:  # every topic in every fold
        assert set(subset(data, f).arrays["label"].tolist()) == set(range(6))
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
    assert logistic_regression(x, torch.tensor([0, 0, 1, 1]), x, 2).tolist() == [0, 0, 1, 1]
