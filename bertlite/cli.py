"""Command line: `python -m bertlite pretrain | data | download` (also the `bertlite` command).

`pretrain` writes a run directory: config.json, vocab.txt, metrics.jsonl, loss.png and
checkpoint.pt. `--resume RUN_DIR` continues an interrupted run from its last checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from .masking import MASKING
from .model import BERTConfig
from .train import TrainConfig

HELP = {  # one line per config field: every field is a flag
    "steps": "training steps (batches)", "batch_size": "global batch size (sentence pairs)",
    "lr": "peak learning rate", "optimizer": "adam (the book) or adamw",
    "weight_decay": "AdamW weight decay (matrices only)",
    "schedule": "constant (the book) or linear (warm-up then linear decay)",
    "warmup_steps": "linear warm-up steps", "clip_grad": "max gradient norm (0: no clipping)",
    "precision": "fp32, bf16 or fp16 autocast", "fused_loss": "fused MLM decoder + loss (faster)",
    "eval_every": "validate every N steps (0: at the end)",
    "checkpoint_every": "checkpoint every N steps (0: at the end)", "seed": "random seed",
    "hidden": "hidden size", "ffn_hidden": "feed-forward hidden size", "heads": "attention heads",
    "layers": "encoder blocks", "dropout": "dropout probability",
    "max_len": "rows of the position table (longest sequence the model accepts)",
    "segments": "segment (token type) ids", "activation": "relu (the book) or gelu (BERT)",
    "embedding_norm": "LayerNorm + dropout on the embeddings (BERT)",
    "tie_decoder": "tie the MLM decoder to the token embeddings (BERT)",
    "norm_eps": "LayerNorm epsilon", "init_std": "normal init std (omit: PyTorch's default init)",
    "fused_attention": "use F.scaled_dot_product_attention where it is a fused kernel",
}
# Defaults for the shipped corpus (956 pairs): the book's 50 steps of 512 would be 27 epochs
# of a tiny set at a learning rate too high for it.
SHIPPED_DEFAULTS = {"steps": 300, "batch_size": 64, "lr": 1e-3, "schedule": "linear",
                    "warmup_steps": 30, "eval_every": 50}


def _add_fields(parser, cls, skip=()):
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f"default {f.default}"
        if f.name in SHIPPED_DEFAULTS:
            default += f"; {SHIPPED_DEFAULTS[f.name]} on the shipped corpus"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{HELP[f.name]} ({default})")
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type).split(" ")[0], float)
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(),
                                help=f"{HELP[f.name]} ({default})")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bertlite", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="pre-train BERT (default: the shipped corpus, ~1 min)")
    pre.add_argument("--dataset", default="tinywiki", help="tinywiki (shipped) or wikitext-2")
    pre.add_argument("--data-dir", help="folder holding DATASET/wiki.*.tokens (default: ./data "
                     "or $BERTLITE_DATA)")
    pre.add_argument("--download", action="store_true", help="download WikiText-2 if missing")
    pre.add_argument("--run-dir", help="where to write the run (default runs/DATASET-TIME)")
    pre.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    pre.add_argument("--preset", default="d2l", help="d2l, bert-tiny, bert-mini, bert-small, bert-base")
    pre.add_argument("--seq-len", type=int, default=64, help="max tokens per sentence pair")
    pre.add_argument("--min-freq", type=int, help="vocabulary min count (2 shipped, 5 WikiText-2)")
    pre.add_argument("--dynamic-masking", action=argparse.BooleanOptionalAction, default=None,
                     help="new masks every epoch (default on for the shipped corpus)")
    pre.add_argument("--pair-task", choices=("nsp", "sop"), default="nsp",
                     help="sentence-pair task: next sentence (BERT) or sentence order (ALBERT) "
                     "(default nsp)")
    pre.add_argument("--masking", choices=tuple(MASKING), default="token",
                     help="which positions the MLM predicts: tokens, whole words, n-grams of "
                     "words (ALBERT) or geometric spans (SpanBERT) (default token)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fields(pre.add_argument_group("training (TrainConfig)"), TrainConfig)
    _add_fields(pre.add_argument_group("model (BERTConfig)"), BERTConfig, skip=("vocab_size",))
    d = sub.add_parser("data", help="build the pre-training data and print its statistics")
    d.add_argument("--dataset", default="tinywiki")
    d.add_argument("--data-dir")
    d.add_argument("--seq-len", type=int, default=64)
    dl = sub.add_parser("download", help="download WikiText-2 (checksum-verified)")
    dl.add_argument("--data-dir")
    return p


def _given(args, cls):
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def pretrain(args) -> dict:
    import torch

    from .data import load_pretrain_dataset
    from .model import BERTModel
    from .plot import plot_history
    from .train import summarize, train_bert
    from .vocab import Vocab

    if args.resume:  # everything comes from the run's own config.json; flags may extend --steps
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoint.pt").exists():
            sys.exit(f"error: {run_dir}/checkpoint.pt not found: nothing to resume")
        saved = json.loads((run_dir / "config.json").read_text())
        data, model_cfg = saved["data"], BERTConfig(**saved["model"])
        train_cfg = TrainConfig(**{**saved["train"], **_given(args, TrainConfig)})
        vocab = Vocab.load(run_dir / "vocab.txt")
    else:
        shipped = args.dataset == "tinywiki"
        data = {"name": args.dataset, "data_dir": args.data_dir, "max_len": args.seq_len,
                "min_freq": args.min_freq, "dynamic_masking": shipped if args.dynamic_masking
                is None else args.dynamic_masking, "seed": args.seed or 0,
                "pair_task": args.pair_task, "masking": args.masking}
        train_cfg = TrainConfig(**{**(SHIPPED_DEFAULTS if shipped else {}), **_given(args, TrainConfig)})
        vocab = None
    t0 = time.perf_counter()
    train_data = load_pretrain_dataset(**{k: v for k, v in data.items() if k != "data_dir"},
                                       data_dir=data["data_dir"], vocab=vocab,
                                       download=getattr(args, "download", False))
    # Validation: fixed token masks (seed 0) whatever the training strategy, so that MLM losses
    # compare between runs; the sentence-pair task is the one the model was trained on.
    val_data = load_pretrain_dataset(data["max_len"], data["name"], "valid", data["data_dir"],
                                     vocab=train_data.vocab, seed=0,
                                     pair_task=data.get("pair_task", "nsp"))
    print(f"data: {len(train_data)} training pairs, {len(val_data)} validation pairs, "
          f"vocabulary {len(train_data.vocab)} ({time.perf_counter() - t0:.2f} s)")
    if not args.resume:
        model_cfg = BERTConfig.preset(args.preset, len(train_data.vocab), **_given(args, BERTConfig))
        run_dir = Path(args.run_dir or f"runs/{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "checkpoint.pt").exists():
            sys.exit(f"error: {run_dir} already holds a run; use --resume {run_dir} to continue it")
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun, only rank 0 writes files
            run_dir.mkdir(parents=True, exist_ok=True)
            train_data.vocab.save(run_dir / "vocab.txt")
            (run_dir / "config.json").write_text(json.dumps(
                {"data": data, "model": model_cfg.to_dict(), "train": dataclasses.asdict(train_cfg)},
                indent=2) + "\n")
    torch.manual_seed(train_cfg.seed)
    net = BERTModel(model_cfg)
    history = train_bert(net, train_data, train_cfg, val_data, run_dir, resume=bool(args.resume),
                         progress=not args.no_progress)
    summary = summarize(history)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return summary
    plot_history(history, run_dir / "loss.png")
    ev = summary.get("eval", {})
    print(f"MLM loss {summary['mlm_loss']:.3f}, NSP loss {summary['nsp_loss']:.3f} (means over "
          f"{train_cfg.steps} steps), {summary['pairs_per_s']:.1f} sentence pairs/s")
    if ev:
        print(f"validation: MLM loss {ev['mlm_loss']:.3f} (perplexity {ev['perplexity']:.1f}), "
              f"MLM accuracy {ev['mlm_acc']:.3f}, NSP accuracy {ev['nsp_acc']:.3f}")
    print(f"wrote {run_dir}/: config.json vocab.txt metrics.jsonl loss.png checkpoint.pt")
    return summary


def data_summary(args) -> None:
    from .data import load_pretrain_dataset
    t0 = time.perf_counter()
    ds = load_pretrain_dataset(args.seq_len, args.dataset, data_dir=args.data_dir)
    seconds = time.perf_counter() - t0
    print(f"{args.dataset}: {len(ds)} sentence pairs of at most {args.seq_len} tokens, vocabulary "
          f"{len(ds.vocab)}, {ds.nsp_labels.mean():.1%} 'is next', "
          f"{ds.arrays['mlm_weights'].sum(1).mean():.2f} predictions per pair, built in {seconds:.2f} s")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            pretrain(args)
        elif args.command == "data":
            data_summary(args)
        else:
            from .wikitext import download_wikitext2
            print(f"WikiText-2 is in {download_wikitext2(args.data_dir)}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # a clear message, not a traceback
        sys.exit(f"error: {e}")
