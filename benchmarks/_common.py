"""Helpers shared by the benchmark scripts: timing, the machine's matmul peak, training steps."""
import ctypes
import itertools
import platform
import resource
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from bertlite.data import load_pretrain_dataset
from bertlite.loss import d2l_mlm_loss, pretrain_loss
from bertlite.model import Dropout
from bertlite.train import TrainConfig, cpu_has_fast_bf16, make_optimizer
from bertlite.wikitext import default_data_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data when present


def wikitext2_dir():
    """The folder holding the real WikiText-2: ../shared/data beside the checkout, else where
    `python -m bertlite download` puts it ($BERTLITE_DATA, else the checkout's data/); None when
    neither has it (then the shipped corpus is used)."""
    for folder in (SHARED, default_data_dir()):
        if (folder / "wikitext-2" / "wiki.train.tokens").exists():
            return folder
    return None


def book_batch(B=512, vocab_size=20256, count=None):
    """(batch, corpus name): B pairs of max_len 64 from WikiText-2 (the shipped corpus without
    it), token ids folded into the book's vocabulary size so that every model has its shape.
    With `count`: a list of that many batches instead, drawn as the trainer draws them (the pairs
    shuffled, with a fixed seed; the shipped corpus is gone through again when it runs out)."""
    data_dir = wikitext2_dir()
    ds = load_pretrain_dataset(64, "wikitext-2" if data_dir else "tinywiki", data_dir=data_dir)
    name = "WikiText-2" if data_dir else "tinywiki"

    def fold(items):
        return {k: (v % vocab_size if k in ("tokens", "mlm_labels") else v) for k, v in items.items()}
    if count is None:
        return fold(ds[:B]), name
    order = torch.cat([torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch))
                       for epoch in range(-(-count * B // len(ds)))])
    return [fold(ds[order[i * B:(i + 1) * B]]) for i in range(count)], name


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


def timed_together(fns, repeat=5, warmup=1, faults=None):
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...): on a shared
    machine whose speed drifts, every function sees the same drift, so their ratios hold.
    If `faults` is a list, it receives each function's median count of minor page faults per
    call: pages the kernel had to hand over (and zero) because freed memory went back to it."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times, counts = [[] for _ in fns], [[] for _ in fns]
    for _ in range(repeat):
        for fn, t, c in zip(fns, times, counts):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
            c.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    if faults is not None:
        faults.extend(statistics.median(c) for c in counts)
    return [statistics.median(t) for t in times]


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    By default a block above 32 MiB (the book's 5120 x 20256 logits are 415 MB) is mapped fresh on
    every allocation and unmapped when freed, so each step faults its pages in again and the kernel
    zeroes them. `mallopt` with M_MMAP_MAX = 0 serves every block from the heap, and M_TRIM_THRESHOLD
    at its largest stops the heap from shrinking. The arithmetic is untouched. Returns False where
    there is no glibc (macOS, Windows, musl): then nothing changes.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def matmul_peak(dtype, n=2048):
    """GFLOP/s of an n x n matrix product on this machine, now. bf16 on a CPU without bf16
    kernels (AVX2 only) is timed at n = 256: at 2048 one product would take about 100 s there."""
    if dtype == torch.bfloat16 and not cpu_has_fast_bf16():
        n = 256
    a = torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ a, repeat=5) / 1e9


class BookDropout(nn.Dropout):
    """torch's nn.Dropout in the place of bertlite's (which also takes `real`, unused here)."""

    def forward(self, x, real=None):
        return super().forward(x)


def book_style(net):
    """The book's computation on the same weights: torch's nn.Dropout, the written-out attention,
    every position computed, padding included, and logits for every prediction slot (bertlite's
    defaults avoid all four)."""
    for name, module in net.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, child_name, BookDropout(child.p))
    for block in net.blocks:
        block.attention.fused = False
    net.config = replace(net.config, skip_padding=False)  # every position, padding included
    return net


def book_optimizer(named_parameters, cfg):
    """The book's optimizer: torch's Adam as it comes (the trainer's `make_optimizer` fuses it)."""
    return torch.optim.Adam([p for _, p in named_parameters], lr=cfg.lr)


def step_fn(net, batch, precision="fp32", fused_loss=True, book_loss=False, lr=0.01,
            loss_fn=pretrain_loss, optimizer=make_optimizer, config=TrainConfig):
    """One optimiser step of pre-training on `batch` as a closure (returns the loss parts), with
    the trainer's Adam (`make_optimizer`). `batch` may be a list: then each call takes the next
    batch of it, round and round, as training does. `loss_fn`, `optimizer` and `config`:
    bertlite's, or another version's (benchmarks/step_vs_commit.py), or the book's (`book_optimizer`)."""
    opt = optimizer(net.named_parameters(), config(optimizer="adam", lr=lr))
    batches = itertools.cycle(batch if isinstance(batch, list) else [batch])

    def step():
        batch = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(batch["tokens"], batch["segments"], batch["valid_lens"],
                      batch["pred_positions"], mlm_logits=not fused_loss)
            loss = loss_fn(out, batch, net.mlm.decoder)
            total = loss.total
            if book_loss:  # the same arithmetic cost as the book's loss
                total = d2l_mlm_loss(out.mlm_logits, batch["mlm_labels"], batch["mlm_weights"]) + loss.nsp
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return loss
    return step


def precisions_here(precisions):
    """`precisions` without bf16 where this CPU has no bf16 kernels, saying so in one line: its
    products there run hundreds of times slower than fp32's, so a bf16 figure would take hours."""
    if "bf16" in precisions and not cpu_has_fast_bf16():
        print(f"bf16 skipped: this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX-512) has "
              "no bf16 kernels, so its bf16 products run hundreds of times slower than fp32's "
              "(a bf16 matmul peak printed here is of a 256^2 product)")
        return [p for p in precisions if p != "bf16"]
    return list(precisions)
