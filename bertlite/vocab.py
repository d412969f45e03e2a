"""A word-level vocabulary: tokens <-> integer ids, as in the book."""
from __future__ import annotations

import collections
from itertools import chain, repeat
from pathlib import Path

import numpy as np

# The order fixes the ids: <pad> is 0, so zero-filled tensors read as padding.
SPECIAL_TOKENS = ("<pad>", "<mask>", "<cls>", "<sep>", "<unk>")


def is_word_vocab_file(path) -> bool:
    """True for a word vocabulary written by `Vocab.save`: its first line is `<pad>`. (BERT's
    WordPiece vocab.txt begins with `[PAD]`.)"""
    from .checks import read_utf8
    return read_utf8(path, "vocabulary").split("\n", 1)[0] == SPECIAL_TOKENS[0]


class Vocab:
    """Map tokens to ids and back.

    It speaks the tokenizer interface that WordPiece (and transformers' BertTokenizer) speak too:
    `tokenize`, `convert_tokens_to_ids`, `convert_ids_to_tokens` and the special tokens' names
    (`cls_token` ...), so encodings, fill-mask and fine-tuning data take either.

    Special tokens come first (`<pad>`=0, `<mask>`=1, `<cls>`=2, `<sep>`=3, `<unk>`=4), then every
    token seen at least `min_freq` times, most frequent first (ties in alphabetical order, so the
    ids do not depend on the order of the corpus). Unknown tokens map to `<unk>`.

    Explained in notebooks/01_wikitext_and_vocab.ipynb.
    """

    pad_token, mask_token, cls_token, sep_token, unk_token = SPECIAL_TOKENS

    def __init__(self, tokens=(), min_freq: int = 1, specials=SPECIAL_TOKENS, counts=None):
        if min_freq < 1:
            raise ValueError(f"min_freq must be at least 1, got {min_freq}")
        if counts is None:  # `counts` ({token: count}) lets a fast caller skip the counting
            tokens = list(tokens)
            if tokens and isinstance(tokens[0], (list, tuple)):
                tokens = list(chain.from_iterable(tokens))  # a list of sentences is fine too
            counts = collections.Counter(tokens)
        counts = dict(counts)
        for s in specials:
            counts.pop(s, None)
        kept = sorted(t for t, c in counts.items() if c >= min_freq)  # ties stay alphabetical:
        kept.sort(key=counts.__getitem__, reverse=True)              # the sort is stable
        self.idx_to_token = list(specials) + kept
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        self.token_freqs = [(t, counts[t]) for t in kept]  # for the frequency plot
        self.unk = self.token_to_idx.get("<unk>", 0)

    def __len__(self):
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        """One token -> its id; a list of tokens -> a list of ids."""
        if isinstance(tokens, str):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.token_to_idx.get(t, self.unk) for t in tokens]

    def to_tokens(self, ids):
        """One id -> its token; a list (or array) of ids -> a list of tokens."""
        if isinstance(ids, (int, np.integer)):
            return self.idx_to_token[ids]
        return [self.idx_to_token[int(i)] for i in ids]

    def tokenize(self, text: str) -> list[str]:
        """Words of `text` as WikiText writes them: lowercase, split on spaces ("marsh ." not
        "marsh."). Explained in notebooks/10_real_bert.ipynb."""
        return text.lower().split()

    def convert_tokens_to_ids(self, tokens) -> list[int]:
        return self[list(tokens)]

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return self.to_tokens(list(ids))

    def encode(self, tokens) -> np.ndarray:
        """Ids of many tokens as an int64 array (the fast path for whole corpora)."""
        tokens = list(tokens)
        ids = map(self.token_to_idx.get, tokens, repeat(self.unk))  # dict.get(token, unk), in C
        return np.fromiter(ids, dtype=np.int64, count=len(tokens))

    @property
    def specials(self) -> list[int]:
        """Ids of the special tokens (never masked, never drawn as random replacements)."""
        return [i for i, t in enumerate(self.idx_to_token) if t in SPECIAL_TOKENS]

    def save(self, path) -> None:
        """One token per line, in id order (the layout of BERT's vocab.txt)."""
        Path(path).write_text("\n".join(self.idx_to_token) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path, specials=SPECIAL_TOKENS, size: int | None = None) -> "Vocab":
        """A vocabulary from `save`'s file. It must begin with `specials` in order and list each
        token once, and with `size` (the model's vocab_size) it must have that many lines: a
        deleted or added line would shift every id after it, and training would go on silently
        wrong. A last line without its newline is kept."""
        from .checks import read_utf8
        tokens = read_utf8(path, "vocabulary").split("\n")
        if tokens[-1] == "":
            tokens.pop()  # the final newline ends the last line; it starts no token
        problem = None
        if not tokens:
            problem = "is empty"
        elif tokens[:len(specials)] != list(specials):
            i = next(i for i, (t, s) in enumerate(zip([*tokens, None], specials)) if t != s)
            problem = (f"line {i + 1} is {tokens[i]!r}, not {specials[i]!r}" if i < len(tokens)
                       else f"lacks {specials[i]!r} on line {i + 1}")
        elif "" in tokens:
            problem = f"line {tokens.index('') + 1} is empty"
        elif size is not None and len(tokens) != size:
            problem = f"has {len(tokens)} tokens but the model has vocab_size={size}"
        if problem is None and len(set(tokens)) != len(tokens):
            seen = set()
            twice = next(t for t in tokens if t in seen or seen.add(t))
            problem = f"lists {twice!r} twice"
        if problem:
            raise ValueError(f"{path} {problem}: not the vocabulary this model was trained "
                             "with; restore it from the run folder")
        vocab = cls(specials=())
        vocab.idx_to_token = tokens
        vocab.token_to_idx = {t: i for i, t in enumerate(tokens)}
        vocab.unk = vocab.token_to_idx.get("<unk>", 0)
        return vocab

    def __repr__(self):
        return f"Vocab(size={len(self)}, first={self.idx_to_token[:8]})"
