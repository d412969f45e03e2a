import pytest

from bertlite import SPECIAL_TOKENS, Vocab


def test_specials_first_then_by_frequency_ties_alphabetical():
    v = Vocab("b a c a b a d".split())
    assert v.idx_to_token == [*SPECIAL_TOKENS, "a", "b", "c", "d"]
    assert v["<pad>"] == 0 and v["<unk>"] == 4 and v.specials == [0, 1, 2, 3, 4]


def test_min_freq_and_unknown_words():
    v = Vocab([["x", "x", "y"], ["x", "z", "z"]], min_freq=2)  # a list of sentences works too
    assert v.idx_to_token[5:] == ["x", "z"]
    assert v["y"] == v.unk == v["never seen"]
    assert v[["x", "y"]] == [5, 4]
    assert v.to_tokens([5, 6]) == ["x", "z"] and v.to_tokens(5) == "x"
    assert v.encode(["z", "q"]).tolist() == [6, 4]


def test_counts_give_the_same_vocabulary():
    tokens = "the cat sat on the mat the end".split()
    assert Vocab(counts={"the": 3, "cat": 1, "sat": 1, "on": 1, "mat": 1, "end": 1}).idx_to_token \
        == Vocab(tokens).idx_to_token


def test_save_load_round_trip(tmp_path):
    v = Vocab("some words and some more words".split())
    v.save(tmp_path / "vocab.txt")
    w = Vocab.load(tmp_path / "vocab.txt")
    assert w.idx_to_token == v.idx_to_token and w.unk == v.unk and w["words"] == v["words"]


def test_bad_input():
    with pytest.raises(ValueError, match="min_freq"):
        Vocab(["a"], min_freq=0)


def test_a_word_vocabulary_file_is_told_from_a_bert_vocab_txt(tmp_path):
    from bertlite.vocab import is_word_vocab_file
    ours, bert = tmp_path / "ours.txt", tmp_path / "bert.txt"
    Vocab([["a", "b"]]).save(ours)
    bert.write_text("[PAD]\n[unused0]\n[CLS]\n[SEP]\n[MASK]\n[UNK]\na\n")
    assert is_word_vocab_file(ours) and not is_word_vocab_file(bert)
