"""The book's pre-training recipe on the real WikiText-2, done right, timed.

    python benchmarks/pretrain_wikitext2.py [--steps 50] [--precision fp32 bf16]

Batch 512, max_len 64, hidden 128, FFN 256, 2 heads, 2 layers, dropout 0.2, Adam at 0.01 constant,
50 steps, seed 0, with the correct MLM loss. Prints sentence pairs/s, the mean MLM and NSP losses
over the 50 steps (as the book prints them; our MLM loss is over real masked tokens only) and the
validation MLM loss. A few book-style steps (nn.Dropout, logits for every slot) are timed in the
same run for the ratio. With both precisions, last, how far bf16's losses stray from fp32's:
both runs start from the same weights and see the same batches and the same dropout masks.
"""
import argparse

import torch

from _common import book_optimizer, book_style, precisions_here, step_fn, timed, wikitext2_dir
from bertlite.data import load_pretrain_dataset
from bertlite.model import BERTConfig, BERTModel
from bertlite.train import TrainConfig, summarize, train_bert


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    args = parser.parse_args()
    data_dir = wikitext2_dir()
    if data_dir is None:
        raise SystemExit("needs WikiText-2: ../shared/data/wikitext-2 beside the checkout, or "
                         "run `python -m bertlite download` first")
    train = load_pretrain_dataset(64, "wikitext-2", data_dir=data_dir, min_freq=5)
    valid = load_pretrain_dataset(64, "wikitext-2", "valid", data_dir, vocab=train.vocab, seed=0)
    print(f"WikiText-2: {len(train)} training pairs, {len(valid)} validation pairs, "
          f"vocabulary {len(train.vocab)}; threads {torch.get_num_threads()}")

    torch.manual_seed(0)
    book = book_style(BERTModel(BERTConfig.preset("d2l", len(train.vocab))))
    baseline = timed(step_fn(book, train[:512], "fp32", fused_loss=False, book_loss=True,
                             optimizer=book_optimizer), repeat=3)
    print(f"book-style step, fp32: {512 / baseline:.0f} pairs/s (median of 3 steps)")

    runs = {}
    for precision in precisions_here(args.precision):
        torch.manual_seed(0)
        net = BERTModel(BERTConfig.preset("d2l", len(train.vocab)))
        cfg = TrainConfig(steps=args.steps, batch_size=512, lr=0.01, precision=precision, seed=0)
        history = train_bert(net, train, cfg, valid, progress=False)
        s, runs[precision] = summarize(history), history
        ev = s["eval"]
        print(f"{precision}: {s['pairs_per_s']:.0f} pairs/s ({s['pairs_per_s'] * baseline / 512:.2f}x "
              f"the book-style step); means over {args.steps} steps: MLM loss {s['mlm_loss']:.3f}, "
              f"NSP loss {s['nsp_loss']:.3f}; last 10 steps MLM "
              f"{sum(r['mlm_loss'] for r in history[-11:-1]) / 10:.3f}; validation: MLM loss "
              f"{ev['mlm_loss']:.3f} (perplexity {ev['perplexity']:.0f}), NSP accuracy {ev['nsp_acc']:.3f}")
    if {"fp32", "bf16"} <= set(runs):
        steps = [[r for r in runs[p] if "eval" not in r] for p in ("fp32", "bf16")]
        gaps = {k: max(abs(a[k] - b[k]) for a, b in zip(*steps)) for k in ("mlm_loss", "nsp_loss")}
        ev32, ev16 = (summarize(runs[p])["eval"] for p in ("fp32", "bf16"))
        print(f"bf16 against fp32: largest gap over the {args.steps} steps MLM loss "
              f"{gaps['mlm_loss']:.4f}, NSP loss {gaps['nsp_loss']:.4f}; validation MLM loss "
              f"{ev16['mlm_loss'] - ev32['mlm_loss']:+.4f}, MLM accuracy "
              f"{ev16['mlm_acc'] - ev32['mlm_acc']:+.4f}")


if __name__ == "__main__":
    main()
