"""Pre-training losses: the weighted masked-LM loss, the NSP loss, and their accuracies.

Every batch pads its prediction slots to the same number P; padded slots have weight 0 and point
at position 0. The MLM loss must ignore them. The book's formula does not (see `d2l_mlm_loss`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import true_first


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


def _row_max(x):
    """x.amax(-1), quicker for bf16 on the CPU, where PyTorch's amax of bf16 is slow. A bf16's bits
    read as an int16 order the numbers >= +0 as the numbers do (and every negative number below
    them), so the largest int16 of a row is its largest number whenever that is >= +0. Rows with
    no such number (the rare all-negative row) take the plain amax."""
    if x.dtype != torch.bfloat16:
        return x.amax(-1)
    top = x.view(torch.int16).amax(-1)
    negative = top < 0
    top = top.view(torch.bfloat16)
    if negative.any():
        top[negative] = x[negative].amax(-1)
    return top


# Rows per chunk of the fused loss. Under bf16 (or fp16) each chunk's W gradient is widened to
# fp32 and added, so fewer, larger chunks pay: the quicker of each on 2 cores
CHUNK_ROWS_FP32, CHUNK_ROWS_16BIT = 256, 512


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(w * cross_entropy(h @ W.T + b, y)) / total, without ever holding all (N, V) logits.
    Also returns sum(w * [label's logit is the largest]) / total, the accuracy, at no extra cost.

    Chunk by chunk of rows, the forward pass computes the logits, the loss, and right away the
    gradient of the logits, softmax - one-hot, then the gradients of h, W and b; backward only
    scales them. The (N, V) logits (3249 x 20256 floats for the book's batch) are never stored:
    every chunk reuses one (chunk, V) buffer, where the softmax overwrites the logits and the
    one-hot is subtracted in place. Each row's weight w / total is applied to the small side of
    each product (rows of h), never to the (chunk, V) block; a column of those weights beside h
    makes the last product sum the bias's gradient too. The products keep h's width H (128 for
    the book) as their inner size: a matrix unit (AMX) works in blocks of 16 or 32 numbers, and
    a 129th column for the bias made every product slower. Under bf16 autocast the products and
    the softmax's output are bf16 (the softmax computes in fp32), and W's gradient is summed
    over the chunks in fp32.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, labels, w, total, chunk):
        device = h.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype
        need_grad = any(ctx.needs_input_grad[:3])
        (N, H), V, fp32 = h.shape, weight.shape[0], dtype == torch.float32
        with torch.autocast(device, enabled=False):
            h, weight, bias = h.to(dtype), weight.to(dtype), bias.to(dtype)
            scale = w.float() / total                                 # each row's share of the loss
            hs = torch.cat([h * scale[:, None].to(dtype), scale[:, None].to(dtype)], 1)  # (N, H+1)
            loss, correct = torch.zeros((), device=h.device), torch.zeros((), device=h.device)
            gh = torch.empty(N, H, device=h.device, dtype=dtype)                    # dh, unscaled
            gwt = torch.empty(H + 1, V, device=h.device)                            # [dW.T; db]
            chunk = chunk or (CHUNK_ROWS_FP32 if fp32 else CHUNK_ROWS_16BIT)
            # One buffer reused by every chunk (a fresh block this size is slow to get on the
            # CPU: the kernel hands its pages over, zeroed, again and again): the logits, then
            # their softmax in their place, then the softmax minus the one-hot
            block = torch.empty(min(chunk, N), V, dtype=dtype, device=h.device)
            if not fp32:  # each chunk's W gradient in bf16, then widened into a kept fp32
                # buffer and added (adding the bf16 directly widens it into a fresh block each time)
                part = torch.empty(H + 1, V, dtype=dtype, device=h.device)
                part32 = torch.empty(H + 1, V, device=h.device)
            for s in range(0, N, chunk):
                e = min(s + chunk, N)
                rows, y, ws = torch.arange(e - s, device=h.device), labels[s:e], scale[s:e]
                logits = torch.addmm(bias, h[s:e], weight.t(), out=block[:e - s])  # (c, V)
                label_logit = logits[rows, y].float()
                correct += ((label_logit >= _row_max(logits)) * ws).sum()  # the label is (a) top guess
                p = torch.softmax(logits, -1, out=logits)             # one kernel, row by row, in place
                label_p = p[rows, y].float()
                row_loss = -label_p.log()                             # -log softmax at the label
                lost = label_p < 1e-30                                # underflowed: work it out
                if lost.any():  # from those rows' logits, computed again (they were overwritten)
                    again = torch.addmm(bias, h[s:e][lost], weight.t()).float()
                    row_loss[lost] = torch.logsumexp(again, -1) - label_logit[lost]
                loss += (row_loss * ws).sum()
                if need_grad:
                    p[rows, y] -= 1                                   # softmax - one-hot, in place
                    torch.mm(p, weight, out=gh[s:e])                  # rows scaled below
                    if fp32:                        # (H+1, c) @ (c, V), added in place
                        gwt.addmm_(hs[s:e].t(), p, beta=float(s > 0))   # the first overwrites
                    elif s == 0:
                        gwt.copy_(torch.mm(hs[s:e].t(), p, out=part))
                    else:                                             # summed in fp32
                        gwt += part32.copy_(torch.mm(hs[s:e].t(), p, out=part))
            gh = gh.float() * scale[:, None]
        ctx.save_for_backward(gh, gwt[:H].t(), gwt[H])
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss, grad_correct):
        gh, gw, gb = ctx.saved_tensors  # gw is a transposed view: scaled into W's own layout, in
        # one pass (autograd would otherwise copy it there, a second pass)
        scaled_gw = torch.mul(gw, grad_loss, out=gw.new_empty(gw.shape))
        return gh * grad_loss, scaled_gw, gb * grad_loss, None, None, None, None


def fused_mlm_loss(mlm_hidden, decoder: torch.nn.Linear, mlm_labels, mlm_weights,
                   total_weight=None, chunk: int | None = None):
    """`mlm_loss(decoder(mlm_hidden), ...)` and `mlm_accuracy` computed faster: only real
    (weight > 0) slots are decoded (with a few padded ones of weight 0, so that batches share
    the products' shapes: `model.shared_row_count`), and the vocabulary-sized logits are never
    stored (see `_LinearCrossEntropy`). Same values and gradients as `mlm_loss` (tested).
    Returns (loss, accuracy). Explained in notebooks/05_heads_and_loss.ipynb.
    """
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk={chunk!r}: give a whole number of rows of at least 1, or None "
                         "for the default")
    weights = mlm_weights.reshape(-1)
    real = weights > 0
    # The real slots, then a few padded ones (weight 0: they add nothing) up to a shared row
    # count, so that the last chunk's products have one of a few shapes (`shared_row_count`)
    slots, _ = true_first(real)
    h = mlm_hidden.reshape(-1, mlm_hidden.shape[-1])[slots]
    padded = ~real[slots]
    w = weights[slots].masked_fill(padded, 0)
    labels = mlm_labels.reshape(-1)[slots].masked_fill(padded, 0)  # a padded slot's may be -100
    total = (w.sum() if total_weight is None else total_weight).float().clamp_min(1e-8)
    return _LinearCrossEntropy.apply(h, decoder.weight, decoder.bias, labels, w, total, chunk)


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
    mlm_acc: torch.Tensor
    nsp_acc: torch.Tensor


def pretrain_loss(output, batch, decoder=None, total_weight=None,
                  total_examples=None) -> PretrainLoss:
    """MLM loss + NSP loss (and accuracies) of a model output (`BERTOutput`) on a batch.

    If the output carries `mlm_hidden` instead of logits, pass the model's `mlm.decoder` and the
    fused loss is used. `total_weight` / `total_examples` override the denominators (a
    data-parallel trainer passes the totals over all ranks).
    Explained in notebooks/05_heads_and_loss.ipynb.
    """
    labels, weights = batch["mlm_labels"], batch["mlm_weights"]
    if output.mlm_logits is None:
        mlm, mlm_acc = fused_mlm_loss(output.mlm_hidden, decoder, labels, weights, total_weight)
    else:
        mlm = mlm_loss(output.mlm_logits, labels, weights, total_weight)
        mlm_acc = mlm_accuracy(output.mlm_logits.detach(), labels, weights, total_weight)
    nsp = nsp_loss(output.nsp_logits, batch["nsp_labels"], total_examples)
    nsp_acc = nsp_accuracy(output.nsp_logits.detach(), batch["nsp_labels"], total_examples)
    return PretrainLoss(mlm + nsp, mlm, nsp, mlm_acc, nsp_acc)


def mlm_accuracy(mlm_logits, mlm_labels, mlm_weights, total_weight=None):
    """Fraction of real (weight > 0) predictions whose label has the largest logit (a tie with
    another word counts as a hit, in `fused_mlm_loss` too; argmax would pick the first word)."""
    label_logit = mlm_logits.gather(-1, mlm_labels[..., None])[..., 0]
    hits = (label_logit >= mlm_logits.amax(-1)).to(mlm_weights.dtype) * mlm_weights
    total = mlm_weights.sum() if total_weight is None else total_weight
    return hits.sum() / total.clamp_min(1e-8)


def nsp_accuracy(nsp_logits, nsp_labels, total=None):
    hits = (nsp_logits.argmax(-1) == nsp_labels).float().sum()
    return hits / (len(nsp_labels) if total is None else total)
