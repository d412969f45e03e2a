"""Helpers shared by the benchmark scripts: timing, the machine's matmul peak, training steps."""
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bertlite.loss import d2l_mlm_loss, pretrain_loss
from bertlite.model import Dropout

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data when present


def wikitext2_dir():
    """The real WikiText-2 beside the checkout, or None (then the shipped corpus is used)."""
    return SHARED if (SHARED / "wikitext-2" / "wiki.train.tokens").exists() else None


def timed(fn, repeat=5, warmup=1):
    """Median seconds of `repeat` calls after `warmup` calls: robust to a noisy shared machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_together(fns, repeat=5, warmup=1):
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...): on a shared
    machine whose speed drifts, every function sees the same drift, so their ratios hold."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def matmul_peak(dtype, n=2048):
    """GFLOP/s of an n x n matrix product on this machine, now."""
    a = torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ a, repeat=5) / 1e9


def book_style(net):
    """The book's computation on the same weights: torch's nn.Dropout, the written-out attention,
    and logits for every prediction slot (bertlite's defaults avoid all three)."""
    for name, module in net.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, child_name, nn.Dropout(child.p))
    for block in net.blocks:
        block.attention.fused = False
    return net


def step_fn(net, batch, precision="fp32", fused_loss=True, book_loss=False, lr=0.01):
    """One optimiser step of pre-training on `batch` as a closure (returns the loss parts)."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(batch["tokens"], batch["segments"], batch["valid_lens"],
                      batch["pred_positions"], mlm_logits=not fused_loss)
            loss = pretrain_loss(out, batch, net.mlm.decoder)
            total = loss.total
            if book_loss:  # the same arithmetic cost as the book's loss
                total = d2l_mlm_loss(out.mlm_logits, batch["mlm_labels"], batch["mlm_weights"]) + loss.nsp
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return loss
    return step
