"""Fine-tuning: the topic task's data, the classifier, the ULMFiT schedules (against values
worked out by hand), gradual unfreezing, per-group learning rates, learning and seeding."""
import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  the first optimizer imports it (seconds): pay that here, once

from bertlite.finetune import (BERTClassifier, FinetuneConfig, TopicDataset, discriminative_lrs,
                               evaluate_classifier, finetune, group_lrs, layer_groups,
                               load_topic_dataset, make_group_optimizer, read_articles,
                               set_trainable, stlr, unfrozen_groups)
from bertlite.model import BERTConfig, BERTModel
from bertlite.train import TrainConfig
from bertlite.vocab import Vocab

TOY = """ = Alpha = 
 
 the cat sat on the mat . the dog ran . 
 
 = = Section = = 
 a cat and a dog met . 
 = Beta = 
 numbers add up . sums are big . and more words follow here to be cut . 
"""
TABLE = "title\tcategory\tsplit\nAlpha\tanimals\ttrain\nBeta\tmaths\ttrain\n"


def tiny_classifier(vocab_size=30, classes=2, layers=2, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    bert = BERTModel(BERTConfig(vocab_size=vocab_size, hidden=16, ffn_hidden=32, heads=2,
                                layers=layers, dropout=dropout, max_len=16))
    return BERTClassifier(bert, classes, dropout=dropout, seed=seed)


def easy_task(n=64, T=12, seed=0):
    """Label 0: every token from ids 5-16; label 1: from ids 17-29 (a bag of words decides)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    tokens = np.where(labels[:, None] == 0, rng.integers(5, 17, (n, T)), rng.integers(17, 30, (n, T)))
    tokens[:, 0], tokens[:, -1] = 2, 3  # <cls> ... <sep>
    return TopicDataset(tokens.astype(np.int64), np.full(n, T, np.int64), labels.astype(np.int64),
                        ["low", "high"], ["synthetic"] * n)


@pytest.fixture
def toy_dir(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "wiki.train.tokens").write_text(" \n" + TOY)
    (tmp_path / "toy" / "categories.tsv").write_text(TABLE)
    return tmp_path


def test_read_articles_splits_at_titles_not_sections(toy_dir):
    articles = read_articles("toy", "train", toy_dir)
    assert [t for t, _ in articles] == ["Alpha", "Beta"]
    alpha = articles[0][1]
    assert alpha == [[["the", "cat", "sat", "on", "the", "mat", "."], ["the", "dog", "ran", "."]],
                     [["a", "cat", "and", "a", "dog", "met", "."]]]  # one-sentence paragraphs stay
    assert len(articles[1][1]) == 1


def test_shipped_articles_all_have_a_category_in_their_split():
    for split, n in (("train", 36), ("valid", 6), ("test", 6)):
        assert len(read_articles(split=split)) == n
    vocab = Vocab(["cat"])
    data = {s: load_topic_dataset(s, vocab) for s in ("train", "valid", "test")}
    assert data["train"].categories == ["nature", "science", "history", "sport", "technology", "arts"]
    assert [len(d) for d in data.values()] == [465, 51, 51]
    assert set(data["train"].titles).isdisjoint(data["test"].titles)
    assert torch.bincount(data["test"].arrays["label"], minlength=6).min() > 0


def test_topic_examples_are_one_truncated_segment(toy_dir):
    vocab = Vocab("numbers add up . sums are big the cat".split())
    ds = load_topic_dataset("train", vocab, max_len=8, name="toy", data_dir=toy_dir)
    assert len(ds) == 3 and ds.arrays["label"].tolist() == [0, 0, 1]
    assert ds.categories == ["animals", "maths"]
    ex = ds[2]
    assert ex["tokens"].shape == (8,) and ex["segments"].tolist() == [0] * 8
    assert vocab.to_tokens(ex["tokens"].tolist()) == [
        "<cls>", "numbers", "add", "up", ".", "sums", "are", "<sep>"]
    short = ds[1]  # 7 words + 2 specials = 9 > 8: truncated too; a shorter one is padded
    assert short["valid_lens"].item() == 8
    ds = load_topic_dataset("train", vocab, max_len=16, name="toy", data_dir=toy_dir)
    assert ds[1]["valid_lens"].item() == 9 and ds[1]["tokens"][9:].tolist() == [0] * 7
    assert vocab.to_tokens(ds[1]["tokens"][8].item()) == "<sep>"


def test_articles_missing_from_the_table_are_an_error(toy_dir):
    (toy_dir / "toy" / "categories.tsv").write_text("title\tcategory\tsplit\nAlpha\tanimals\ttrain\n")
    with pytest.raises(ValueError, match="Beta.*categories.tsv"):
        load_topic_dataset("train", Vocab(), name="toy", data_dir=toy_dir)
    (toy_dir / "toy" / "categories.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="title, category, split"):
        load_topic_dataset("train", Vocab(), name="toy", data_dir=toy_dir)


def test_classifier_gives_logits_per_class_and_a_seeded_head():
    net = tiny_classifier(classes=3)
    tokens = torch.randint(5, 30, (4, 10), generator=torch.Generator().manual_seed(0))
    assert net(tokens, torch.zeros_like(tokens), torch.tensor([10, 9, 5, 3])).shape == (4, 3)
    same = BERTClassifier(net.bert, 3, seed=0)
    assert torch.equal(same.head.weight, net.head.weight)
    assert not torch.equal(BERTClassifier(net.bert, 3, seed=1).head.weight, net.head.weight)
    with pytest.raises(ValueError, match="at least 2"):
        BERTClassifier(net.bert, 1)
    with pytest.raises(ValueError, match="pooling"):
        BERTClassifier(net.bert, 3, pooling="max")


def test_mean_pooling_averages_the_real_tokens_only():
    net = tiny_classifier(classes=3).eval()
    mean = BERTClassifier(net.bert, 3, pooling="mean").eval()
    tokens = torch.randint(5, 30, (2, 10), generator=torch.Generator().manual_seed(0))
    valid_lens = torch.tensor([10, 6])
    other = tokens.clone()
    other[1, 6:] = 0  # different padding
    with torch.no_grad():
        logits = mean(tokens, None, valid_lens)
        assert torch.allclose(logits, mean(other, None, valid_lens), atol=1e-6)
        encoded = net.bert.encode(tokens, None, valid_lens)  # (B, T, H)
        expected = mean.head(torch.stack([encoded[0].mean(0), encoded[1, :6].mean(0)]))
        assert torch.allclose(logits, expected, atol=1e-6)
        assert torch.allclose(mean(tokens[:1]), logits[:1], atol=1e-6)  # no valid_lens: all real


def test_stlr_matches_the_paper_by_hand():
    # T=100, cut_frac=0.1: cut=10; lr = 0.01 * (1 + p * 31) / 32
    assert stlr(0, 100, 0.01) == pytest.approx(0.01 / 32)
    assert stlr(5, 100, 0.01) == pytest.approx(0.01 * 16.5 / 32)     # p = 0.5 going up
    assert stlr(10, 100, 0.01) == pytest.approx(0.01)                # the peak
    assert stlr(55, 100, 0.01) == pytest.approx(0.01 * 16.5 / 32)    # p = 1 - 45/90 = 0.5
    assert stlr(100, 100, 0.01) == pytest.approx(0.01 / 32)
    assert stlr(3, 4, 1.0, cut_frac=0.1, ratio=1) == 1.0              # ratio 1: constant
    rates = [stlr(t, 37, 1.0) for t in range(38)]  # cut = 3: up 3 steps, down 34
    assert np.argmax(rates) == 3 and min(rates) == pytest.approx(1 / 32)
    with pytest.raises(ValueError, match="cut_frac"):
        stlr(0, 10, 1.0, cut_frac=1.5)


def test_discriminative_rates_and_layer_groups():
    assert discriminative_lrs(0.01, 4) == pytest.approx([0.01, 0.01 / 2.6, 0.01 / 2.6**2, 0.01 / 2.6**3])
    assert discriminative_lrs(0.01, 4)[3] == pytest.approx(5.6896e-4, rel=1e-4)
    net = tiny_classifier(layers=3)
    groups = layer_groups(net)
    assert list(groups) == ["head", "block 2", "block 1", "block 0", "embeddings"]
    assert set(groups["head"]) == {"head.weight", "head.bias", "bert.pooler.weight", "bert.pooler.bias"}
    assert all(n.startswith("bert.blocks.1.") for n in groups["block 1"])
    grouped = {n for g in groups.values() for n in g}
    rest = {n for n, _ in net.named_parameters()} - grouped
    assert rest and all(n.startswith(("bert.mlm.", "bert.nsp.")) for n in rest)  # unused heads


@pytest.mark.parametrize("kind", ["adam", "adamw"])
def test_group_optimizer_keeps_the_trainers_choices(kind):
    net = tiny_classifier()
    groups = layer_groups(net)
    opt = make_group_optimizer(groups, TrainConfig(optimizer=kind, weight_decay=0.1))
    assert type(opt) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    names = {id(p): n for n, p in net.named_parameters()}
    for g in opt.param_groups:
        for p in g["params"]:
            name = names[id(p)]
            assert name in list(groups.values())[g["depth"]]
            if kind == "adamw":  # bertlite.train's rule: decay on weight matrices only
                assert g["weight_decay"] == (0.1 if p.dim() == 2 and "embeddings" not in name else 0.0)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(len(g) for g in groups.values())


def test_group_rates_combine_schedule_and_depth():
    cfg = TrainConfig(steps=100, lr=0.01)
    assert group_lrs(0, 3, cfg, FinetuneConfig()) == [0.01] * 3
    ulm = FinetuneConfig(discriminative=True, slanted=True)
    assert group_lrs(10, 3, cfg, ulm) == pytest.approx([0.01, 0.01 / 2.6, 0.01 / 2.6**2])
    assert group_lrs(0, 2, cfg, ulm) == pytest.approx([0.01 / 32, 0.01 / 32 / 2.6])
    linear = TrainConfig(steps=100, lr=1.0, schedule="linear", warmup_steps=10)
    halves = FinetuneConfig(discriminative=True, factor=2)
    assert group_lrs(55, 2, linear, halves) == pytest.approx([0.5, 0.25])


def test_gradual_unfreezing_per_epoch():
    assert [unfrozen_groups(e, 4) for e in range(6)] == [1, 2, 3, 4, 4, 4]
    assert unfrozen_groups(0, 4, gradual=False) == 4
    net = tiny_classifier()
    groups = layer_groups(net)
    for epoch in range(4):
        set_trainable(groups, unfrozen_groups(epoch, len(groups)))
        trainable = {n for n, p in net.named_parameters()
                     if p.requires_grad and not n.startswith(("bert.mlm", "bert.nsp"))}
        assert trainable == {n for g in list(groups.values())[:epoch + 1] for n in g}


def test_frozen_groups_do_not_move_and_unfreeze_on_schedule():
    net = tiny_classifier()  # groups: head, block 1, block 0, embeddings
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = TrainConfig(steps=8, batch_size=8, lr=1e-2, optimizer="adamw")
    history = finetune(net, easy_task(32), cfg, ft=FinetuneConfig(gradual_unfreezing=True))
    assert [r["trainable"] for r in history if "eval" not in r] == [1] * 4 + [2] * 4  # 2 epochs
    groups = layer_groups(net)
    for name, params in groups.items():
        moved = any(not torch.equal(before[n], p) for n, p in params.items())
        assert moved == (name in ("head", "block 1")), name
    assert all(p.requires_grad for p in net.parameters())  # all trainable again afterwards
    history = finetune(tiny_classifier(), easy_task(32), cfg,
                       ft=FinetuneConfig(gradual_unfreezing=True, unfreeze_every=2))
    assert [r["trainable"] for r in history] == [1, 1, 2, 2, 3, 3, 4, 4]


def test_each_group_steps_at_its_own_rate():
    """Adam's first step moves every weight with a gradient by about its group's rate."""
    net = tiny_classifier()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    cfg = TrainConfig(steps=1, batch_size=32, lr=1e-2)
    ft = FinetuneConfig(discriminative=True, factor=4.0)
    history = finetune(net, easy_task(32), cfg, ft=ft)
    assert history[0]["lrs"] == pytest.approx([1e-2, 2.5e-3, 6.25e-4, 1.5625e-4])
    for lr, params in zip(history[0]["lrs"], layer_groups(net).values()):
        step = max((p.detach() - before[n]).abs().max().item() for n, p in params.items())
        assert step == pytest.approx(lr, rel=1e-2)


@pytest.mark.parametrize("lr, ft", [
    (1e-2, FinetuneConfig()),
    (3e-2, FinetuneConfig(discriminative=True, slanted=True, gradual_unfreezing=True))],
    ids=["plain", "ulmfit"])
def test_finetuning_learns_an_easy_task_and_evaluates(lr, ft):
    net = tiny_classifier()
    train, val = easy_task(64, seed=0), easy_task(64, seed=1)
    start = evaluate_classifier(net, val)
    cfg = TrainConfig(steps=30, batch_size=16, lr=lr, eval_every=10)
    history = finetune(net, train, cfg, val_data=val, ft=ft)
    steps = [r for r in history if "eval" not in r]
    evals = [r["eval"] for r in history if "eval" in r]
    assert len(steps) == 30 and len(evals) == 3 and set(steps[0]) >= {"loss", "acc", "lrs"}
    assert evals[-1]["loss"] < start["loss"] / 5 and evals[-1]["acc"] >= 0.95
    assert net.training
    net.eval()
    with torch.no_grad():
        logits = net(val.arrays["tokens"], val.arrays["segments"], val.arrays["valid_lens"])
    acc = (logits.argmax(-1) == val.arrays["label"]).float().mean().item()
    assert evaluate_classifier(net, val, batch_size=7)["acc"] == pytest.approx(acc)
    assert not net.training  # evaluate_classifier leaves the mode as it found it


def test_same_seed_same_result():
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-2, seed=3)
    runs = []
    for seed in (3, 3, 4):
        net = tiny_classifier(dropout=0.1)
        history = finetune(net, easy_task(32), TrainConfig(**{**cfg.__dict__, "seed": seed}))
        runs.append(([r["loss"] for r in history], net.head.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0]
    validated = finetune(tiny_classifier(dropout=0.1), easy_task(32),
                         TrainConfig(**{**cfg.__dict__, "eval_every": 2}), val_data=easy_task(16))
    assert [r["loss"] for r in validated if "eval" not in r] == runs[0][0]  # validating changes nothing
