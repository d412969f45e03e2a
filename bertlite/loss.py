"""Pre-training losses: the weighted masked-LM loss, the NSP loss, and their accuracies.

Every batch pads its prediction slots to the same number P; padded slots have weight 0 and point
at position 0. The MLM loss must ignore them. The book's formula does not (see `d2l_mlm_loss`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def mlm_loss(mlm_logits, mlm_labels, mlm_weights, total_weight=None):
    """Cross-entropy over real predictions only: per-slot losses times the weights, summed,
    divided by the number of real predictions (`total_weight`, by default this batch's weight sum;
    a data-parallel trainer passes the sum over all ranks so that every rank agrees).

    Explained in notebooks/05_heads_and_loss.ipynb.
    """
    V = mlm_logits.shape[-1]
    per_slot = F.cross_entropy(mlm_logits.reshape(-1, V).float(), mlm_labels.reshape(-1),
                               reduction="none")                     # (B*P,)
    weights = mlm_weights.reshape(-1).to(per_slot.dtype)             # flat: never (B*P, 1)
    total = weights.sum() if total_weight is None else total_weight
    return (per_slot * weights).sum() / total.clamp_min(1e-8)


def d2l_mlm_loss(mlm_logits, mlm_labels, mlm_weights):
    """The book's formula, kept to show why it is wrong. `CrossEntropyLoss()` already averages
    over all B*P slots, padded ones included; weighting that one number and dividing by the
    weight sum gives the same number back, so the weights do nothing and the model is also
    trained to predict label 0 at position 0 in every padded slot.

    Explained in notebooks/05_heads_and_loss.ipynb.
    """
    V = mlm_logits.shape[-1]
    loss = torch.nn.CrossEntropyLoss()(mlm_logits.reshape(-1, V), mlm_labels.reshape(-1))
    return (loss * mlm_weights.reshape(-1)).sum() / (mlm_weights.sum() + 1e-8)


def nsp_loss(nsp_logits, nsp_labels, total=None):
    """Cross-entropy of the next-sentence prediction, averaged over `total` examples
    (by default this batch's size). Explained in notebooks/05_heads_and_loss.ipynb.
    """
    loss = F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum")
    return loss / (len(nsp_labels) if total is None else total)


class PretrainLoss(NamedTuple):
    total: torch.Tensor  # mlm + nsp, what we differentiate
    mlm: torch.Tensor
    nsp: torch.Tensor


def pretrain_loss(output, batch, total_weight=None, total_examples=None) -> PretrainLoss:
    """MLM loss + NSP loss of a model output (`BERTOutput`) on a batch (dict of `BATCH_KEYS`).

    Explained in notebooks/05_heads_and_loss.ipynb.
    """
    mlm = mlm_loss(output.mlm_logits, batch["mlm_labels"], batch["mlm_weights"], total_weight)
    nsp = nsp_loss(output.nsp_logits, batch["nsp_labels"], total_examples)
    return PretrainLoss(mlm + nsp, mlm, nsp)


def mlm_accuracy(mlm_logits, mlm_labels, mlm_weights):
    """Fraction of real (weight 1) predictions whose top logit is the label."""
    hits = (mlm_logits.argmax(-1) == mlm_labels).to(mlm_weights.dtype) * mlm_weights
    return hits.sum() / mlm_weights.sum().clamp_min(1e-8)


def nsp_accuracy(nsp_logits, nsp_labels):
    return (nsp_logits.argmax(-1) == nsp_labels).float().mean()
