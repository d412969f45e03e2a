"""Masking strategies (token, whole word, n-gram, span), sentence-order pairs, and their options in
the dataset and the command line. Statistical checks use binomial tolerances over many draws."""
import json
import math

import numpy as np
import pytest
import torch

import bertlite
import bertlite.plot
import bertlite.train
from bertlite.cli import main
from bertlite.data import Corpus, mask_tokens, sentence_order_pairs
from bertlite.masking import (MASKING, choose_spans, find_word_starts, geometric_probs, mask,
                              ngram_probs)
from bertlite.vocab import Vocab
from bertlite.wikitext import read_text

STRATEGIES = list(MASKING)
WORD_LEVEL = ["whole_word", "ngram", "span"]
SMALL = ["--hidden", "32", "--ffn-hidden", "64", "--heads", "2", "--layers", "1",
         "--batch-size", "32", "--no-progress", "--eval-every", "0"]


def within(observed, n, p, sigmas=5):
    """`observed` successes out of `n` are within `sigmas` binomial standard deviations of n*p."""
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def wordpiece_rows(n=600, t=64, seed=0):
    """Pairs `<cls> A <sep> B <sep> <pad>...` of WordPiece-like words: a stem and 0-2 "##"
    pieces (so about 1.6 pieces a word), with an occasional `<unk>` word."""
    vocab = Vocab([f"w{i}" for i in range(40)] + [f"##p{i}" for i in range(20)])
    stems = [vocab[f"w{i}"] for i in range(40)] + [vocab["<unk>"]] * 2
    rng = np.random.default_rng(seed)
    tokens = np.full((n, t), vocab["<pad>"])
    valid = np.zeros(n, np.int64)
    for r in range(n):
        row = [vocab["<cls>"]]
        limit = rng.integers(20, t - 3)
        for part in range(2):
            while len(row) < limit * (part + 1) / 2:
                row += [stems[rng.integers(len(stems))]]
                row += [vocab[f"##p{i}"] for i in rng.integers(0, 20, rng.choice(3, p=[0.6, 0.25, 0.15]))]
            row.append(vocab["<sep>"])
        row = row[:t - 1] + [vocab["<sep>"]] if len(row) > t else row
        tokens[r, :len(row)], valid[r] = row, len(row)
    return tokens, valid, vocab


@pytest.fixture(scope="module")
def wordpiece():
    return wordpiece_rows()


@pytest.fixture(scope="module", params=["tinywiki", "wordpiece"])
def rows(request, tiny, wordpiece):
    if request.param == "tinywiki":
        return tiny.tokens, tiny.valid_lens, tiny.vocab, request.param
    return (*wordpiece, request.param)


def budgets(tokens, valid, vocab, max_preds=None):
    """Each row's number of predictions under `mask_tokens`' rule (15% of the maskable, >= 1)."""
    maskable = (np.arange(tokens.shape[1]) < valid[:, None]) & ~np.isin(tokens, vocab.specials)
    n = maskable.sum(1)
    cap = round(0.15 * tokens.shape[1]) if max_preds is None else max_preds
    return np.minimum(np.minimum(np.maximum(1, np.round(0.15 * n)), n), cap), maskable


def words_of(tokens, vocab, maskable):
    """(N, T) number of the word each maskable position belongs to (-1 elsewhere)."""
    starts = find_word_starts(tokens, vocab) | ~np.c_[np.zeros(len(tokens), bool), maskable[:, :-1]]
    return np.where(maskable, np.cumsum(starts & maskable, 1) - 1, -1)


def check_outputs(out, tokens, valid, vocab):
    """The invariants every strategy shares with `mask_tokens`; returns the (N, T) chosen mask."""
    real = out["mlm_weights"] > 0
    pos, lab = out["pred_positions"], out["mlm_labels"]
    rows = np.arange(len(tokens))[:, None]
    assert np.all(np.where(real, pos < valid[:, None], True))          # inside the valid length
    assert not np.isin(tokens[rows, pos][real], vocab.specials).any()  # specials never chosen
    assert np.array_equal(lab[real], tokens[rows, pos][real])          # labels are the originals
    assert np.all(lab[~real] == 0) and np.all(pos[~real] == 0)         # padding slots
    assert np.all(real[:, :-1] >= real[:, 1:])                          # real slots come first
    assert np.all(np.diff(pos, axis=1)[real[:, 1:]] > 0)               # sorted and distinct
    new = out["tokens"][rows, pos][real]
    assert not np.isin(new[new != vocab["<mask>"]], vocab.specials).any()  # random = ordinary
    chosen = np.zeros(tokens.shape, bool)
    chosen[rows, pos] |= real
    assert np.array_equal(out["tokens"][~chosen], tokens[~chosen])     # nothing else changes
    return chosen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rate_split_and_invariants(strategy, rows):
    """Over 20 draws: every invariant; the rate of `mask_tokens` (exactly its count per row where
    every word is one token); 80/10/10 per token, or per span for span masking."""
    tokens, valid, vocab, kind = rows
    budget, maskable = budgets(tokens, valid, vocab)
    counts, chosen_total, draws = np.zeros(3), 0, 20
    for seed in range(draws):
        out = mask(strategy, tokens, valid, vocab, np.random.default_rng(seed))
        chosen = check_outputs(out, tokens, valid, vocab)
        per_row = chosen.sum(1)
        assert np.all(per_row <= budget)
        if kind == "tinywiki" or strategy == "token":
            assert np.array_equal(per_row, budget)
        chosen_total += per_row.sum()
        new, old = out["tokens"][chosen], tokens[chosen]
        if strategy == "span":  # one decision per span: read each span's first token
            spans = choose_spans(tokens, valid, vocab, np.random.default_rng(seed),
                                 length_probs=geometric_probs())
            assert np.array_equal(spans > 0, chosen)  # span_mask chooses with choose_spans
            ids = spans[chosen] + np.repeat(np.arange(len(tokens)), per_row) * 10_000
            first = np.r_[True, ids[1:] != ids[:-1]]
            is_mask = new == vocab["<mask>"]
            span_of = np.cumsum(first) - 1
            assert np.array_equal(np.bincount(span_of, is_mask), np.bincount(span_of) * is_mask[first])
            new, old = new[first], old[first]
        is_mask, kept = new == vocab["<mask>"], new == old
        counts += [is_mask.sum(), (~is_mask & ~kept).sum(), kept.sum()]
    rate = chosen_total / (draws * maskable.sum())
    # Rounding 15% to whole tokens per row moves the rate by up to ~0.6 points on these rows;
    # on WordPiece rows a word that does not fit what is left of the budget is not started.
    assert abs(rate - 0.15) < 0.01, rate
    if kind == "wordpiece" and strategy != "token":
        assert chosen_total >= 0.99 * draws * budget.sum()  # measured: 0.99999
    # A random replacement can draw the original token (1 in 50-2,600): it then counts as kept.
    for observed, p in zip(counts, (0.8, 0.1, 0.1)):
        assert within(observed, counts.sum(), p), counts / counts.sum()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pure_seeded_and_token_is_mask_tokens(strategy, wordpiece):
    tokens, valid, vocab = wordpiece
    before = tokens.copy()
    a = mask(strategy, tokens, valid, vocab, np.random.default_rng(3))
    b = mask(strategy, tokens, valid, vocab, np.random.default_rng(3))
    c = mask(strategy, tokens, valid, vocab, np.random.default_rng(4))
    assert np.array_equal(tokens, before)  # the input is not changed
    assert all(np.array_equal(a[k], b[k]) for k in a) and not np.array_equal(a["tokens"], c["tokens"])
    if strategy == "token":
        assert MASKING["token"] is mask_tokens
        ref = mask_tokens(tokens, valid, vocab, np.random.default_rng(3))
        assert all(np.array_equal(a[k], ref[k]) for k in ref)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_whole_words_are_chosen_whole(strategy, wordpiece):
    """All pieces of a word are chosen, or none; token masking splits words (the contrast)."""
    tokens, valid, vocab = wordpiece
    _, maskable = budgets(tokens, valid, vocab)
    word = words_of(tokens, vocab, maskable)
    key = (np.arange(len(tokens))[:, None] * 1000 + word)[maskable]
    split = 0
    for seed in range(5):
        out = mask(strategy, tokens, valid, vocab, np.random.default_rng(seed))
        chosen = check_outputs(out, tokens, valid, vocab)
        _, inverse, size = np.unique(key, return_inverse=True, return_counts=True)
        picked = np.bincount(inverse, chosen[maskable])
        split += ((picked > 0) & (picked < size)).sum()
    assert split > 0 if strategy == "token" else split == 0


@pytest.mark.parametrize("probs, mean", [(geometric_probs(), 3.797), (ngram_probs(3), 18 / 11)],
                         ids=["span", "ngram"])
def test_span_lengths_follow_their_distribution(probs, mean):
    """Measured lengths of the placed spans on long rows (one token = one word): the mean is the
    distribution's (3.80 words for SpanBERT's, 18/11 for 1/n n-grams) within 4 standard errors,
    plus the most that cutting one span per row at the budget can take away."""
    k = np.arange(1, len(probs) + 1)
    assert probs.sum() == pytest.approx(1) and (k * probs).sum() == pytest.approx(mean, abs=1e-3)
    vocab = Vocab([f"w{i}" for i in range(50)])
    n, t = 24, 4096  # long rows: the budget (614 tokens) holds ~160 spans, one of them cut
    tokens = np.random.default_rng(0).integers(len(vocab.specials), len(vocab), (n, t))
    spans = choose_spans(tokens, np.full(n, t), vocab, np.random.default_rng(1), length_probs=probs)
    rows = np.nonzero(spans)[0]
    _, lengths = np.unique(rows * 100_000 + spans[spans > 0], return_counts=True)
    assert lengths.max() <= len(probs)
    sd = math.sqrt((k * k * probs).sum() - mean ** 2)
    tolerance = 4 * sd / math.sqrt(len(lengths)) + n * (len(probs) - 1) / len(lengths)
    assert abs(lengths.mean() - mean) <= tolerance, (lengths.mean(), mean, tolerance)


def test_budget_never_mask_and_bad_input(wordpiece):
    tokens, valid, vocab = wordpiece
    common = vocab["w0"]
    for strategy in STRATEGIES:
        out = mask(strategy, tokens, valid, vocab, np.random.default_rng(0), max_preds=3)
        assert out["pred_positions"].shape == (len(tokens), 3)
        assert out["mlm_weights"].sum(1).max() <= 3
        out = mask(strategy, tokens, valid, vocab, np.random.default_rng(0), never_mask=[common])
        assert not (out["mlm_labels"][out["mlm_weights"] > 0] == common).any()
    with pytest.raises(ValueError, match="whole_word"):
        mask("bogus", tokens, valid, vocab, np.random.default_rng(0))
    with pytest.raises(ValueError, match="word_starts"):
        mask("span", tokens, valid, vocab, np.random.default_rng(0), word_starts=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="length_probs"):
        choose_spans(tokens, valid, vocab, np.random.default_rng(0), length_probs=[0.5, 0.2])
    with pytest.raises(TypeError):
        mask("span", tokens, valid, vocab, np.random.default_rng(0), max_n=2)  # an n-gram option


def test_sentence_order_pairs():
    corpus, _ = Corpus.from_text(read_text(), min_freq=2)
    pairs = sentence_order_pairs(corpus, 64, np.random.default_rng(0))
    first = np.minimum(pairs.a, pairs.b)
    assert np.all(np.abs(pairs.a - pairs.b) == 1)  # two adjacent sentences,
    assert np.all(corpus.paragraph[pairs.a] == corpus.paragraph[pairs.b])  # of one paragraph,
    assert np.array_equal(pairs.is_next, (pairs.b == pairs.a + 1).astype(int))  # 0 = swapped
    assert np.all(corpus.lengths[pairs.a] + corpus.lengths[pairs.b] + 3 <= 64)
    fits = corpus.lengths[:-1] + corpus.lengths[1:] + 3 <= 64
    assert len(pairs.a) == (fits & (corpus.paragraph[:-1] == corpus.paragraph[1:])).sum()
    assert len(np.unique(first)) == len(first)  # each adjacent pair once
    assert within(pairs.is_next.sum(), len(pairs.a), 0.5)
    many = np.concatenate([sentence_order_pairs(corpus, 64, np.random.default_rng(s)).is_next
                           for s in range(20)])
    assert within(many.sum(), len(many), 0.5)


def test_dataset_options(tiny):
    default = bertlite.load_pretrain_dataset(64, pair_task="nsp", masking="token")
    assert all(np.array_equal(default.arrays[k], tiny.arrays[k]) for k in tiny.arrays)  # unchanged
    sop = bertlite.load_pretrain_dataset(64, pair_task="sop", masking="span", dynamic_masking=True)
    assert within(sop.nsp_labels.sum(), len(sop), 0.5)
    budget, _ = budgets(sop.tokens, sop.valid_lens, sop.vocab)
    assert np.array_equal(sop.arrays["mlm_weights"].sum(1), budget)  # the budget of mask_tokens
    before = sop.arrays["tokens"].clone()
    sop.set_epoch(1)
    assert not np.array_equal(sop.arrays["tokens"], before)  # dynamic: new spans each epoch
    ngram = bertlite.load_pretrain_dataset(64, masking="ngram", max_n=2)
    assert ngram.arrays["mlm_weights"].sum() == tiny.arrays["mlm_weights"].sum()
    with pytest.raises(ValueError, match="'nsp', 'sop'"):
        bertlite.load_pretrain_dataset(64, pair_task="order")
    with pytest.raises(ValueError, match="'token', 'whole_word', 'ngram', 'span'"):
        bertlite.load_pretrain_dataset(64, masking="words")


def test_cli_flags_reach_the_datasets_and_survive_resume(tmp_path, monkeypatch, capsys):
    """The flags go into config.json's "data" and from there into the training and validation
    datasets, also on --resume. Training itself is replaced by a stub: only the wiring is tested
    here (tests/test_train.py runs the real command)."""
    built = []

    def load(*args, **kwargs):
        built.append(real_load(*args, **kwargs))
        return built[-1]

    def train(net, train_data, cfg, val_data, run_dir, resume, progress, eval_first=False):
        # --resume reads the checkpoint (step, weights) before it builds any data: an empty one is refused
        torch.save({"model": net.state_dict(), "optimizer": {"param_groups": []}, "scaler": {},
                    "step": 1, "history": [], "torch_rng": torch.get_rng_state()},
                   run_dir / "checkpoint.pt")
        return [{"step": 1, "lr": cfg.lr, "pairs_per_s": 1.0, "seconds": 1.0,
                 **dict.fromkeys(("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"), 1.0)}]

    real_load = bertlite.data.load_pretrain_dataset
    monkeypatch.setattr(bertlite.data, "load_pretrain_dataset", load)
    monkeypatch.setattr(bertlite.train, "train_bert", train)
    monkeypatch.setattr(bertlite.plot, "plot_history", lambda history, path, **kwargs: None)
    run = tmp_path / "run"
    main(["pretrain", "--run-dir", str(run), "--pair-task", "sop", "--masking", "span",
          "--dynamic-pairs", *SMALL])
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["pair_task"] == "sop" and data["masking"] == "span"
    assert data["dynamic_pairs"] and data["dynamic_masking"]  # new pairs imply new masks
    main(["pretrain", "--resume", str(run), "--no-progress"])
    assert len(built) == 4 and "MLM loss" in capsys.readouterr().out
    train_sets, valid_sets = built[0::2], built[1::2]
    assert all(ds.pair_task == "sop" and ds.masking == "span" and ds.dynamic_pairs
               for ds in train_sets)
    assert not any(ds.dynamic_pairs for ds in valid_sets)  # fixed validation pairs
    # Validation keeps token masks so MLM losses compare across strategies; same pair task.
    assert all(ds.pair_task == "sop" and ds.masking == "token" for ds in valid_sets)
    main(["pretrain", "--run-dir", str(tmp_path / "plain"), *SMALL])
    assert (built[-2].pair_task, built[-2].masking) == ("nsp", "token")  # the defaults
    assert not built[-2].dynamic_pairs
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a usage error: exit status 2, one line on stderr
        main(["pretrain", "--dynamic-pairs", "--no-dynamic-masking", *SMALL])
    assert capsys.readouterr().err == ("error: --dynamic-pairs needs new masks every epoch: "
                                       "drop --no-dynamic-masking\n")
    with pytest.raises(SystemExit, match="--dynamic-pairs False \\(the run has True\\)"):
        main(["pretrain", "--resume", str(run), "--no-dynamic-pairs"])
    with pytest.raises(SystemExit):
        main(["pretrain", "--masking", "words", *SMALL])
