"""Ship a WikiText-2 pre-training run as a small model folder, then measure the shipped files.

    python benchmarks/ship_wikitext2.py RUN_DIR [--out data/pretrained/wikitext2-bert]
        [--json data/results/wikitext2_model.json]

Writes to --out: model.safetensors (fp16), config.json, vocab.txt, the run's metrics.jsonl, and
loss.png (the curves with uniform and unigram reference lines). Then loads the *shipped* fp16
files back and scores them on the WikiText-2 validation split with fixed masks (seed 0, static),
beside a unigram model (training-split word counts, add-one smoothed) on the same masked words:
MLM perplexity and accuracy, NSP accuracy, and top-1 / top-5 accuracy by kind of masked word (the
20 commonest training tokens, ranks 21-100, and the rarer "content" words). Prints the figures
and writes them, with this command, to --json (notebooks 06 and 08 read the shipped one).
Needs WikiText-2 (../shared/data beside the checkout, or where `python -m bertlite download`
puts it: $BERTLITE_DATA, else data/).
"""
import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import wikitext2_dir
from bertlite.baselines import unigram, unigram_scores
from bertlite.data import load_pretrain_dataset
from bertlite.plot import plot_history
from bertlite.train import evaluate, load_pretrained, load_vocab, model_from_checkpoint, save_pretrained

GROUPS = (("20 commonest", 0, 20), ("ranks 21-100", 20, 100), ("content words (rank > 100)", 100, None))


def masked_word_scores(net, valid, counts, p_unigram):
    """Top-1 and top-5 accuracy of the model and of the unigram model, by group of masked word."""
    b = valid.arrays
    real = b["mlm_weights"] > 0
    with torch.no_grad():
        logits = net(b["tokens"], b["segments"], b["valid_lens"], b["pred_positions"]).mlm_logits[real]
    truth = b["mlm_labels"][real].numpy()
    top5 = logits.topk(5, dim=-1).indices.numpy()
    unigram_top5 = np.argsort(-p_unigram, kind="stable")[:5]
    rank_of = np.empty(len(counts), dtype=int)
    rank_of[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    rows = {}
    for name, lo, hi in (("all masked words", 0, None),) + GROUPS:
        sel = (rank_of[truth] >= lo) & (rank_of[truth] < (hi or len(counts)))
        t = truth[sel]
        rows[name] = {"share": float(sel.mean()), "n": int(sel.sum()),
                      "model_top1": float((top5[sel, 0] == t).mean()),
                      "model_top5": float((top5[sel] == t[:, None]).any(1).mean()),
                      "unigram_top1": float((unigram_top5[0] == t).mean()),
                      "unigram_top5": float(np.isin(t, unigram_top5).mean())}
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/pretrained/wikitext2-bert"))
    parser.add_argument("--json", type=Path, default=Path("data/results/wikitext2_model.json"))
    args = parser.parse_args()
    data_dir = wikitext2_dir()
    if data_dir is None:
        raise SystemExit("needs ../shared/data/wikitext-2 (or run `python -m bertlite download`)")

    run_config = json.loads((args.run_dir / "config.json").read_text())
    # Where WikiText-2 lay on the training machine is no part of the recipe (any checksum-verified
    # copy is the same data), and a path of this machine does not belong in a shipped file.
    run_config["data"]["data_dir"] = None
    history = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    net = model_from_checkpoint(args.run_dir / "checkpoint.pt")
    vocab = load_vocab(args.run_dir / "vocab.txt", size=net.config.vocab_size)
    save_pretrained(net, vocab, args.out, dtype=torch.float16)
    shutil.copy(args.run_dir / "metrics.jsonl", args.out / "metrics.jsonl")

    t = time.perf_counter()
    shipped, vocab = load_pretrained(args.out)
    load_seconds = time.perf_counter() - t
    seq_len = run_config["data"]["max_len"]
    train = load_pretrain_dataset(seq_len, "wikitext-2", data_dir=data_dir, vocab=vocab, seed=0)
    valid = load_pretrain_dataset(seq_len, "wikitext-2", "valid", data_dir, vocab=vocab, seed=0)
    counts, p_unigram = unigram(train, vocab)
    ev = evaluate(shipped, valid)
    masked_words = int((valid.arrays["mlm_weights"] > 0).sum())
    u = unigram_scores(train, valid)
    nsp = float(np.asarray(valid.nsp_labels, dtype=float).mean())
    steps = [r for r in history if "eval" not in r]
    result = {
        "command": "python benchmarks/ship_wikitext2.py " + " ".join(sys.argv[1:]),
        "run_config": run_config,
        "files_mb": round(sum(f.stat().st_size for f in args.out.iterdir()) / 1e6, 2),
        "load_seconds": round(load_seconds, 3),
        "training_steps": len(steps),
        "training_minutes": round(sum(r["seconds"] for r in steps) / 60, 1),
        "median_pairs_per_s": float(np.median([r["pairs_per_s"] for r in steps])),
        "validation_pairs": len(valid), "masked_words": masked_words,
        "model": {"mlm_loss": ev["mlm_loss"], "perplexity": ev["perplexity"], "mlm_acc": ev["mlm_acc"],
                  "nsp_acc": ev["nsp_acc"]},
        "unigram": u,
        "uniform": {"mlm_loss": math.log(len(vocab)), "perplexity": len(vocab)},
        "nsp_majority": max(nsp, 1 - nsp),
        "by_word_kind": masked_word_scores(shipped, valid, counts, p_unigram),
        "curve": [{"step": r["step"], **r["eval"]} for r in history if "eval" in r],
    }
    plot_history(history, args.out / "loss.png",
                 references={f"uniform guess (ln {len(vocab)})": math.log(len(vocab)),
                             "unigram model": u["mlm_loss"]})
    args.json.write_text(json.dumps(result, indent=1) + "\n")

    m, u = result["model"], result["unigram"]
    print(f"{args.out}: {result['files_mb']} MB, loaded in {load_seconds:.2f} s; "
          f"{result['training_steps']} steps, {result['training_minutes']} min of training steps")
    print(f"validation, {len(valid)} pairs, {result['masked_words']} masked words (seed 0):")
    print(f"  model:   perplexity {m['perplexity']:.1f}, MLM accuracy {m['mlm_acc']:.3f}, "
          f"NSP accuracy {m['nsp_acc']:.3f} (majority {result['nsp_majority']:.3f})")
    print(f"  unigram: perplexity {u['perplexity']:.1f}, accuracy {u['mlm_acc']:.3f}; "
          f"ratio {m['perplexity'] / u['perplexity']:.3f}; uniform {len(vocab)}")
    for name, r in result["by_word_kind"].items():
        print(f"  {name:>28}: {r['share']:.3f} of masked words; model top-1 {r['model_top1']:.3f} "
              f"top-5 {r['model_top5']:.3f}; unigram top-1 {r['unigram_top1']:.3f} top-5 {r['unigram_top5']:.3f}")
    print(f"wrote {args.out}/ and {args.json}")


if __name__ == "__main__":
    main()
