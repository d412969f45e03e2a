"""Masking strategies beyond single tokens: whole words, n-grams of words, SpanBERT's spans.

All of them share `mask_tokens`' inputs and outputs (and its budget: 15% of each row's maskable
tokens, at most `max_preds`), so the dataset and the trainer do not care which one made a batch.
The primitives they share (which positions may be masked, the per-row budget, the 80/10/10
replacement) come first; data.py imports them from here, and this file imports nothing of data.py.
They differ only in *which* positions are chosen: whole words, never a lone `##` piece, in spans
of 1 or more words. `mask_tokens` itself is the "token" strategy.

Spans are placed in rounds over all rows at once: each round, every row that still has budget
draws one span length and puts the span at a random place where it fits. A row needs as many
rounds as it gets spans (2-3 SpanBERT spans at 64 tokens, up to `max_preds` single words), so the
loop is short and each of its steps works on whole arrays.
"""
from __future__ import annotations

import numpy as np

from .vocab import Vocab


def token_id(vocab, token: str) -> int:
    """The id of one token through the tokenizer interface, so that the same code reads `<mask>`
    of the word-level `Vocab` and `[MASK]` of WordPiece (`token_id(vocab, vocab.mask_token)`)."""
    return vocab.convert_tokens_to_ids([token])[0]


def maskable_positions(tokens, valid_lens, vocab: Vocab, never_mask=()) -> np.ndarray:
    """(N, T) bool: the positions masking may choose. Inside the valid length, not in
    `never_mask`, not a special token: `<unk>` counts as one, since predicting it teaches
    nothing (the book and Google's script do mask it). Explained in notebooks/03_masking.ipynb.
    """
    never = np.zeros(len(vocab), bool)
    never[vocab.specials] = True
    never[list(never_mask)] = True
    tokens = np.asarray(tokens)
    return (np.arange(tokens.shape[1]) < np.asarray(valid_lens)[:, None]) & ~never[tokens]


def prediction_budget(maskable, mask_prob: float, max_preds: int) -> np.ndarray:
    """(N,) how many positions each row predicts: max(1, round(mask_prob * n)) of its n maskable
    positions, never more than n or `max_preds`. (The book and Google's script count `<cls>` and
    `<sep>` in n; we count only what can be masked, so the rate is 15% of the maskable tokens.)
    """
    n_maskable = maskable.sum(1)
    budget = np.minimum(np.maximum(1, np.round(mask_prob * n_maskable)), n_maskable)
    return np.minimum(budget, max_preds).astype(np.int64)


def replace_predicted(tokens, positions, real, vocab: Vocab, rng: np.random.Generator,
                      mask_token_prob=0.8, random_token_prob=0.1, u=None) -> dict:
    """The MLM batch for chosen `positions` (N, P), of which `real` (N, P) are predictions and
    the rest padding: each real position becomes `<mask>` with probability `mask_token_prob`, a
    random ordinary (never special) token with `random_token_prob`, and stays as it is
    otherwise; `u` (N, P) are the uniform draws that decide it (by default one per position).
    Returns the masked tokens (a copy), the positions (0 in padding), MLM weights (1 real, 0
    padding) and labels (the original tokens, 0 in padding).
    Explained in notebooks/03_masking.ipynb.
    """
    if not (min(mask_token_prob, random_token_prob) >= 0
            and mask_token_prob + random_token_prob <= 1):
        raise ValueError("need mask_token_prob, random_token_prob >= 0 with a sum <= 1")
    tokens = np.asarray(tokens)
    positions = np.where(real, positions, 0)
    rows = np.arange(len(tokens))[:, None]
    labels = np.where(real, tokens[rows, positions], 0)
    u = rng.random(real.shape) if u is None else u
    ordinary = np.flatnonzero(~np.isin(np.arange(len(vocab)), vocab.specials))
    replacement = np.where(u < mask_token_prob, token_id(vocab, vocab.mask_token),
                           np.where(u < mask_token_prob + random_token_prob,
                                    rng.choice(ordinary, real.shape), labels))
    masked = tokens.copy()
    masked[rows, positions] = np.where(real, replacement, masked[rows, positions])
    return {"tokens": masked, "pred_positions": positions, "mlm_weights": real.astype(np.float32),
            "mlm_labels": labels}


def mask_tokens(tokens, valid_lens, vocab: Vocab, rng: np.random.Generator, mask_prob=0.15,
                mask_token_prob=0.8, random_token_prob=0.1, never_mask=(), max_preds=None):
    """Masked-LM inputs for a batch of token ids (N, T); the input is not changed.

    In each row, `prediction_budget` of the maskable positions (`maskable_positions`) are chosen
    at random and replaced 80/10/10 by `replace_predicted`. The predicted positions are sorted
    and padded to `max_preds` (default round(mask_prob * T)) slots.
    Explained in notebooks/03_masking.ipynb.
    """
    if not 0 < mask_prob <= 1:
        raise ValueError(f"need 0 < mask_prob <= 1, got {mask_prob}")
    tokens = np.asarray(tokens)
    n, t = tokens.shape
    max_preds = round(mask_prob * t) if max_preds is None else max_preds
    if max_preds < 1:
        raise ValueError(f"max_preds={max_preds}: sequences of {t} tokens leave no room to predict")
    maskable = maskable_positions(tokens, valid_lens, vocab, never_mask)  # (N, T)
    n_preds = prediction_budget(maskable, mask_prob, max_preds)          # (N,)
    # A random order of each row's maskable positions: sort random keys, unmaskable ones last.
    keys = np.where(maskable, rng.random((n, t)), 2.0)
    chosen = np.argsort(keys, axis=1)[:, :max_preds]                # (N, P)
    real = np.arange(max_preds) < n_preds[:, None]                  # (N, P) real slot or padding
    positions = np.sort(np.where(real, chosen, t), axis=1)          # real slots first, in order
    return replace_predicted(tokens, positions, real, vocab, rng, mask_token_prob,
                             random_token_prob)


def find_word_starts(tokens, vocab: Vocab) -> np.ndarray:
    """(N, T) bool: True where a token begins a word. A WordPiece token beginning with "##"
    continues the word before it; in a word-level vocabulary every token is a word.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    pieces = vocab.convert_ids_to_tokens(range(len(vocab)))  # any tokenizer, not only ours
    starts = np.array([not t.startswith("##") for t in pieces])  # (V,)
    return starts[np.asarray(tokens)]


def ngram_probs(max_n: int = 3) -> np.ndarray:
    """P(n words) for n = 1..max_n, proportional to 1/n (ALBERT's n-gram masking: 6/11, 3/11,
    2/11 for max_n=3), so short n-grams are the most common.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    p = 1 / np.arange(1, max_n + 1)
    return p / p.sum()


def geometric_probs(p: float = 0.2, max_len: int = 10) -> np.ndarray:
    """P(n words) for n = 1..max_len: Geometric(p) cut at max_len and renormalised, as in
    SpanBERT's code; mean 3.8 words for p=0.2 (the paper's figure; piling the tail onto 10 instead
    would give 4.46). Explained in notebooks/07_masking_strategies.ipynb.
    """
    if not (0 < p <= 1 and max_len >= 1):
        raise ValueError(f"need 0 < p <= 1 and max_len >= 1, got p={p}, max_len={max_len}")
    probs = p * (1 - p) ** np.arange(max_len)
    return probs / probs.sum()


def _words(maskable, starts, pad):
    """Each position's word number (N, T), and per word (N, W + pad): its size in pieces and the
    stretch of maskable tokens it lies in (-1 for the `pad` columns after the last word)."""
    n = len(maskable)
    after = np.c_[np.zeros(n, bool), maskable[:, :-1]]               # previous token is maskable
    begins = maskable & (starts | ~after)                            # (N, T) a word starts here
    word = np.cumsum(begins, 1) - 1                                  # (N, T) word number in its row
    stretch = np.cumsum(maskable & ~after, 1)                        # (N, T) stretch number
    width = int(begins.sum(1).max(initial=0)) + pad
    rows, cols = np.nonzero(maskable)
    size = np.bincount(rows * width + word[rows, cols], minlength=n * width).reshape(n, width)
    rows, cols = np.nonzero(begins)
    word_stretch = np.full((n, width), -1)
    word_stretch[rows, word[rows, cols]] = stretch[rows, cols]
    return word, size, word_stretch


def choose_spans(tokens, valid_lens, vocab: Vocab, rng: np.random.Generator, word_starts=None,
                 length_probs=(1.0,), mask_prob=0.15, never_mask=(), max_preds=None) -> np.ndarray:
    """Which positions to predict, as spans of whole words: (N, T) int, 0 where not chosen, else
    the span's number (numbers grow in the order spans were placed; touching spans stay apart).

    Each row gets the budget of `mask_tokens`: max(1, round(mask_prob * n)) of its n maskable
    tokens, at most `max_preds`. Until it is spent, a span length in words is drawn from
    `length_probs` (for 1, 2, ... words) and the span starts at a random word where that many free
    words follow inside one stretch of maskable tokens (spans never cross `<sep>`). A span that
    would overrun the budget is cut to the whole words that fit; a word that does not fit at all
    is never started, so a row may end a little under budget (never over) when only long words
    are left. A word is its first piece and the "##" pieces after it (`word_starts`, by default
    from the vocabulary); a never-masked piece splits a word.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    tokens = np.asarray(tokens)
    n, t = tokens.shape
    max_preds = round(mask_prob * t) if max_preds is None else max_preds
    if not 0 < mask_prob <= 1 or max_preds < 1:
        raise ValueError(f"need 0 < mask_prob <= 1 and max_preds >= 1, got {mask_prob}, "
                         f"{max_preds}")
    probs = np.asarray(length_probs, float)
    if probs.ndim != 1 or (probs < 0).any() or not np.isclose(probs.sum(), 1):
        raise ValueError("length_probs must be the probabilities of spans of 1, 2, ... words")
    starts = find_word_starts(tokens, vocab) if word_starts is None else np.asarray(word_starts)
    if starts.shape != tokens.shape:
        raise ValueError(f"word_starts has shape {starts.shape}; it must match the tokens' "
                         f"{tokens.shape}")
    maskable = maskable_positions(tokens, valid_lens, vocab, never_mask)  # (N, T)
    budget = prediction_budget(maskable, mask_prob, max_preds)           # (N,) as in mask_tokens
    longest = len(probs)
    # Word tables (N, W + longest): the extra columns are never free, so a span that would run
    # past a row's last word never fits.
    word, size, word_stretch = _words(maskable, starts.astype(bool), longest)
    n_words = size.shape[1] - longest
    free = size > 0                                                  # (N, W + L) not chosen yet
    span = np.zeros(size.shape, np.int64)
    count = np.zeros(n, np.int64)
    offsets = np.arange(longest)
    for k in range(1, 20 * max_preds + 1):  # a span per row and round; 20x: slack for misses
        need = budget - count
        fits = free & (size <= need[:, None])
        a = np.flatnonzero(fits.any(1))                              # (A,) rows with budget left
        if len(a) == 0:
            break
        length = rng.choice(longest, len(a), p=probs) + 1            # (A,) span length in words
        taken = np.c_[np.zeros(len(a), int), np.cumsum(~free[a], 1)]  # (A, W + L + 1) running count
        end = np.arange(n_words) + length[:, None]                   # (A, W) one past the span
        r = np.arange(len(a))[:, None]
        ok = ((taken[r, end] == taken[:, :n_words])                  # its words are all free,
              & (word_stretch[a][r, end - 1] == word_stretch[a][:, :n_words])  # in one stretch,
              & fits[a][:, :n_words])                                # and its first word fits
        first = np.where(ok, rng.random(ok.shape), -1.0).argmax(1)   # (A,) a random valid start
        idx = first[:, None] + offsets                               # (A, L) the span's words
        in_span = (offsets < length[:, None]) & ok.any(1)[:, None]   # no valid start: no span
        pieces = np.where(in_span, size[a[:, None], idx], 0)
        keep = in_span & (np.cumsum(pieces, 1) <= need[a][:, None])  # cut at the budget
        free[a[:, None], idx] &= ~keep
        span[a[:, None], idx] = np.where(keep, k, span[a[:, None], idx])
        count[a] += (pieces * keep).sum(1)
    return np.where(maskable, span[np.arange(n)[:, None], np.maximum(word, 0)], 0)


def replace_chosen(tokens, spans, vocab: Vocab, rng: np.random.Generator, mask_token_prob=0.8,
                   random_token_prob=0.1, max_preds=None, per_span=False) -> dict:
    """`mask_tokens`' outputs for the positions where `spans` > 0: each becomes `<mask>`, a random
    ordinary token or itself (80/10/10), decided per token, or once per span (`per_span`,
    SpanBERT: a span is all `<mask>`, all random tokens or all kept). `max_preds` defaults to
    round(0.15 * T), as in `mask_tokens`. Explained in notebooks/07_masking_strategies.ipynb.
    """
    tokens, spans = np.asarray(tokens), np.asarray(spans)
    n, t = tokens.shape
    max_preds = round(0.15 * t) if max_preds is None else max_preds
    if ((spans > 0).sum(1) > max_preds).any():
        raise ValueError(f"a row has more chosen positions than max_preds={max_preds}")
    order = np.sort(np.where(spans > 0, np.arange(t), t), 1)         # chosen positions first
    order = np.pad(order, ((0, 0), (0, max(0, max_preds - t))), constant_values=t)
    positions = order[:, :max_preds]                                 # (N, P)
    real = positions < t                                             # (N, P) real slot or padding
    u = None
    if per_span:  # one draw per span number, read by every token of the span
        rows = np.arange(n)[:, None]
        span_of = spans[rows, np.where(real, positions, 0)]           # (N, P)
        u = rng.random((n, spans.max(initial=0) + 1))[rows, span_of]
    return replace_predicted(tokens, positions, real, vocab, rng, mask_token_prob,
                             random_token_prob, u)


def _word_mask(tokens, valid_lens, vocab, rng, word_starts, length_probs, per_span, mask_prob,
               mask_token_prob, random_token_prob, never_mask, max_preds):
    t = np.asarray(tokens).shape[1]
    max_preds = round(mask_prob * t) if max_preds is None else max_preds
    spans = choose_spans(tokens, valid_lens, vocab, rng, word_starts, length_probs, mask_prob,
                         never_mask, max_preds)
    return replace_chosen(tokens, spans, vocab, rng, mask_token_prob, random_token_prob,
                          max_preds, per_span)


def whole_word_mask(tokens, valid_lens, vocab: Vocab, rng: np.random.Generator, word_starts=None,
                    mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, never_mask=(),
                    max_preds=None) -> dict:
    """Whole-word masking (Google's BERT, 2019): whole words are chosen until 15% of the maskable
    tokens are; all pieces of a word are predicted together, each replaced 80/10/10 on its own.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    return _word_mask(tokens, valid_lens, vocab, rng, word_starts, (1.0,), False, mask_prob,
                      mask_token_prob, random_token_prob, never_mask, max_preds)


def ngram_mask(tokens, valid_lens, vocab: Vocab, rng: np.random.Generator, word_starts=None,
               mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, never_mask=(),
               max_preds=None, max_n=3, probs=None) -> dict:
    """N-gram masking (ALBERT): spans of 1..max_n whole words, P(n) from `probs` (default
    `ngram_probs(max_n)`, proportional to 1/n); 80/10/10 per token, as in ALBERT's script.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    probs = ngram_probs(max_n) if probs is None else probs
    return _word_mask(tokens, valid_lens, vocab, rng, word_starts, probs, False, mask_prob,
                      mask_token_prob, random_token_prob, never_mask, max_preds)


def span_mask(tokens, valid_lens, vocab: Vocab, rng: np.random.Generator, word_starts=None,
              mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1, never_mask=(),
              max_preds=None, p=0.2, max_span=10) -> dict:
    """Span masking (SpanBERT): span lengths in words ~ Geometric(p) cut at `max_span`
    (`geometric_probs`, mean 3.8), starting at word starts; the 80/10/10 choice is made once per
    span, as in SpanBERT. Explained in notebooks/07_masking_strategies.ipynb.
    """
    return _word_mask(tokens, valid_lens, vocab, rng, word_starts, geometric_probs(p, max_span),
                      True, mask_prob, mask_token_prob, random_token_prob, never_mask, max_preds)


MASKING = {"token": mask_tokens, "whole_word": whole_word_mask, "ngram": ngram_mask,
           "span": span_mask}


def mask(strategy: str, tokens, valid_lens, vocab: Vocab, rng: np.random.Generator,
         word_starts=None, **options) -> dict:
    """Mask with a strategy named in `MASKING` ("token" is `mask_tokens` itself); `options` go to
    it (mask_prob, max_preds, max_n, p, ...). Explained in notebooks/07_masking_strategies.ipynb.
    """
    if strategy not in MASKING:
        raise ValueError(f"unknown masking strategy {strategy!r}; choose one of {list(MASKING)}")
    words = {} if strategy == "token" else {"word_starts": word_starts}  # tokens ignore words
    return MASKING[strategy](tokens, valid_lens, vocab, rng, **words, **options)
