"""WordPiece: BERT's subword tokenizer, written from its description (BERT paper and README).

Two steps. Basic tokenization cleans the text and cuts it into words: whitespace separates words,
every punctuation mark and every CJK ideograph is a word of its own, and uncased vocabularies
lowercase and drop accents. WordPiece then cuts each word into the longest pieces the vocabulary
has, left to right; pieces after the first carry a "##" prefix ("unaffable" -> un ##aff ##able).
A word that cannot be cut, or is longer than 100 characters, becomes one [UNK].
Tested to give the same ids as `transformers.BertTokenizer`, except on characters added to Unicode
since about version 8 (the fast tokenizer's Unicode tables are older than Python's).
"""
from __future__ import annotations

import collections
import json
import math
import re
import unicodedata
from pathlib import Path

from .checks import read_json, read_utf8, write_atomic

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # trained vocabularies use this order
MAX_WORD_CHARS = 100  # BERT's limit: longer "words" are usually URLs or noise, so [UNK]

# The CJK Unified Ideographs blocks (with extensions A-E and compatibility ideographs). Chinese
# is written without spaces, so each ideograph is cut out as a word. Japanese kana and Korean
# Hangul are not in these blocks: they are split on spaces like English.
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    # All ASCII symbols count: `$`, `+`, `^`, ... are not Unicode punctuation (P*), but BERT
    # splits them off all the same.
    code = ord(ch)
    return (33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
            or unicodedata.category(ch).startswith("P"))


def clean_text(text: str) -> str:
    """Drop NUL, U+FFFD, control, format and private-use characters; make whitespace a space.

    Unassigned code points (category Cn) stay, as in Hugging Face's fast tokenizer (Google's
    Python code drops them). Explained in notebooks/07_masking_strategies.ipynb.
    """
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r" or category in ("Zs", "Zl", "Zp"):
            out.append(" ")
        elif ch != "\ufffd" and category not in ("Cc", "Cf", "Co", "Cs"):  # Cc holds NUL
            out.append(ch)
    return "".join(out)


def basic_tokenize(text: str, lowercase: bool = True, strip_accents: bool | None = None) -> list[str]:
    """Clean `text` and cut it into words: on whitespace, around punctuation and CJK ideographs.

    `strip_accents=None` means "strip if lowercasing", as for BERT's uncased vocabularies.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    text = "".join(f" {ch} " if _is_cjk(ch) else ch for ch in clean_text(text))
    if strip_accents is None:
        strip_accents = lowercase
    if strip_accents:  # NFD writes "é" as "e" + a combining accent (category Mn), which we drop
        text = "".join(ch for ch in unicodedata.normalize("NFD", text)
                       if unicodedata.category(ch) != "Mn")
    if lowercase:  # one character at a time, as Hugging Face's fast tokenizer does: a final
        text = "".join(ch.lower() for ch in text)  # "Σ" becomes "σ", where str.lower() gives "ς"
    words = []
    for chunk in text.split():
        word = ""
        for ch in chunk:
            if _is_punctuation(ch):
                words += [word, ch] if word else [ch]
                word = ""
            else:
                word += ch
        if word:
            words.append(word)
    return words


def wordpiece_split(word: str, vocab, unk: str = "[UNK]", max_chars: int = MAX_WORD_CHARS):
    """Greedy longest-match-first: the longest prefix in `vocab`, then the longest "##" piece of
    the rest, and so on. If some rest has no piece at all, the whole word is `unk` (not the
    pieces found so far: a half-known word would read as a different word).
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


def word_starts(tokens) -> list[bool]:
    """True for each token that starts a word, False for "##" continuations (whole-word masking
    masks a start together with the continuations after it).
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    return [not t.startswith("##") for t in tokens]


class WordPieceTokenizer:
    """Text -> WordPiece tokens -> ids, and back, from a BERT vocab.txt.

    The special tokens [PAD] [UNK] [CLS] [SEP] [MASK] must be in the vocabulary; where they
    appear literally (in capitals) in a text they stay whole, as in Hugging Face's BertTokenizer.
    Its special tokens' names (`cls_token` ...) and `convert_*` methods are those of the
    tokenizer interface that the word-level `Vocab` also speaks.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    pad_token, unk_token, cls_token, sep_token, mask_token = SPECIALS

    def __init__(self, tokens, lowercase: bool = True, strip_accents: bool | None = None):
        self.idx_to_token = list(tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        if len(self.token_to_idx) != len(self.idx_to_token):
            raise ValueError("the vocabulary lists a token twice: give each token once")
        missing = [s for s in SPECIALS if s not in self.token_to_idx]
        if missing:
            raise ValueError(f"the vocabulary lacks {missing}: add them (BERT's vocab.txt has all "
                             f"of {SPECIALS})")
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, \
            self.mask_token_id = (self.token_to_idx[s] for s in SPECIALS)
        # A capturing group keeps the specials in re.split's output, at the odd positions.
        self._special_re = re.compile("(" + "|".join(map(re.escape, SPECIALS)) + ")")

    @classmethod
    def from_vocab_file(cls, path, lowercase: bool | None = None, strip_accents: bool | None = None):
        """Load a vocab.txt (one token per line; the line number is the id). Casing and accents
        come from the arguments, else from a `tokenizer_config.json` beside the file (as Hugging
        Face and `save_vocab` write it), else BERT's default: uncased.
        Explained in notebooks/07_masking_strategies.ipynb."""
        config_path = Path(path).parent / "tokenizer_config.json"
        config = read_json(config_path) if config_path.is_file() else {}  # bad JSON: names the file
        lowercase = config.get("do_lower_case", True) if lowercase is None else lowercase
        strip_accents = config.get("strip_accents") if strip_accents is None else strip_accents
        lines = read_utf8(path, "vocabulary").split("\n")  # not splitlines(): tokens
        if lines and lines[-1] == "":                       # may hold U+2028 and kin
            lines.pop()
        return cls(lines, lowercase, strip_accents)

    def save_vocab(self, path) -> None:
        """Write vocab.txt: one token per line, in id order; a cased (or accent-keeping)
        tokenizer also writes `tokenizer_config.json` beside it, so that it loads back the same.
        Explained in notebooks/07_masking_strategies.ipynb."""
        Path(path).write_text("\n".join(self.idx_to_token) + "\n", encoding="utf-8")
        if not self.lowercase or self.strip_accents is not None:
            config = {"do_lower_case": self.lowercase, "strip_accents": self.strip_accents}
            write_atomic(Path(path).parent / "tokenizer_config.json", json.dumps(config) + "\n")

    save = save_vocab  # `Vocab`'s name for it: a run folder writes either vocabulary the same way

    def __len__(self):
        return len(self.idx_to_token)

    def __repr__(self):
        return f"WordPieceTokenizer({len(self)} pieces, {'lowercase' if self.lowercase else 'cased'})"

    @property
    def specials(self) -> list[int]:
        """Ids of the special tokens (never masked, never drawn as random replacements)."""
        return sorted(self.token_to_idx[s] for s in SPECIALS)

    def words(self, text: str) -> list[str]:
        """Basic tokenization, keeping literal special tokens whole.
        Explained in notebooks/07_masking_strategies.ipynb."""
        words = []
        for i, part in enumerate(self._special_re.split(text)):
            words += [part] if i % 2 else basic_tokenize(part, self.lowercase, self.strip_accents)
        return words

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of `text`. Explained in notebooks/07_masking_strategies.ipynb."""
        tokens = []
        for word in self.words(text):
            tokens += [word] if word in SPECIALS else wordpiece_split(word, self.token_to_idx)
        return tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no [CLS]/[SEP] added).
        Explained in notebooks/07_masking_strategies.ipynb."""
        return self.convert_tokens_to_ids(self.tokenize(text))

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return [self.token_to_idx.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.idx_to_token[int(i)] for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Tokens joined by spaces, "##" pieces glued to the piece before. Lossy: case, accents and
        the spaces around punctuation are gone. Explained in notebooks/07_masking_strategies.ipynb."""
        tokens = self.convert_ids_to_tokens(ids)
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in SPECIALS]
        return " ".join(tokens).replace(" ##", "")

    def word_starts(self, tokens_or_ids) -> list[bool]:
        """`word_starts` of tokens, or of ids. Explained in notebooks/07_masking_strategies.ipynb."""
        items = list(tokens_or_ids)
        if not all(isinstance(t, str) for t in items):
            items = self.convert_ids_to_tokens(items)
        return word_starts(items)


def train_wordpiece(texts, vocab_size: int, min_frequency: int = 2, score: str = "likelihood",
                    lowercase: bool = True, strip_accents: bool | None = None) -> WordPieceTokenizer:
    """Learn a WordPiece vocabulary of at most `vocab_size` tokens from `texts` (a string or a list).

    Start from the specials and every character (as a first piece "a" and as a continuation "##a"),
    then merge, again and again, the adjacent pair (a, b) seen at least `min_frequency` times with
    the best score. `score="ratio"`: count(ab) / (count(a) count(b)), the textbook description; it
    favours pairs of rare pieces (on the shipped corpus "the" is still "th ##e" at 2,000 tokens).
    `score="likelihood"`: count(ab) log(count(ab) N / (count(a) count(b))) with N pieces in all,
    about how much merging raises the likelihood of the text under a unigram model (the criterion
    of the original WordPiece); it also rewards frequent pairs. Stops early when no pair is seen
    `min_frequency` times.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    if score not in ("likelihood", "ratio"):
        raise ValueError(f"score={score!r}: choose 'likelihood' or 'ratio'")
    texts = [texts] if isinstance(texts, str) else texts  # not a list of characters
    splitter = WordPieceTokenizer(SPECIALS, lowercase, strip_accents)
    counts = collections.Counter(w for text in texts for w in splitter.words(text)
                                 if w not in SPECIALS)
    words = [[w[0]] + ["##" + ch for ch in w[1:]] for w in counts]  # each distinct word as pieces
    freqs = list(counts.values())
    vocab = list(SPECIALS) + sorted({p for pieces in words for p in pieces})
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(vocab)} specials and characters "
                         "of the text: ask for more")
    piece_counts, pair_counts = collections.Counter(), collections.Counter()
    where = collections.defaultdict(set)  # pair -> the words that hold it (or once held it)

    def count(i, sign):  # add (sign=1) or remove (sign=-1) word i's pieces and pairs
        for p in words[i]:
            piece_counts[p] += sign * freqs[i]
        for pair in zip(words[i], words[i][1:]):
            pair_counts[pair] += sign * freqs[i]
            if sign > 0:
                where[pair].add(i)
            elif pair_counts[pair] == 0:
                del pair_counts[pair]  # keeps the search for the best pair short

    for i in range(len(words)):
        count(i, 1)
    while len(vocab) < vocab_size:
        n, scored = sum(piece_counts.values()), []
        for (a, b), c in pair_counts.items():
            if c >= min_frequency:
                chance = piece_counts[a] * piece_counts[b]
                value = c * math.log(c * n / chance) if score == "likelihood" else c / chance
                scored.append((value, a, b))
        if not scored:
            break
        _, a, b = max(scored)  # on a tie, the larger strings: the same result every time
        merged = a + b[2:]  # b is always a "##" piece
        if merged not in vocab:  # ("##a", "##bc") and ("##ab", "##c") both give "##abc"
            vocab.append(merged)
        for i in where.pop((a, b)):  # only the words holding the pair change
            count(i, -1)
            pieces, j = [], 0
            while j < len(words[i]):
                if words[i][j:j + 2] == [a, b]:
                    pieces.append(merged)
                    j += 2
                else:
                    pieces.append(words[i][j])
                    j += 1
            words[i] = pieces
            count(i, 1)
    return WordPieceTokenizer(vocab, lowercase, strip_accents)
