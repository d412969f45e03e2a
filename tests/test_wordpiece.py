"""WordPiece: the same ids as Hugging Face's BertTokenizer, round trips, word starts, training."""
import string
import unicodedata

import pytest

from bertlite.wordpiece import (MAX_WORD_CHARS, SPECIALS, WordPieceTokenizer, basic_tokenize,
                                train_wordpiece, word_starts, wordpiece_split)

# A vocabulary with interesting splits: whole words and ## pieces, cased and uncased forms,
# accented letters, a few CJK ideographs (not 爱), Hangul as one syllable and as NFD jamo.
WORDS = """the hello world it a test un ##aff ##able run ##ner ##s play ##ing ##ed mask cat sat on
    mat Hello Paris The World Café café cafe é ##é naïve ï ##ï resume résumé École ecole ##cole
    中 国 文 我 ， ！ 。 「 」 ¿ que qué Qué ##ue 한 ##국 ᄒ ##ᅡ ##ᆫ ##ᄀ ##ᅮ ##ᆨ οδοσ οδος ΟΔΟΣ
    pre ##train ##ed bert ##lite to ##ken ##izer 3 ##14 1 ##000""".split()
VOCAB = list(dict.fromkeys([
    *SPECIALS, *string.punctuation, *string.digits, *("##" + d for d in string.digits),
    *string.ascii_letters, *("##" + c for c in string.ascii_letters), *WORDS]))

TEXTS = [
    "Hello, world! It's a test.",
    "The unaffable runners played; playing (tested) [twice]...",
    "Café naïve résumé ÉCOLE École qué ¿Qué?",
    "xyzzy qü€ ab€cd unafx",                     # unknown: a character the vocabulary lacks
    "a" * MAX_WORD_CHARS + " " + "a" * (MAX_WORD_CHARS + 1),  # 100 chars split, 101 is [UNK]
    "我爱中文，中国！「文」。", "文a中b",            # CJK: each ideograph is a word
    "a\tb\nc\r\nd\u00a0e\u3000f\u2028g  \x0bh\x0ci",  # mixed whitespace
    "ab\x00c\ufffdd\x07e\u200bf\x85g\U000e0001h",    # NUL, U+FFFD, controls, format characters
    "the [MASK] sat on the mat", "x[MASK]y [mask] [CLS] a [SEP] b [SEP][PAD][UNK] [ MASK ]",
    "$5 + 3 = 8 ^_^ ~`| 3.14 1,000 a-b a@b #hash",
    "한국 한국어", "ΟΔΟΣ οδος",
    "", "   ", "pretrained bertlite tokenizer",
]
SETTINGS = [(True, None), (False, None), (True, False), (False, True)]  # (lowercase, strip_accents)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


def references(folder, lowercase, strip_accents):
    """Hugging Face's tokenizers for our vocab.txt: the fast one (BertTokenizer in transformers
    5.x), and the Python one where it exists, each with its name."""
    transformers = pytest.importorskip("transformers")
    kwargs = dict(do_lower_case=lowercase, strip_accents=strip_accents)
    refs = {"fast": transformers.BertTokenizerFast.from_pretrained(folder, **kwargs)}
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as slow
    except ImportError:  # transformers 4.x: BertTokenizer is the Python one
        slow = transformers.BertTokenizer
    if slow is not transformers.BertTokenizerFast:
        refs["python"] = slow(str(folder / "vocab.txt"), **kwargs)
    return refs


@pytest.mark.parametrize("lowercase,strip_accents", SETTINGS)
def test_same_ids_as_hugging_face(vocab_dir, lowercase, strip_accents):
    ours = WordPieceTokenizer.from_vocab_file(vocab_dir / "vocab.txt", lowercase, strip_accents)
    for name, ref in references(vocab_dir, lowercase, strip_accents).items():
        assert len(ref) == len(ours) == len(VOCAB)
        for text in TEXTS:
            if name == "python" and lowercase and "Σ" in text:
                continue  # str.lower() writes a final "ς"; the fast tokenizer (ours too) "σ"
            expected = ref(text, add_special_tokens=False)["input_ids"]
            assert ours.encode(text) == expected, (name, text)


def test_each_character_like_hugging_face(vocab_dir):
    """Each character of the busiest Unicode blocks, between two letters: dropped, whitespace, a
    word of its own, or part of the word? The fast tokenizer reads older Unicode tables (no
    character added since about Unicode 8), so it may differ from us on a few characters; on
    those, the Python tokenizer, which reads Python's tables as we do, must give our answer."""
    edges = [c + d for c in (0x20000, 0x2A6DF, 0x2B73F, 0x2CEAF, 0x2F800, 0x2FA1F) for d in (-1, 0, 1)]
    codes = [*range(0x3100),  # Latin, Greek, Cyrillic, ..., punctuation, symbols, CJK punctuation
             *range(0x3100, 0xD800, 17),  # a sample of the rest, lone surrogates left out
             *range(0xF900, 0x10000), *edges]  # compatibility ideographs, full-width forms
    frames = [f"a{chr(c)}b" for c in codes]
    tok = WordPieceTokenizer.from_vocab_file(vocab_dir / "vocab.txt")
    ours = [tok.encode(f) for f in frames]
    refs = references(vocab_dir, True, None)
    fast = refs["fast"](frames, add_special_tokens=False)["input_ids"]
    differ = [i for i, (o, f) in enumerate(zip(ours, fast)) if o != f]
    assert len(differ) < len(codes) / 100
    if "python" in refs:
        python = refs["python"](frames, add_special_tokens=False)["input_ids"]
        assert [ours[i] for i in differ] == [python[i] for i in differ]
        assert all(o == p for c, o, p in zip(codes, ours, python)  # it drops unassigned ones
                   if unicodedata.category(chr(c)) != "Cn")


def test_splits_by_hand():
    assert basic_tokenize("Héllo,  WORLD!") == ["hello", ",", "world", "!"]
    assert basic_tokenize("Héllo,  WORLD!", lowercase=False) == ["Héllo", ",", "WORLD", "!"]
    assert basic_tokenize("中文ok") == ["中", "文", "ok"]
    vocab = {"un", "##aff", "##able", "##a"}
    assert wordpiece_split("unaffable", vocab) == ["un", "##aff", "##able"]
    assert wordpiece_split("unaffablex", vocab) == ["[UNK]"]  # one unknown rest: all of it [UNK]
    assert wordpiece_split("un" + "a" * 98, vocab) == ["un"] + ["##a"] * 98
    assert wordpiece_split("un" + "a" * 99, vocab) == ["[UNK]"]


def test_special_ids_and_conversions(vocab_dir):
    tok = WordPieceTokenizer.from_vocab_file(vocab_dir / "vocab.txt")
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id] == [0, 1, 2, 3, 4]
    assert tok.specials == [0, 1, 2, 3, 4]
    assert len(tok) == len(VOCAB)
    tokens = tok.tokenize("the [MASK] sat")
    assert tokens == ["the", "[MASK]", "sat"]
    assert tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(tokens)) == tokens
    assert tok.convert_tokens_to_ids(["no-such-token"]) == [tok.unk_token_id]


@pytest.mark.parametrize("text", ["the unaffable runners played on the mat",
                                  "Hello, World! résumé 中国", "the [MASK] sat ."])
def test_decode_round_trip(vocab_dir, text):
    tok = WordPieceTokenizer.from_vocab_file(vocab_dir / "vocab.txt")
    ids = tok.encode(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == " ".join(tok.words(text))  # the words, lowercased and unaccented
    assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode([tok.cls_token_id, *ids, tok.sep_token_id], skip_special_tokens=True) == \
        " ".join(w for w in tok.words(text) if w not in SPECIALS)


def test_word_starts(vocab_dir):
    tok = WordPieceTokenizer.from_vocab_file(vocab_dir / "vocab.txt")
    tokens = tok.tokenize("[CLS] unaffable runners , the")
    assert tokens == ["[CLS]", "un", "##aff", "##able", "run", "##ner", "##s", ",", "the"]
    assert word_starts(tokens) == [True, True, False, False, True, False, False, True, True]
    assert tok.word_starts(tok.convert_tokens_to_ids(tokens)) == word_starts(tokens)
    assert word_starts([]) == []


def test_bad_vocabularies_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        WordPieceTokenizer(["[PAD]", "[UNK]", "a"])
    with pytest.raises(ValueError, match="twice"):
        WordPieceTokenizer([*SPECIALS, "a", "a"])


@pytest.mark.parametrize("score,first_merge", [("likelihood", "##at"), ("ratio", "on")])
def test_train_small_vocabulary(tmp_path, score, first_merge):
    texts = ["the cat sat on the mat", "the cats sat on the mats", "a bat sat on a hat"] * 5
    tok = train_wordpiece(texts, vocab_size=60, score=score)
    alphabet = ["##a", "##e", "##h", "##n", "##s", "##t", "a", "b", "c", "h", "m", "o", "s", "t"]
    assert tok.idx_to_token[:5 + len(alphabet)] == [*SPECIALS, *alphabet]  # first and ## letters
    # likelihood: the most frequent pair (in 7 of 10 words); ratio: the pair of the rarest pieces
    assert tok.idx_to_token[5 + len(alphabet)] == first_merge
    assert len(tok) < 60  # stopped early: every word is whole, no pair is left
    assert all(tok.tokenize(text) == text.split() for text in texts)
    tok.save_vocab(tmp_path / "vocab.txt")
    assert WordPieceTokenizer.from_vocab_file(tmp_path / "vocab.txt").idx_to_token == tok.idx_to_token
    assert train_wordpiece(texts[::-1], vocab_size=60, score=score).idx_to_token == tok.idx_to_token
    assert len(train_wordpiece(texts, vocab_size=25, score=score)) == 25
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(texts, vocab_size=10, score=score)


def test_trained_on_shipped_corpus_matches_hugging_face(tmp_path):
    from bertlite.wikitext import read_text
    tok = train_wordpiece(read_text(split="valid"), vocab_size=400)
    assert len(tok) == 400 and "the" in tok.token_to_idx
    tok.save_vocab(tmp_path / "vocab.txt")
    ref = references(tmp_path, True, None)["fast"]
    lines = read_text(split="test").split("\n")[:40]
    for line in lines:
        assert tok.encode(line) == ref(line, add_special_tokens=False)["input_ids"]
    n_tokens = sum(len(tok.tokenize(line)) for line in lines)
    assert n_tokens < 2.5 * sum(len(line.split()) for line in lines)  # pieces, not characters
