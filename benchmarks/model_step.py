"""Forward + backward + Adam step of the book's model (the d2l preset) at batch 512, max_len 64.

    python benchmarks/model_step.py [--repeat 5] [--default-only] [--keep-freed-memory]

Prints sentence pairs/s for the from-scratch vs the fused attention, the plain vs the fused MLM
loss, padding computed vs skipped, fp32 vs bf16 autocast, each as a ratio to the book-style step
measured in the same run, with the model FLOPs per step and the fraction of this machine's
measured matmul peak. Each row is timed in turns with the baseline, so that a shared machine's
drifting speed moves both alike. Last, the time of one dropout call, bertlite's `Dropout` against
`nn.Dropout`.

The last column is the memory the kernel handed over per step (minor page faults x page size):
by default glibc returns every freed block above 32 MiB to the kernel, which must zero it again on
the next step. The book-style step frees 415 MB of logits per step, so much of its time is that.
`--keep-freed-memory` makes malloc reuse freed memory (`_common.keep_freed_memory`): the ratio
then compares the arithmetic alone.
"""
import argparse
import resource

import torch

from _common import (book_batch, book_optimizer, book_style, keep_freed_memory, matmul_peak,
                     precisions_here, step_fn, timed_together)
from bertlite.model import BERTConfig, BERTModel, Dropout


def step_flops(c: BERTConfig, B: int, T: int, slots: float, tokens: float | None = None) -> float:
    """Matmul FLOPs of one training step: forward 2 per multiply-add, backward twice that.
    `tokens`: the positions the token-by-token layers compute (all B * T, or the real ones)."""
    tokens = B * T if tokens is None else tokens
    per_token = c.layers * (4 * c.hidden**2 + 2 * c.hidden * c.ffn_hidden)  # projections + FFN
    attention = c.layers * 2 * T * c.hidden                                 # QK^T and AV, on the grid
    mlm = slots * (c.hidden**2 + c.hidden * c.vocab_size)                   # per predicted slot
    nsp = c.hidden**2 + 2 * c.hidden
    return 3 * 2 * (tokens * per_token + B * T * attention + B * (mlm + nsp))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--default-only", action="store_true",
                        help="only bertlite's default fp32 step against the baseline (a minute)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="let malloc reuse freed memory instead of returning it to the kernel")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give at least 1 step to time")
    kept = args.keep_freed_memory and keep_freed_memory()
    if args.keep_freed_memory and not kept:
        raise SystemExit("--keep-freed-memory needs glibc's malloc (Linux); run without it")
    batch, _ = book_batch()
    B, T = batch["tokens"].shape
    real = batch["mlm_weights"].sum().item() / B
    P = batch["mlm_weights"].shape[1]
    config = BERTConfig.preset("d2l", 20256)  # the book's vocabulary size, as in its figures
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print("malloc:", "freed memory kept for reuse" if kept else
          "default (freed blocks above 32 MiB go back to the kernel)")
    print(f"threads {torch.get_num_threads()}; matmul peak (2048^2): fp32 {peaks['fp32']:.0f}, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    tokens = batch["valid_lens"].sum().item()
    print(f"batch {B} x {T} positions ({tokens / B:.1f} real tokens on average), {P} prediction "
          f"slots ({real:.2f} real on average), vocabulary {config.vocab_size}")
    full, useful = step_flops(config, B, T, P), step_flops(config, B, T, real, tokens)
    print(f"model FLOPs per step: {full / 1e9:.0f} G with every position and slot (the book), "
          f"{useful / 1e9:.0f} G with real tokens and slots only\n")

    rows = [  # name, dropout, attention fused, loss fused, padding skipped, precision
        ("book-style step (baseline)", 0.2, False, False, False, "fp32"),
        ("from-scratch attention, plain loss", 0.0, False, False, True, "fp32"),
        ("fused attention, plain loss", 0.0, True, False, True, "fp32"),
        ("from-scratch attention, plain loss", 0.0, False, False, True, "bf16"),
        ("fused attention, plain loss", 0.0, True, False, True, "bf16"),
        ("default, but padding computed", 0.2, True, True, False, "fp32"),
        ("bertlite default (dropout 0.2)", 0.2, True, True, True, "fp32"),
        ("bertlite default (dropout 0.2)", 0.2, True, True, True, "bf16"),
    ]
    if args.default_only:
        rows = [rows[0], rows[6]]
    here = precisions_here(["fp32", "bf16"])
    rows = [row for row in rows if row[-1] in here]
    print(f"{'step':40s} {'precision':9s} {'dropout':>7s} {'pairs/s':>8s} {'ratio':>6s} {'GFLOP/s':>8s} "
          f"{'of peak':>7s} {'fresh MB':>8s}")
    page_mb = resource.getpagesize() / 2**20
    torch.manual_seed(0)  # rows[0], the baseline: the book's computation on the book's model
    baseline = step_fn(book_style(BERTModel(BERTConfig.preset("d2l", 20256))), batch, "fp32",
                       fused_loss=False, book_loss=True, optimizer=book_optimizer)
    for i, (name, dropout, fused_attn, fused_loss, skip, precision) in enumerate(rows[1:]):
        torch.manual_seed(0)
        net = BERTModel(BERTConfig.preset("d2l", 20256, dropout=dropout, fused_attention=fused_attn,
                                          skip_padding=skip))
        # Each row in turns with the baseline (a, b, a, b, ...): a shared machine's drifting speed
        # moves both alike, so the ratio holds even when the absolute figures move.
        faults = []
        base, sec = timed_together([baseline, step_fn(net, batch, precision, fused_loss)],
                                   repeat=args.repeat, faults=faults)
        if i == 0:  # the baseline's own line, from its first pairing
            print(f"{rows[0][0]:40s} {'fp32':9s} {0.2:7.1f} {B / base:8.0f} {1:5.2f}x "
                  f"{full / base / 1e9:8.0f} {full / base / 1e9 / peaks['fp32']:7.0%} "
                  f"{faults[0] * page_mb:8.0f}")
        flops = step_flops(config, B, T, real if fused_loss else P, tokens if skip else None)
        print(f"{name:40s} {precision:9s} {dropout:7.1f} {B / sec:8.0f} {base / sec:5.2f}x "
              f"{flops / sec / 1e9:8.0f} {flops / sec / 1e9 / peaks[precision]:7.0%} "
              f"{faults[1] * page_mb:8.0f}")

    # Dropout alone, forward only, on one (B, T, H) activation: bertlite's against nn.Dropout
    x = torch.randn(B, T, config.hidden)
    ours, theirs = Dropout(0.2).train(), torch.nn.Dropout(0.2).train()
    t_ours, t_theirs = timed_together([lambda: ours(x), lambda: theirs(x)], repeat=10 * args.repeat)
    print(f"\ndropout of a {B}x{T}x{config.hidden} activation: bertlite {t_ours * 1e3:.1f} ms, "
          f"nn.Dropout {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.1f}x)")


if __name__ == "__main__":
    main()
