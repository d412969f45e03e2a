"""Fine-tuning: a classification head on the pooled `<cls>` state, the offline topic task, and
the ULMFiT techniques (Howard & Ruder 2018): discriminative and slanted triangular learning
rates, and gradual unfreezing. Each technique is optional (`FinetuneConfig`); all off is the
plain BERT recipe (every layer trained at one rate from `bertlite.train.get_lr`).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .loss import nsp_accuracy, nsp_loss
from .model import BERTModel, Dropout, evaluating
from .pretrained import mean_pool
from .train import TrainConfig, autocast, devices, get_lr, make_optimizer, optimizer_step
from .wikitext import SHIPPED, parse_wikitext, read_text, wikitext_path


class BERTClassifier(nn.Module):
    """`bert`, then dropout and a linear layer on its pooled `<cls>` state: logits (B, classes).

    `pooling="mean"` averages the last hidden states of the real tokens instead: BERT's pooled
    state is trained by NSP only, and a small model whose NSP stays near chance leaves little
    in it. The new layer starts from BERT's own init, normal(0, 0.02), drawn from a generator
    seeded with `seed`, so the same encoder and seed always give the same classifier.
    Explained in notebooks/09_fine_tuning.ipynb.
    """

    def __init__(self, bert: BERTModel, num_classes: int, dropout: float = 0.1, seed: int = 0,
                 pooling: str = "cls"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r}; choose 'cls' or 'mean'")
        self.bert, self.dropout, self.pooling = bert, Dropout(dropout), pooling
        self.head = nn.Linear(bert.config.hidden, num_classes)
        nn.init.normal_(self.head.weight, std=0.02, generator=torch.Generator().manual_seed(seed))
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens, segments=None, valid_lens=None):
        out = self.bert(tokens, segments, valid_lens)
        pooled = out.pooled                                       # (B, H) tanh(dense(<cls>))
        if self.pooling == "mean":  # over real tokens only: padding must not dilute it
            T = tokens.shape[1]
            lens = torch.full_like(tokens[:, 0], T) if valid_lens is None else valid_lens  # (B,)
            pooled = mean_pool(out.encoded, lens)                                         # (B, H)
        return self.head(self.dropout(pooled))                    # (B, classes)


# ---- The offline task: paragraphs labelled by their article's category -----------------------

def read_articles(name: str = SHIPPED, split: str = "train", data_dir=None, min_sentences: int = 1):
    """[(title, paragraphs)] in file order; a ` = Title = ` line starts an article (` = = Section
    = = ` lines do not) and `parse_wikitext` turns its lines into paragraphs of sentences.
    Explained in notebooks/09_fine_tuning.ipynb.
    """
    articles = []
    for line in read_text(name, split, data_dir).split("\n"):
        tokens = line.split()
        if len(tokens) > 2 and tokens[0] == tokens[-1] == "=" and tokens[1] != "=":
            articles.append((" ".join(tokens[1:-1]), []))
        elif articles:  # text before the first title belongs to no article
            articles[-1][1].append(line)
    return [(title, parse_wikitext("\n".join(lines), min_sentences)) for title, lines in articles]


def read_categories(name: str = SHIPPED, data_dir=None) -> dict[str, tuple[str, str]]:
    """{title: (category, split)} from `categories.tsv` beside the dataset's `wiki.*.tokens`.
    Explained in notebooks/09_fine_tuning.ipynb."""
    path = wikitext_path(name, "train", data_dir).parent / "categories.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the topic task needs a table with columns "
                                "title, category, split (tab-separated)")
    with open(path, encoding="utf-8", newline="") as f:
        return {r["title"]: (r["category"], r["split"]) for r in csv.DictReader(f, delimiter="\t")}


class TopicDataset(torch.utils.data.Dataset):
    """Examples `<cls> paragraph <sep> <pad>...` as dicts of tokens (T,), segments (T,),
    valid_lens () and label (); `categories[label]` names the label, `titles` each article.
    Explained in notebooks/09_fine_tuning.ipynb."""

    def __init__(self, tokens, valid_lens, labels, categories, titles):
        tokens = torch.from_numpy(tokens)  # (N, T)
        self.arrays = {"tokens": tokens, "segments": torch.zeros_like(tokens),  # one segment
                       "valid_lens": torch.from_numpy(valid_lens), "label": torch.from_numpy(labels)}
        self.categories, self.titles = categories, titles

    def __len__(self):
        return len(self.arrays["label"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.arrays.items()}


def load_topic_dataset(split: str, vocab, max_len: int = 64, name: str = SHIPPED,
                       data_dir=None) -> TopicDataset:
    """Every paragraph of `split`, as one segment cut to `max_len`, labelled by the category
    of its article (label = index in the table's order of first appearance).

    Pre-training drops a sentence pair that is too long, since a cut sentence changes the
    question NSP asks; here the question (what is this paragraph about?) has the same answer
    for its first 62 tokens, and dropping long paragraphs would drop most of them. `vocab` is
    any tokenizer (`bertlite.inputs.Tokenizer`): a word-level `Vocab`, or WordPiece, which cuts
    the paragraph's words into pieces first.
    Explained in notebooks/09_fine_tuning.ipynb and notebooks/10_real_bert.ipynb.
    """
    if max_len < 3:
        raise ValueError(f"max_len={max_len}: <cls> x <sep> needs at least 3 tokens")
    table = read_categories(name, data_dir)
    categories = list(dict.fromkeys(c for c, _ in table.values()))  # first appearance order
    rows, labels, titles = [], [], []
    for title, paragraphs in read_articles(name, split, data_dir):
        if title not in table or table[title][1] != split:
            raise ValueError(f"article {title!r} of {name}/{split} is missing from categories.tsv "
                             "or listed there with another split: fix the table")
        for p in paragraphs:
            words = vocab.tokenize(" ".join(w for sentence in p for w in sentence))
            rows.append(vocab.convert_tokens_to_ids(
                [vocab.cls_token, *words[:max_len - 2], vocab.sep_token]))  # truncate
            labels.append(categories.index(table[title][0]))
            titles.append(title)
    if not rows:
        raise ValueError(f"{name}/{split} has no article: a WikiText file starts each one with a "
                         "` = Title = ` line")
    pad = vocab.convert_tokens_to_ids([vocab.pad_token])[0]
    tokens = np.full((len(rows), max_len), pad, dtype=np.int64)  # (N, T)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    return TopicDataset(tokens, np.array([len(r) for r in rows], np.int64), np.array(labels, np.int64),
                        categories, titles)


# ---- ULMFiT: pure functions of the step, the group and the epoch ------------------------------

@dataclass
class FinetuneConfig:
    """Which ULMFiT techniques to use (TrainConfig still gives steps, batch, lr, precision, seed).
    Explained in notebooks/09_fine_tuning.ipynb."""
    discriminative: bool = False     # each group below the top trains at the rate above / factor
    factor: float = 2.6              # ULMFiT's value, found by tuning on text classification
    slanted: bool = False            # STLR instead of get_lr (TrainConfig's schedule)
    cut_frac: float = 0.1            # fraction of the steps spent warming up
    ratio: float = 32                # peak rate / lowest rate
    gradual_unfreezing: bool = False
    unfreeze_every: int = 0          # steps between unfreezings; 0: one epoch, as in ULMFiT


def stlr(step: int, total: int, lr_max: float, cut_frac: float = 0.1, ratio: float = 32) -> float:
    """Slanted triangular learning rate at `step` (0-based) of `total`: from lr_max / ratio up to
    lr_max in the first cut_frac of the steps, then linearly back down to lr_max / ratio.
    Explained in notebooks/09_fine_tuning.ipynb.
    """
    if not (0 < cut_frac < 1 and ratio >= 1 and 0 <= step <= total and total >= 1):
        raise ValueError(f"need 0 < cut_frac < 1, ratio >= 1 and 0 <= step <= total, got "
                         f"cut_frac={cut_frac}, ratio={ratio}, step={step}, total={total}")
    cut = max(1, math.floor(total * cut_frac))
    # The paper divides by cut * (1 / cut_frac - 1): that is total - cut when total * cut_frac
    # is whole, and total - cut still ends the decay at `total` when it is not.
    p = step / cut if step < cut else 1 - (step - cut) / max(1, total - cut)
    return lr_max * (1 + p * (ratio - 1)) / ratio


def layer_groups(classifier: BERTClassifier) -> dict[str, dict[str, nn.Parameter]]:
    """{group: {parameter name: parameter}} from the top: "head" (the new layer and the pooler
    below it), "block N-1" ... "block 0", "embeddings". The MLM and NSP heads are in no group:
    classification does not use them, so they are never trained.
    Explained in notebooks/09_fine_tuning.ipynb.
    """
    groups = {"head": {}}
    groups.update({f"block {i}": {} for i in reversed(range(len(classifier.bert.blocks)))})
    groups["embeddings"] = {}
    for name, p in classifier.named_parameters():  # a tied matrix is listed once, as embeddings
        parts = name.split(".")
        if parts[0] == "head" or parts[1] == "pooler":
            groups["head"][name] = p
        elif parts[1] == "blocks":
            groups[f"block {parts[2]}"][name] = p
        elif parts[1] == "embeddings":
            groups["embeddings"][name] = p
    return groups


def discriminative_lrs(lr: float, num_groups: int, factor: float = 2.6) -> list[float]:
    """Rates from the top group down: lr, lr / factor, lr / factor**2, ...
    Explained in notebooks/09_fine_tuning.ipynb."""
    return [lr / factor**depth for depth in range(num_groups)]


def group_lrs(step: int, num_groups: int, cfg: TrainConfig, ft: FinetuneConfig) -> list[float]:
    """Each group's rate at `step`, from the top. Explained in notebooks/09_fine_tuning.ipynb."""
    top = stlr(step, cfg.steps, cfg.lr, ft.cut_frac, ft.ratio) if ft.slanted else get_lr(step, cfg)
    return discriminative_lrs(top, num_groups, ft.factor if ft.discriminative else 1.0)


def unfrozen_groups(epoch: int, num_groups: int, gradual: bool = True) -> int:
    """How many groups (from the top) train in `epoch` (0-based): one more each epoch.
    Explained in notebooks/09_fine_tuning.ipynb."""
    return min(epoch + 1, num_groups) if gradual else num_groups


def set_trainable(groups: dict, n: int) -> None:
    """Train the top `n` groups, freeze the others (a frozen parameter gets no gradient, and
    Adam leaves a parameter without a gradient as it is). Explained in notebooks/09_fine_tuning.ipynb."""
    for depth, params in enumerate(groups.values()):
        for p in params.values():
            p.requires_grad_(depth < n)


def make_group_optimizer(groups: dict, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The trainer's optimizer (`make_optimizer`: Adam or AdamW, its weight-decay rule) with
    param groups that carry `depth`, the index of their layer group, so each can get its rate.
    Explained in notebooks/09_fine_tuning.ipynb."""
    param_groups = []
    for depth, named in enumerate(groups.values()):
        part = make_optimizer(named.items(), cfg)
        param_groups += [{**g, "depth": depth} for g in part.param_groups if g["params"]]
    return type(part)(param_groups, lr=cfg.lr)


# ---- Training and evaluation -----------------------------------------------------------------

def evaluate_classifier(classifier: nn.Module, dataset, batch_size: int = 512, device=None) -> dict:
    """{"loss", "acc"}: cross-entropy and accuracy over a whole dataset, in eval mode.
    Explained in notebooks/09_fine_tuning.ipynb."""
    device = device or next(classifier.parameters()).device
    sums = torch.zeros(2, dtype=torch.float64)
    # Its own generator: a DataLoader without one takes a draw from the global generator, so
    # validating would change the dropout draws of the training steps that follow.
    with evaluating(classifier):
        for batch in DataLoader(dataset, batch_size, generator=torch.Generator()):
            b = {k: v.to(device) for k, v in batch.items()}
            logits = classifier(b["tokens"], b["segments"], b["valid_lens"])
            # nsp_loss and nsp_accuracy: plain cross-entropy and accuracy, for any number of classes
            sums += torch.stack([nsp_loss(logits, b["label"], 1),
                                 nsp_accuracy(logits, b["label"], 1)]).cpu()
    loss, acc = (sums / len(dataset)).tolist()
    return {"loss": loss, "acc": acc}


def finetune(classifier: BERTClassifier, train_data, cfg: TrainConfig, val_data=None,
             ft: FinetuneConfig | None = None) -> list[dict]:
    """Train `classifier` for `cfg.steps` steps; return the history: per step {"step", "loss",
    "acc", "lrs" (one per group, from the top), "trainable" (groups)}, plus {"step", "eval"}
    records every `cfg.eval_every` steps and at the end. One device, no data parallelism: a
    fine-tuning set is small. All groups are trainable again when it returns.
    Explained in notebooks/09_fine_tuning.ipynb.
    """
    ft = ft or FinetuneConfig()
    device = devices()[0]
    classifier.to(device)
    groups = layer_groups(classifier)
    optimizer = make_group_optimizer(groups, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    loader = DataLoader(train_data, cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
    every = ft.unfreeze_every or len(loader)
    torch.manual_seed(cfg.seed)  # dropout draws, as in train_bert
    step, history = 0, []
    classifier.train()
    try:
        while step < cfg.steps:
            for batch in loader:
                n = unfrozen_groups(step // every, len(groups), ft.gradual_unfreezing)
                set_trainable(groups, n)
                lrs = group_lrs(step, len(groups), cfg, ft)
                for g in optimizer.param_groups:
                    g["lr"] = lrs[g["depth"]]
                b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast(device, cfg.precision):
                    logits = classifier(b["tokens"], b["segments"], b["valid_lens"])  # (B, C)
                    loss = nsp_loss(logits, b["label"])
                optimizer_step(loss, optimizer, scaler, classifier.parameters(), cfg.clip_grad)
                step += 1
                history.append({"step": step, "loss": loss.item(), "lrs": lrs, "trainable": n,
                                "acc": nsp_accuracy(logits.detach(), b["label"]).item()})
                due = step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)
                if val_data is not None and due:
                    ev = evaluate_classifier(classifier, val_data, cfg.batch_size, device)
                    history.append({"step": step, "eval": ev})
                if step >= cfg.steps:
                    break
    finally:
        set_trainable(groups, len(groups))
    return history
