"""What a trained BERT must beat, and a fair way to measure it on a small task.

A masked-word guess must beat the unigram model (`unigram`: how often each word occurs in the
training text, with no context at all).

The topic task's test split holds 51 paragraphs of 6 articles: one paragraph moves its accuracy
by 0.02, and one odd article by much more. `article_folds` instead cross-validates over all 48
articles (each paragraph is tested once, by a model that saw no paragraph of its article).
`logistic_regression` is the linear model behind two baselines: bag-of-words (word counts) and
the frozen-encoder probe (BERT's sentence vectors). Explained in notebooks/10_real_bert.ipynb.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from .finetune import TopicDataset


def unigram(train, vocab) -> tuple[np.ndarray, np.ndarray]:
    """(counts, probabilities) of each token among the real tokens of a `PretrainDataset`'s
    pairs, add-one smoothed; the specials get none (they are never masked, never a label).
    Explained in notebooks/11_domain_adaptation.ipynb."""
    real = train.tokens[np.arange(train.tokens.shape[1]) < train.valid_lens[:, None]]
    counts = np.bincount(real, minlength=len(vocab)).astype(float)
    counts[vocab.specials] = 0
    p = counts + 1
    p[vocab.specials] = 0
    return counts, p / p.sum()


def unigram_scores(train, valid) -> dict:
    """{"mlm_loss", "perplexity", "mlm_acc"} of the unigram model of `train` on the masked
    words of `valid` (a `PretrainDataset` with the same vocabulary): the numbers a masked-LM
    must beat on those very words. Explained in notebooks/11_domain_adaptation.ipynb."""
    counts, p = unigram(train, train.vocab)
    w = valid.arrays["mlm_weights"].numpy().ravel() > 0
    labels = valid.arrays["mlm_labels"].numpy().ravel()[w]
    loss = float(-np.log(p[labels]).mean())
    return {"mlm_loss": loss, "perplexity": math.exp(loss),
            "mlm_acc": float((labels == counts.argmax()).mean())}


def concat_topics(datasets) -> TopicDataset:
    """One `TopicDataset` holding the examples of several (the splits of one task).
    Explained in notebooks/10_real_bert.ipynb."""
    datasets = list(datasets)
    arrays = {k: torch.cat([d.arrays[k] for d in datasets]) for k in datasets[0].arrays}
    return TopicDataset(arrays["tokens"].numpy(), arrays["valid_lens"].numpy(),
                       arrays["label"].numpy(), datasets[0].categories,
                       [t for d in datasets for t in d.titles])


def subset(ds: TopicDataset, index) -> TopicDataset:
    """The examples of `ds` at `index` (a list of ints), as a `TopicDataset`.
    Explained in notebooks/10_real_bert.ipynb."""
    index = torch.as_tensor(index, dtype=torch.long)
    a = {k: v[index] for k, v in ds.arrays.items()}
    return TopicDataset(a["tokens"].numpy(), a["valid_lens"].numpy(), a["label"].numpy(),
                        ds.categories, [ds.titles[i] for i in index.tolist()])


def article_folds(ds: TopicDataset, k: int = 3) -> list[list[int]]:
    """`k` lists of example indices; all paragraphs of an article fall in one fold, and each
    category's articles are dealt round the folds in title order (so every fold has every topic).
    Explained in notebooks/10_real_bert.ipynb."""
    label_of = {t: int(y) for t, y in zip(ds.titles, ds.arrays["label"].tolist())}
    fold_of = {}
    for c in sorted(set(label_of.values())):
        for i, title in enumerate(sorted(t for t, y in label_of.items() if y == c)):
            fold_of[title] = i % k
    return [[i for i, t in enumerate(ds.titles) if fold_of[t] == f] for f in range(k)]


def bag_of_words(ds: TopicDataset, vocab_size: int, specials=()) -> torch.Tensor:
    """(N, V) frequency of each token in each example, special tokens left out.
    Explained in notebooks/10_real_bert.ipynb."""
    t = ds.arrays["tokens"]                                             # (N, T)
    x = torch.zeros(len(t), vocab_size).scatter_add_(1, t, torch.ones(t.shape))
    x[:, list(specials)] = 0
    return x / x.sum(1, keepdim=True).clamp(min=1)


def logistic_regression(x_train, y_train, x_test, classes: int, steps: int = 300,
                        lr: float = 0.1) -> torch.Tensor:
    """Predicted classes of `x_test` by a linear softmax classifier trained on full batches with
    AdamW from zero weights: nothing random, so it needs no seed.
    Explained in notebooks/10_real_bert.ipynb."""
    linear = torch.nn.Linear(x_train.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(linear(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return linear(x_test).argmax(1)
