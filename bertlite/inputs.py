"""Text straight into the model's input: tokens, segments and valid lengths, for any tokenizer.

bertlite has two tokenizers, the word-level `Vocab` of the book and BERT's WordPiece. Both speak
the small interface below, with Hugging Face's names, so transformers' `BertTokenizer` fits it
too; everything that turns text into ids (these functions, `get_bert_encoding`, `fill_mask`,
`load_topic_dataset`) asks for nothing more.
Explained in notebooks/10_real_bert.ipynb.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .data import tokens_and_segments


class Tokenizer(Protocol):
    """What a tokenizer must offer (a `Protocol`: nothing has to inherit from it)."""
    cls_token: str   # "<cls>" or "[CLS]"
    sep_token: str
    pad_token: str
    mask_token: str
    unk_token: str

    def tokenize(self, text: str) -> list[str]: ...
    def convert_tokens_to_ids(self, tokens) -> list[int]: ...
    def convert_ids_to_tokens(self, ids) -> list[str]: ...
    def __len__(self) -> int: ...


def truncate_pair(a: list, b: list | None, budget: int) -> tuple[list, list | None]:
    """Cut the ends of `a` and `b` so that together they fit in `budget` tokens, as Hugging Face's
    "longest_first" does: the shorter part keeps all it has if the longer can take the rest,
    otherwise both get half (the one that was longer gets an odd token). A long sentence B thus
    never eats all of A, and the ids equal transformers' on every pair.
    Explained in notebooks/10_real_bert.ipynb."""
    a = list(a)
    if b is None:
        return a[:budget], None
    b = list(b)
    if len(a) + len(b) <= budget:
        return a, b
    n_short, n_long = sorted((len(a), len(b)))
    n_long = n_short if n_short > budget else max(n_short, budget - n_short)
    if n_short + n_long > budget:  # both must be cut
        n_short, n_long = budget // 2, budget // 2 + budget % 2
    n_a, n_b = (n_long, n_short) if len(a) > len(b) else (n_short, n_long)
    return a[:n_a], b[:n_b]


def encode_text(tokenizer: Tokenizer, text: str, text_pair: str | None = None,
                max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(ids, segments) of `[CLS] text [SEP]` (and `text_pair [SEP]`), cut to `max_len` tokens.
    Explained in notebooks/10_real_bert.ipynb."""
    a = tokenizer.tokenize(text)
    b = None if text_pair is None else tokenizer.tokenize(text_pair)
    if max_len is not None:
        specials = 2 if b is None else 3
        if max_len <= specials:
            raise ValueError(f"max_len={max_len} leaves no room for text beside the {specials} specials")
        a, b = truncate_pair(a, b, max_len - specials)
    tokens, segments = tokens_and_segments(a, b, tokenizer.cls_token, tokenizer.sep_token)
    return tokenizer.convert_tokens_to_ids(tokens), segments


def encode_batch(tokenizer: Tokenizer, texts, text_pairs=None, max_len: int | None = None) -> dict:
    """A padded batch {"tokens" (B, T), "segments" (B, T), "valid_lens" (B,)} of `texts` (and
    their `text_pairs`), T being the longest sequence; padding is `pad_token` in segment 0.
    Unpack it into the model: `net(**encode_batch(tok, texts))`.
    Explained in notebooks/10_real_bert.ipynb.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    pairs = [None] * len(texts) if text_pairs is None else (
        [text_pairs] if isinstance(text_pairs, str) else list(text_pairs))
    if len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text_pairs: give one pair per text")
    rows = [encode_text(tokenizer, t, p, max_len) for t, p in zip(texts, pairs)]
    T = max(len(ids) for ids, _ in rows)
    pad = tokenizer.convert_tokens_to_ids([tokenizer.pad_token])[0]
    tokens = torch.full((len(rows), T), pad, dtype=torch.long)   # (B, T)
    segments = torch.zeros((len(rows), T), dtype=torch.long)     # (B, T)
    for i, (ids, seg) in enumerate(rows):
        tokens[i, :len(ids)] = torch.tensor(ids)
        segments[i, :len(seg)] = torch.tensor(seg)
    valid_lens = torch.tensor([len(ids) for ids, _ in rows])     # (B,)
    return {"tokens": tokens, "segments": segments, "valid_lens": valid_lens}
