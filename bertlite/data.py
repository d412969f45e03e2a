"""BERT pre-training examples: tokens and segments, sentence pairs, masking, padding.

Every step works on whole arrays at once (numpy), never token by token in Python: building the
examples of all of WikiText-2 takes a fraction of a second this way. Randomness always comes from
a `numpy.random.Generator` that the caller passes in, so the same seed gives the same batch.
"""
from __future__ import annotations

import collections
import itertools
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch

from .masking import MASKING, find_word_starts, mask, mask_tokens  # noqa: F401 (re-exported)
from .masking import maskable_positions, prediction_budget, replace_predicted  # noqa: F401
from .masking import token_id
from .vocab import Vocab, is_word_vocab_file
from .wikitext import SHIPPED, read_text

BATCH_KEYS = ("tokens", "segments", "valid_lens", "pred_positions", "mlm_weights", "mlm_labels",
              "nsp_labels")


def tokens_and_segments(tokens_a, tokens_b=None, cls: str = "<cls>", sep: str = "<sep>"):
    """`<cls> A <sep>` (and `B <sep>`), with segment id 0 for the first part and 1 for B.
    `cls` and `sep` spell the two specials: WordPiece writes them `[CLS]` and `[SEP]`.

    Explained in notebooks/02_tokens_segments_nsp.ipynb.
    """
    tokens = [cls, *tokens_a, sep]
    segments = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, sep]
        segments += [1] * (len(tokens_b) + 1)
    return tokens, segments


def text_ids(vocab: Vocab, words) -> np.ndarray:
    """Ids of the words of a text: a literal `<mask>` or `<cls>` written in the text is an
    unknown word, not the special token (it would be a free answer, or a fake sentence start)."""
    ids = vocab.encode(words)
    ids[np.isin(ids, vocab.specials)] = vocab.unk
    return ids


@dataclass
class Corpus:
    """Every sentence of every paragraph back to back in one id array, plus where each begins.

    Explained in notebooks/02_tokens_segments_nsp.ipynb.
    """
    ids: np.ndarray        # (num_tokens,) int64
    starts: np.ndarray     # (S,) offset of sentence s in ids
    lengths: np.ndarray    # (S,) tokens in sentence s
    paragraph: np.ndarray  # (S,) the paragraph sentence s belongs to

    @classmethod
    def encode(cls, paragraphs, vocab: Vocab) -> "Corpus":
        """From paragraphs of sentences of tokens (`parse_wikitext`'s output)."""
        sentences = list(chain.from_iterable(paragraphs))
        lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
        sizes = np.fromiter(map(len, paragraphs), np.int64, len(paragraphs))
        return cls(ids=text_ids(vocab, chain.from_iterable(sentences)),
                   starts=np.cumsum(lengths) - lengths, lengths=lengths,
                   paragraph=np.repeat(np.arange(len(paragraphs)), sizes))

    @classmethod
    def from_text(cls, text: str, vocab=None, min_freq: int = 5, min_sentences: int = 2):
        """`parse_wikitext`, `Vocab` and `Corpus.encode` in one pass over whole arrays: the same
        result (tested), faster (benchmarks/data_pipeline.py). Returns the corpus and its vocabulary.

        Each distinct word is hashed once; the sentence and paragraph structure is then found
        with numpy on integer ids instead of Python loops over tokens. `vocab` may also be a
        subword tokenizer (WordPiece): the sentences and paragraphs are the same, but each word
        becomes its pieces (`_pieces`), and `starts` and `lengths` count pieces.
        Explained in notebooks/01_wikitext_and_vocab.ipynb (section 1.8).
        """
        if min_sentences < 1:
            raise ValueError("min_sentences must be at least 1")
        if not text.strip():
            raise ValueError("the text is empty: nothing to build a corpus from")
        mark = "\0"  # marks line ends (its id is 0): a string that no word of the text can be
        while mark in text:
            mark += "\0"
        words = (mark + " " + text.replace("\n", f" {mark} ")).split()
        types = collections.defaultdict(itertools.count().__next__)  # a new word gets the next id
        typed = np.fromiter(map(types.__getitem__, words), np.int64, len(words))
        # Lowercase the distinct words only, then merge the ids of words that become equal.
        lower = {w: i for i, w in enumerate(dict.fromkeys(w.lower() for w in types))}
        raw = np.fromiter(map(lower.__getitem__, map(str.lower, types)), np.int64, len(types))[typed]
        eol = raw == 0
        line = np.cumsum(eol, dtype=np.int64) - eol       # line of each word
        first = np.r_[True, eol[:-1]] & ~eol              # first word of a line
        last = np.r_[eol[1:], True] & ~eol                # last word of a line
        eq = lower.get("=", -1)
        heading = np.zeros(line[-1] + 2, bool)
        heading[line[first]] = raw[first] == eq
        heading[line[first]] &= raw[last] == eq           # a line that begins and ends with "="
        dot = raw == lower.get(".", -1)
        start = (first | np.r_[False, dot[:-1]]) & ~eol   # a sentence starts a line or follows "."
        n_sent = np.bincount(line[start], minlength=len(heading))
        keep_line = (n_sent >= min_sentences) & ~heading
        keep = ~eol & keep_line[line]
        raw, start, line, typed = raw[keep], start[keep], line[keep], typed[keep]
        if vocab is not None and not isinstance(vocab, Vocab):  # a subword tokenizer
            return cls._pieces(typed, np.flatnonzero(start), line, list(types), vocab), vocab
        if vocab is None:
            counts = np.bincount(raw, minlength=len(lower))
            vocab = Vocab(counts={w: c for w, c in zip(lower, counts.tolist()) if c},
                          min_freq=min_freq)
        starts = np.flatnonzero(start)
        lengths = np.diff(np.r_[starts, len(raw)])
        paragraph = np.cumsum(np.r_[True, line[starts[1:]] != line[starts[:-1]]]) - 1
        return cls(text_ids(vocab, lower)[raw], starts, lengths, paragraph), vocab

    @classmethod
    def _pieces(cls, typed, starts, line, types, tokenizer) -> "Corpus":
        """The corpus of the words `typed` (ids into `types`, the distinct words as written: a
        cased vocabulary sees the case) in a subword tokenizer's pieces. Each distinct word is
        cut once; numpy then lays the pieces of every occurrence end to end."""
        unk = token_id(tokenizer, tokenizer.unk_token)
        # WikiText writes its rare words as "<unk>": that is the tokenizer's unknown token, not
        # the pieces "<", "unk", ">". A literal special ("[MASK]") in the text is unknown too.
        cut = [[unk] if w == "<unk>" else tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))
               for w in types]
        n = np.fromiter(map(len, cut), np.int64, len(cut))            # (V,) pieces per word
        table = np.fromiter(chain.from_iterable(cut), np.int64, int(n.sum()))
        table[np.isin(table, tokenizer.specials)] = unk
        first = np.cumsum(n) - n                                      # (V,) word's first piece
        count = n[typed]                                              # (W,) pieces per occurrence
        out_first = np.cumsum(count) - count                          # (W,) where they go
        # Piece k of occurrence w sits at out_first[w] + k and is table[first[typed[w]] + k].
        within = np.arange(int(count.sum())) - np.repeat(out_first, count)
        ids = table[np.repeat(first[typed], count) + within]
        piece_starts = out_first[starts]                              # sentence starts, in pieces
        lengths = np.diff(np.r_[piece_starts, len(ids)])
        paragraph = np.cumsum(np.r_[True, line[starts[1:]] != line[starts[:-1]]]) - 1
        return cls(ids, piece_starts, lengths, paragraph)

    def with_successor(self) -> np.ndarray:
        """The sentences followed by another sentence of their paragraph: every pair's first."""
        return np.flatnonzero(self.paragraph[:-1] == self.paragraph[1:])

    def paragraphs(self, vocab: Vocab) -> list[list[list[str]]]:
        """Back to paragraphs of sentences of tokens (for reading, and for the tests)."""
        out = []
        for s in range(len(self.starts)):
            if s == 0 or self.paragraph[s] != self.paragraph[s - 1]:
                out.append([])
            out[-1].append(vocab.convert_ids_to_tokens(
                self.ids[self.starts[s]:self.starts[s] + self.lengths[s]]))
        return out


@dataclass
class Pairs:
    """Sentence pairs as sentence indices into a `Corpus`; `is_next` is the NSP label (1 = B follows A)."""
    a: np.ndarray
    b: np.ndarray
    is_next: np.ndarray


def next_sentence_pairs(corpus: Corpus, max_len: int, rng: np.random.Generator) -> Pairs:
    """One pair per pair of adjacent sentences: half keep the true next sentence (label 1), half
    get a random sentence from a random paragraph instead (label 0, as in the book even when the
    draw happens to hit the true next sentence).

    Pairs longer than `max_len` with `<cls>`, `<sep>`, `<sep>` are dropped, not truncated: a cut
    sentence is no longer the sentence whose successor we ask about, and a truncated "next"
    sentence could be told apart from a random one by its length alone.
    Explained in notebooks/02_tokens_segments_nsp.ipynb.
    """
    a = corpus.with_successor()
    is_next = rng.random(len(a)) < 0.5
    first = np.flatnonzero(np.r_[True, corpus.paragraph[1:] != corpus.paragraph[:-1]])  # (P,)
    size = np.diff(np.r_[first, len(corpus.paragraph)])
    p = rng.integers(0, len(first), len(a))  # a random paragraph, then a random sentence in it
    random_b = first[p] + (rng.random(len(a)) * size[p]).astype(np.int64)
    b = np.where(is_next, a + 1, random_b)
    keep = corpus.lengths[a] + corpus.lengths[b] + 3 <= max_len
    return Pairs(a[keep], b[keep], is_next[keep].astype(np.int64))


def sentence_order_pairs(corpus: Corpus, max_len: int, rng: np.random.Generator) -> Pairs:
    """ALBERT's sentence-order prediction: every two adjacent sentences of a paragraph, swapped
    with probability 0.5 (`is_next` 1 = in order, 0 = swapped). Both labels see the same two
    sentences, so topic cannot give the answer away (it can in NSP, whose random B usually
    comes from another article); only the order can. Same length rule as `next_sentence_pairs`.
    Explained in notebooks/07_masking_strategies.ipynb.
    """
    a = corpus.with_successor()
    in_order = rng.random(len(a)) < 0.5
    keep = corpus.lengths[a] + corpus.lengths[a + 1] + 3 <= max_len
    first, second = np.where(in_order, a, a + 1), np.where(in_order, a + 1, a)
    return Pairs(first[keep], second[keep], in_order[keep].astype(np.int64))


def dynamic_next_sentence_pairs(corpus: Corpus, max_len: int, rng: np.random.Generator) -> Pairs:
    """Next-sentence pairs for new pairs every epoch (`PretrainDataset(dynamic_pairs=True)`):
    the same number at every draw, because the trainer counts its steps in epochs of one length.

    One pair for each sentence whose true successor fits beside it in `max_len`. Half keep that
    successor (label 1); half get a random sentence instead (label 0, even when the draw hits the
    true successor or the sentence itself, rare but for tiny corpora), drawn uniformly from the
    sentences short enough to fit, so no pair is dropped. Unlike `next_sentence_pairs` the random
    sentence is uniform over sentences, not over paragraphs first.
    """
    a = corpus.with_successor()
    a = a[corpus.lengths[a] + corpus.lengths[a + 1] + 3 <= max_len]         # the pair fits
    is_next = rng.random(len(a)) < 0.5
    by_length = np.argsort(corpus.lengths, kind="stable")
    # How many sentences fit beside each a: the first `room` of them in order of length (>= 1,
    # as a's successor is one of them); a uniform draw among those is a uniform fitting sentence.
    room = np.searchsorted(corpus.lengths[by_length], max_len - 3 - corpus.lengths[a], side="right")
    random_b = by_length[(rng.random(len(a)) * room).astype(np.int64)]
    return Pairs(a, np.where(is_next, a + 1, random_b), is_next.astype(np.int64))


PAIR_TASKS = {"nsp": next_sentence_pairs, "sop": sentence_order_pairs}
# New pairs every epoch need a fixed count; sentence-order pairs have one already.
DYNAMIC_PAIR_TASKS = {"nsp": dynamic_next_sentence_pairs, "sop": sentence_order_pairs}


def build_inputs(corpus: Corpus, pairs: Pairs, max_len: int, vocab: Vocab):
    """Token ids `<cls> A <sep> B <sep> <pad>...` (N, max_len), segment ids and valid lengths.
    The specials are the tokenizer's own (`[CLS]` ... for WordPiece).

    Explained in notebooks/02_tokens_segments_nsp.ipynb.
    """
    la = corpus.lengths[pairs.a][:, None]  # (N, 1)
    lb = corpus.lengths[pairs.b][:, None]
    j = np.arange(max_len)[None, :]        # (1, T) position in the example
    # Which corpus token sits at position j: A fills 1..la, B fills la+2..la+lb+1.
    source = np.where(j <= la, corpus.starts[pairs.a][:, None] + j - 1,
                      corpus.starts[pairs.b][:, None] + j - la - 2)  # (N, T)
    tokens = corpus.ids[np.clip(source, 0, len(corpus.ids) - 1)]
    rows = np.arange(len(la))[:, None]
    tokens[:, 0] = token_id(vocab, vocab.cls_token)
    tokens[rows, la + 1] = tokens[rows, la + lb + 2] = token_id(vocab, vocab.sep_token)
    tokens[j > la + lb + 2] = token_id(vocab, vocab.pad_token)
    segments = ((j >= la + 2) & (j <= la + lb + 2)).astype(np.int64)  # 1 on B and its <sep>
    return tokens, segments, (la + lb + 3)[:, 0]


class PretrainDataset(torch.utils.data.Dataset):
    """BERT pre-training examples (masked LM + next sentence) from an encoded `Corpus`.

    Masks are drawn once (`dynamic_masking=False`, the book's static masking) or afresh for every
    epoch (`dynamic_masking=True`, as in RoBERTa; the trainer calls `set_epoch`). Pairs are drawn
    once, as in the book, or also afresh for every epoch (`dynamic_pairs=True`, which needs
    dynamic masking), so that a "not next" partner is not seen again epoch after epoch.
    Each item is a dict of the seven tensors named in `BATCH_KEYS`.
    `pair_task="sop"` asks for sentence order instead of the next sentence, and `masking` names
    a strategy of `bertlite.masking.MASKING` (notebooks/07_masking_strategies.ipynb).
    Explained in notebooks/03_masking.ipynb.
    """

    def __init__(self, corpus: Corpus, vocab: Vocab, max_len: int = 64, seed: int = 0,
                 dynamic_masking: bool = False, *, dynamic_pairs: bool = False,
                 pair_task: str = "nsp", masking: str = "token", **mask_options):
        if max_len < 5:
            raise ValueError(f"max_len={max_len} is too small: a pair needs <cls> a <sep> b <sep>")
        if pair_task not in PAIR_TASKS:
            raise ValueError(f"unknown pair_task {pair_task!r}; choose one of {list(PAIR_TASKS)}")
        if masking not in MASKING:
            raise ValueError(f"unknown masking {masking!r}; choose one of {list(MASKING)}")
        if dynamic_pairs and not dynamic_masking:
            raise ValueError("dynamic_pairs=True needs dynamic_masking=True: new pairs need new masks")
        self.vocab, self.max_len, self.seed, self.dynamic = vocab, max_len, seed, dynamic_masking
        self.corpus, self.dynamic_pairs = corpus, dynamic_pairs
        self.pair_task, self.masking, self.mask_options = pair_task, masking, mask_options
        self.epoch = None  # the epoch whose pairs and masks the arrays hold
        self.set_epoch(0)
        if len(self) == 0:
            a = corpus.with_successor()
            if len(a) == 0:
                raise ValueError("no paragraph has two sentences: a sentence pair needs a sentence "
                                 "and its successor")
            shortest = int((corpus.lengths[a] + corpus.lengths[a + 1]).min()) + 3
            raise ValueError(f"max_len={max_len} leaves no sentence pair; raise it to at least "
                             f"{shortest} (the shortest sentence and its successor, with <cls> and "
                             f"two <sep>; a typical pair needs about "
                             f"{int(2 * np.median(corpus.lengths)) + 3})")

    @classmethod
    def from_paragraphs(cls, paragraphs, max_len: int = 64, vocab: Vocab | None = None,
                        min_freq: int = 5, **options) -> "PretrainDataset":
        """From paragraphs of sentences of tokens, building the vocabulary unless one is given."""
        vocab = vocab or Vocab(chain.from_iterable(paragraphs), min_freq=min_freq)
        return cls(Corpus.encode(paragraphs, vocab), vocab, max_len, **options)

    def set_epoch(self, epoch: int) -> None:
        """Draw the pairs (once, or every epoch) and masks (once, or every epoch) of this epoch."""
        if epoch == self.epoch or (self.epoch is not None and not self.dynamic):
            return  # drawn already (the trainer asks for epoch 0 again); static: drawn in __init__
        if self.dynamic_pairs or self.epoch is None:
            draw = (DYNAMIC_PAIR_TASKS if self.dynamic_pairs else PAIR_TASKS)[self.pair_task]
            seed = [self.seed, 0, epoch] if self.dynamic_pairs else [self.seed, 0]
            pairs = draw(self.corpus, self.max_len, np.random.default_rng(seed))
            self.tokens, self.segments, self.valid_lens = build_inputs(
                self.corpus, pairs, self.max_len, self.vocab)
            self.nsp_labels = pairs.is_next
        rng = np.random.default_rng([self.seed, 1, epoch if self.dynamic else 0])
        starts = None if self.masking == "token" else find_word_starts(self.tokens, self.vocab)
        masked = mask(self.masking, self.tokens, self.valid_lens, self.vocab, rng, starts,
                      **self.mask_options)
        arrays = {**masked, "segments": self.segments, "valid_lens": self.valid_lens,
                  "nsp_labels": self.nsp_labels}
        self.arrays = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in BATCH_KEYS}
        self.epoch = epoch

    def __len__(self):
        return len(self.nsp_labels)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def default_min_freq(name: str) -> int:
    """The book's 5 for WikiText-2; 2 for the small shipped corpus (5 would leave 17% `<unk>`)."""
    return 2 if name == SHIPPED else 5


TOKENIZERS = ("word", "wordpiece")


def _require_vocab_file(path) -> None:
    if not Path(path).is_file():
        what = "a folder; give its vocab.txt" if Path(path).is_dir() else "no such file"
        raise FileNotFoundError(f"--vocab-file {path}: {what}")


def _word_vocab_file(path) -> Vocab:
    """A word vocabulary written by `Vocab.save` (a run's or a saved model's vocab.txt)."""
    _require_vocab_file(path)
    if not is_word_vocab_file(path):
        raise ValueError(f"--vocab-file {path} is not a bertlite word vocabulary (its first line "
                         "is not <pad>); for a BERT vocab.txt add --tokenizer wordpiece")
    return Vocab.load(path)


def make_tokenizer(text: str, tokenizer: str = "word", vocab_size: int | None = None,
                   vocab_file=None):
    """The tokenizer a data pipeline asks for. WordPiece: trained on `text` with `vocab_size`
    pieces, or read from `vocab_file` (a BERT vocab.txt; casing from a tokenizer_config.json
    beside it, else uncased). Word: the word vocabulary in `vocab_file` (another run's, so
    that two models share one vocabulary), or None: the word vocabulary is then counted while
    the corpus is built. Errors name the command-line flag.
    (No notebook shows it yet; notebooks/07_masking_strategies.ipynb explains WordPiece.)
    """
    from .checks import ConfigError
    from .wordpiece import WordPieceTokenizer, train_wordpiece
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"--tokenizer must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    if tokenizer == "word":
        if vocab_size is not None:
            raise ConfigError("--vocab-size is for --tokenizer wordpiece (a word vocabulary "
                              "keeps the words seen --min-freq times)")
        return None if vocab_file is None else _word_vocab_file(vocab_file)
    if (vocab_size is None) == (vocab_file is None):
        raise ConfigError("--tokenizer wordpiece needs one of --vocab-size N (train a vocabulary) "
                          "or --vocab-file F (a vocab.txt)"
                          + (", not both: drop one" if vocab_file is not None else ""))
    if vocab_file is not None:
        _require_vocab_file(vocab_file)
        try:
            return WordPieceTokenizer.from_vocab_file(vocab_file)
        except ValueError as e:  # a file that is not a BERT vocab.txt: say which file
            raise ValueError(f"--vocab-file {vocab_file}: {e}") from None
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"--vocab-size must be a positive integer, got {vocab_size!r}")
    try:
        tokenizer = train_wordpiece(text, vocab_size)
    except ValueError as e:  # below the specials and characters of the text
        raise ConfigError(f"--vocab-size: {e}") from None
    if len(tokenizer) < vocab_size:  # training stops when no pair is seen twice any more
        warnings.warn(f"--vocab-size {vocab_size}: this corpus gives only {len(tokenizer)} "
                      "WordPiece tokens (no pair of pieces is seen twice more); the vocabulary "
                      f"has {len(tokenizer)}")
    return tokenizer


def load_pretrain_dataset(max_len: int = 64, name: str = SHIPPED, split: str = "train",
                          data_dir=None, vocab=None, min_freq: int | None = None,
                          seed: int = 0, dynamic_masking: bool = False, download: bool = False,
                          *, dynamic_pairs: bool = False, pair_task: str = "nsp",
                          masking: str = "token",
                          tokenizer: str = "word", vocab_size: int | None = None,
                          vocab_file=None, **mask_options) -> PretrainDataset:
    """Read a WikiText split and build its pre-training examples (the fast path).

    Pass the training vocabulary as `vocab` when loading the validation split: a `Vocab` or a
    WordPiece tokenizer, which then decides the tokenizer (`tokenizer`, `vocab_size` and
    `vocab_file` are ignored). Without one, `tokenizer="word"` counts a word vocabulary and
    `tokenizer="wordpiece"` trains one of `vocab_size` pieces on this split or reads
    `vocab_file` (`make_tokenizer`). `pair_task` and `masking` choose the objectives, and
    `dynamic_masking` / `dynamic_pairs` how often they are drawn (see `PretrainDataset`).
    Explained in notebooks/03_masking.ipynb.
    """
    text = read_text(name, split, data_dir, download)
    if vocab is None:
        vocab = make_tokenizer(text, tokenizer, vocab_size, vocab_file)
    corpus, vocab = Corpus.from_text(text, vocab, min_freq or default_min_freq(name))
    if len(corpus.lengths) == 0:
        raise ValueError(f"{name}/{split} has no paragraph of two or more sentences: is it a "
                         "WikiText file (one paragraph per line, sentences ending in ' . ')?")
    return PretrainDataset(corpus, vocab, max_len, seed, dynamic_masking,
                           dynamic_pairs=dynamic_pairs, pair_task=pair_task, masking=masking,
                           **mask_options)


def load_data_wiki(batch_size: int, max_len: int = 64, shuffle: bool = True, num_workers: int = 0,
                   **options):
    """A seeded `DataLoader` of pre-training batches and its vocabulary, as in the book.

    `options` go to `load_pretrain_dataset` (name, split, data_dir, vocab, min_freq, seed, ...).
    Explained in notebooks/03_masking.ipynb.
    """
    dataset = load_pretrain_dataset(max_len, **options)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size, shuffle=shuffle, num_workers=num_workers,
        generator=torch.Generator().manual_seed(options.get("seed", 0)))
    return loader, dataset.vocab
