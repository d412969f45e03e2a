"""Forward + backward + Adam step of the book's model (the d2l preset) at batch 512, max_len 64.

    python benchmarks/model_step.py [--repeat 5] [--default-only]

Prints sentence pairs/s for the from-scratch vs the fused attention, the plain vs the fused MLM
loss, fp32 vs bf16 autocast, each as a ratio to the book-style step measured in the same run,
with the model FLOPs per step and the fraction of this machine's measured matmul peak. Each row
is timed in turns with the baseline, so that a shared machine's drifting speed moves both alike. Last, the
time of one dropout call, bertlite's `Dropout` against `nn.Dropout`.
"""
import argparse

import torch

from _common import book_style, matmul_peak, step_fn, timed_together, wikitext2_dir
from bertlite.data import load_pretrain_dataset
from bertlite.model import BERTConfig, BERTModel, Dropout


def step_flops(c: BERTConfig, B: int, T: int, slots: float) -> float:
    """Matmul FLOPs of one training step: forward 2 per multiply-add, backward twice that."""
    per_token = c.layers * (4 * c.hidden**2 + 2 * c.hidden * c.ffn_hidden)  # projections + FFN
    attention = c.layers * 2 * T * c.hidden                                 # QK^T and AV
    mlm = slots * (c.hidden**2 + c.hidden * c.vocab_size)                   # per predicted slot
    nsp = c.hidden**2 + 2 * c.hidden
    return 3 * 2 * (B * T * (per_token + attention) + B * (mlm + nsp))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--default-only", action="store_true",
                        help="only bertlite's default fp32 step against the baseline (a minute)")
    args = parser.parse_args()
    data_dir = wikitext2_dir()
    ds = load_pretrain_dataset(64, "wikitext-2" if data_dir else "tinywiki", data_dir=data_dir)
    batch = ds[:512]
    B, T = batch["tokens"].shape
    real = batch["mlm_weights"].sum().item() / B
    P = batch["mlm_weights"].shape[1]
    config = BERTConfig.preset("d2l", 20256)  # the book's vocabulary size, as in its figures
    batch = {k: (v % 20256 if k in ("tokens", "mlm_labels") else v) for k, v in batch.items()}
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"threads {torch.get_num_threads()}; matmul peak (2048^2): fp32 {peaks['fp32']:.0f}, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"batch {B} x {T} tokens, {P} prediction slots ({real:.2f} real on average), "
          f"vocabulary {config.vocab_size}")
    full, useful = step_flops(config, B, T, P), step_flops(config, B, T, real)
    print(f"model FLOPs per step: {full / 1e9:.0f} G with every slot decoded (the book), "
          f"{useful / 1e9:.0f} G with real slots only\n")

    rows = [  # name, dropout, attention fused, loss fused, precision, book-style
        ("book-style step (baseline)", 0.2, False, False, "fp32", True),
        ("from-scratch attention, plain loss", 0.0, False, False, "fp32", False),
        ("fused attention, plain loss", 0.0, True, False, "fp32", False),
        ("from-scratch attention, plain loss", 0.0, False, False, "bf16", False),
        ("fused attention, plain loss", 0.0, True, False, "bf16", False),
        ("bertlite default (dropout 0.2)", 0.2, True, True, "fp32", False),
        ("bertlite default (dropout 0.2)", 0.2, True, True, "bf16", False),
    ]
    if args.default_only:
        rows = [rows[0], rows[5]]
    print(f"{'step':40s} {'precision':9s} {'dropout':>7s} {'pairs/s':>8s} {'ratio':>6s} {'GFLOP/s':>8s} {'of peak':>7s}")
    torch.manual_seed(0)  # rows[0], the baseline: the book's computation on the book's model
    baseline = step_fn(book_style(BERTModel(BERTConfig.preset("d2l", 20256))), batch, "fp32",
                       fused_loss=False, book_loss=True)
    for i, (name, dropout, fused_attn, fused_loss, precision, _) in enumerate(rows[1:]):
        torch.manual_seed(0)
        net = BERTModel(BERTConfig.preset("d2l", 20256, dropout=dropout, fused_attention=fused_attn))
        # Each row in turns with the baseline (a, b, a, b, ...): a shared machine's drifting speed
        # moves both alike, so the ratio holds even when the absolute figures move.
        base, sec = timed_together([baseline, step_fn(net, batch, precision, fused_loss)], repeat=args.repeat)
        if i == 0:  # the baseline's own line, from its first pairing
            print(f"{rows[0][0]:40s} {'fp32':9s} {0.2:7.1f} {B / base:8.0f} {1:5.2f}x "
                  f"{full / base / 1e9:8.0f} {full / base / 1e9 / peaks['fp32']:7.0%}")
        flops = useful if fused_loss else full
        print(f"{name:40s} {precision:9s} {dropout:7.1f} {B / sec:8.0f} {base / sec:5.2f}x "
              f"{flops / sec / 1e9:8.0f} {flops / sec / 1e9 / peaks[precision]:7.0%}")

    # Dropout alone, forward only, on one (B, T, H) activation: bertlite's against nn.Dropout
    x = torch.randn(B, T, config.hidden)
    ours, theirs = Dropout(0.2).train(), torch.nn.Dropout(0.2).train()
    t_ours, t_theirs = timed_together([lambda: ours(x), lambda: theirs(x)], repeat=10 * args.repeat)
    print(f"\ndropout of a {B}x{T}x{config.hidden} activation: bertlite {t_ours * 1e3:.1f} ms, "
          f"nn.Dropout {t_theirs * 1e3:.1f} ms ({t_theirs / t_ours:.1f}x)")


if __name__ == "__main__":
    main()
