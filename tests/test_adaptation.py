"""Domain adaptation (ULMFiT's stage 2): continuing pre-training from a saved model, the
validation before its first step, the unigram baseline printed beside it, and a word
vocabulary shared between runs (`--tokenizer word --vocab-file`)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bertlite.baselines import unigram, unigram_scores
from bertlite.checks import ConfigError
from bertlite.cli import main
from bertlite.data import load_pretrain_dataset, make_tokenizer
from bertlite.train import evaluate, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "data/pretrained/tinywiki-d2l")
FAST = ["--batch-size", "8", "--no-progress", "--warmup-steps", "0"]


def test_unigram_scores_by_hand():
    train = load_pretrain_dataset(64, seed=0)
    valid = load_pretrain_dataset(64, split="valid", vocab=train.vocab, seed=0)
    counts, p = unigram(train, train.vocab)
    assert p.sum() == pytest.approx(1) and (p[train.vocab.specials] == 0).all()
    real = train.tokens[np.arange(64) < train.valid_lens[:, None]]
    word = train.vocab.encode(["the"])[0]
    assert counts[word] == (real == word).sum()
    assert p[word] == pytest.approx((counts[word] + 1) / (counts.sum() + len(counts) - 5))
    labels, weights = valid.arrays["mlm_labels"].numpy(), valid.arrays["mlm_weights"].numpy()
    picked = labels[weights > 0]
    u = unigram_scores(train, valid)
    assert u["mlm_loss"] == pytest.approx(-np.log(p[picked]).mean())
    assert u["perplexity"] == pytest.approx(math.exp(u["mlm_loss"]))
    assert u["mlm_acc"] == pytest.approx((picked == counts.argmax()).mean())


def test_init_from_validates_before_the_first_step(tmp_path, capsys):
    run = tmp_path / "adapt"
    main(["pretrain", "--init-from", TINY, "--run-dir", str(run), "--steps", "3",
          "--eval-every", "0", *FAST])
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["step"] == 0 and "eval" in first  # the shipped model, before any step
    net, vocab = load_pretrained(TINY)
    valid = load_pretrain_dataset(64, split="valid", vocab=vocab, seed=0)
    assert first["eval"]["mlm_loss"] == pytest.approx(evaluate(net, valid)["mlm_loss"], rel=1e-5)
    assert f"validation before training: MLM loss {first['eval']['mlm_loss']:.3f}" in out
    assert "unigram model (training-split word counts): MLM loss" in out
    main(["pretrain", "--resume", str(run), "--steps", "4", "--no-progress"])  # no second step 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" in r] == [0, 3, 4]


def test_a_fresh_run_prints_the_unigram_baseline_and_no_before(tmp_path, capsys):
    main(["pretrain", "--run-dir", str(tmp_path / "r"), "--steps", "2", "--eval-every", "0",
          "--hidden", "16", "--ffn-hidden", "32", "--heads", "2", "--layers", "1", *FAST])
    out = capsys.readouterr().out
    assert "unigram model" in out and "before training" not in out


def test_two_runs_can_share_one_word_vocabulary(tmp_path):
    """`--tokenizer word --vocab-file` trains on another model's words: both models then see
    the same validation tokens and masks, so their perplexities compare."""
    vocab_file = Path(TINY) / "vocab.txt"
    run = tmp_path / "shared"
    main(["pretrain", "--run-dir", str(run), "--vocab-file", str(vocab_file), "--steps", "1",
          "--eval-every", "0", "--hidden", "16", "--ffn-hidden", "32", "--heads", "2",
          "--layers", "1", *FAST])
    assert (run / "vocab.txt").read_text() == vocab_file.read_text()
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["tokenizer"] == "word" and config["data"]["vocab_file"] == str(vocab_file)
    main(["pretrain", "--resume", str(run), "--steps", "2", "--no-progress"])
    _, vocab = load_pretrained(TINY)
    ours = load_pretrain_dataset(64, split="valid", tokenizer="word", vocab_file=vocab_file, seed=0)
    theirs = load_pretrain_dataset(64, split="valid", vocab=vocab, seed=0)
    assert (ours.arrays["tokens"] == theirs.arrays["tokens"]).all()


def test_a_word_vocab_file_that_is_wrong_is_named(tmp_path):
    bert_vocab = tmp_path / "vocab.txt"
    bert_vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    with pytest.raises(ValueError, match="--tokenizer wordpiece") as e:
        make_tokenizer("a b .", "word", vocab_file=bert_vocab)
    assert "\n" not in str(e.value) and str(bert_vocab) in str(e.value)
    with pytest.raises(FileNotFoundError, match="--vocab-file"):
        make_tokenizer("a b .", "word", vocab_file=tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="--vocab-size"):
        make_tokenizer("a b .", "word", vocab_size=100)


def test_the_shipped_payoff_results_hold_what_notebook_11_reads():
    """data/results/finetune_payoff.json (benchmarks/finetune_payoff.py): every part notebook 11
    plots, with its command, and three seeds per fine-tuned row."""
    results = json.loads((ROOT / "data/results/finetune_payoff.json").read_text())
    assert {"perplexity", "table", "probe", "few_labels", "sweep", "pair_tasks"} <= set(results["commands"])
    ppl = results["perplexity"]
    for name in ("WikiText-2 (before adaptation)", "WikiText-2 + adaptation", "tinywiki only"):
        assert ppl[name]["perplexity"] < ppl["unigram"]["perplexity"]
    table = results["table"]
    for start in ("random", "tinywiki only", "WikiText-2", "WikiText-2 + adaptation", "all-MiniLM-L6-v2"):
        for recipe in ("plain", "ULMFiT"):
            row = table[f"{start}, {recipe}"]
            assert len(row["per_seed"]) == 3 and 0 <= row["mean"] <= 1
    few = results["few_labels"]
    assert few["per_class"] == [2, 5, 10, 20]
    assert all(len(curve) == 4 for curve in few["curves"].values())
    assert set(results["pair_tasks"]) == {"nsp", "sop"}


def test_the_readme_quotes_the_payoff_results():
    """The README's domain-adaptation table and perplexities are the JSON's figures, so a new
    measurement cannot leave old numbers in the prose."""
    results = json.loads((ROOT / "data/results/finetune_payoff.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for start in ("random", "tinywiki only", "WikiText-2", "WikiText-2 + adaptation"):
        for recipe in ("plain", "ULMFiT"):
            row = results["table"][f"{start}, {recipe}"]
            assert f"{row['mean']:.3f} ± {row['sd']:.3f}" in readme, (start, recipe)
        assert f"{results['probe'][start]:.3f}" in readme, start
    ppl = results["perplexity"]
    for name in ("WikiText-2 (before adaptation)", "WikiText-2 + adaptation", "tinywiki only", "unigram"):
        assert f"{ppl[name]['perplexity']:.1f}" in readme, name


def test_the_readme_quotes_the_fine_tuning_benchmarks():
    """The README's figures from finetune_topics.json (notebook 9) and finetune_real.json
    (notebook 10) are the stored ones."""
    import statistics
    readme = (ROOT / "README.md").read_text()
    topics = json.loads((ROOT / "data/results/finetune_topics.json").read_text())
    for r in topics["rows"]:
        if r["pooling"] == "mean" and r["recipe"] == "plain":
            figure = f"{statistics.mean(r['test']):.3f} ± {statistics.stdev(r['test']):.3f}"
            assert figure in readme, (r["encoder"], figure)
    real = json.loads((ROOT / "data/results/finetune_real.json").read_text())
    for name, r in real["rows"].items():
        assert f"{r['mean']:.3f} ± {r['sd']:.3f}" in readme, name
