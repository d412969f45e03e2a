"""Command line: `python -m bertlite pretrain | data | download` (also the `bertlite` command).

`pretrain` writes a run directory: config.json, vocab.txt, metrics.jsonl, loss.png and
checkpoint.pt. `--resume RUN_DIR` continues an interrupted run from its last checkpoint;
Ctrl-C or SIGTERM finish the step, write the checkpoint and say how to resume.
A mistake of the user's ends as one line on stderr, exit status 1 (2 for a wrong flag);
`--debug` or BERTLITE_DEBUG=1 adds the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

from .checks import ConfigError, flag, one_line, read_json, write_atomic
from .download import digest
from .masking import MASKING
from .model import BERTConfig
from .rundir import Interrupted
from .train import TrainConfig, launched_as

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
    "skip_padding": "compute the encoder on real tokens only (the same numbers at every real token)",
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


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="bertlite", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("pretrain", help="pre-train BERT (default: the shipped corpus, ~1 min)",
                         parents=[common])
    # Data and model flags default to None, so that `--resume` can tell what was given.
    pre.add_argument("--dataset", help="tinywiki (shipped, the default) or wikitext-2")
    pre.add_argument("--data-dir", help="folder holding DATASET/wiki.*.tokens (default: ./data "
                     "or $BERTLITE_DATA)")
    pre.add_argument("--download", action="store_true", help="download WikiText-2 if missing")
    pre.add_argument("--run-dir", help="where to write the run (default runs/DATASET-TIME)")
    pre.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    pre.add_argument("--preset", help="d2l (the default), bert-tiny, bert-mini, bert-small, bert-base")
    pre.add_argument("--seq-len", type=int, help="max tokens per sentence pair (default 64)")
    pre.add_argument("--min-freq", type=int, help="vocabulary min count (2 shipped, 5 WikiText-2)")
    pre.add_argument("--dynamic-masking", action=argparse.BooleanOptionalAction, default=None,
                     help="new masks every epoch (default on for the shipped corpus)")
    pre.add_argument("--dynamic-pairs", action=argparse.BooleanOptionalAction, default=None,
                     help="new sentence pairs every epoch, not only new masks (implies "
                     "--dynamic-masking; default off)")
    pre.add_argument("--pair-task", choices=("nsp", "sop"),
                     help="sentence-pair task: next sentence (BERT) or sentence order (ALBERT) "
                     "(default nsp)")
    pre.add_argument("--masking", choices=tuple(MASKING),
                     help="which positions the MLM predicts: tokens, whole words, n-grams of "
                     "words (ALBERT) or geometric spans (SpanBERT) (default token)")
    pre.add_argument("--tokenizer", choices=("word", "wordpiece"),
                     help="word vocabulary (the book) or WordPiece pieces (BERT) (default word)")
    pre.add_argument("--vocab-size", type=int, metavar="N",
                     help="WordPiece: train a vocabulary of N pieces on the training split")
    pre.add_argument("--vocab-file", metavar="F",
                     help="use this vocab.txt: with wordpiece e.g. a real checkpoint's (cased when a "
                     "tokenizer_config.json beside it says so); with word another run's")
    pre.add_argument("--init-from", metavar="FOLDER",
                     help="start from a saved bertlite model, another run's folder (its weights; "
                     "--resume continues the run itself) or a Hugging Face BERT folder (its "
                     "vocab.txt is the tokenizer; missing MLM/NSP heads are created)")
    pre.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_fields(pre.add_argument_group("training (TrainConfig)"), TrainConfig)
    _add_fields(pre.add_argument_group("model (BERTConfig)"), BERTConfig, skip=("vocab_size",))
    d = sub.add_parser("data", help="build the pre-training data and print its statistics",
                       parents=[common])
    d.add_argument("--dataset", default="tinywiki")
    d.add_argument("--data-dir")
    d.add_argument("--seq-len", type=int, default=64)
    dl = sub.add_parser("download", help="download WikiText-2 (checksum-verified)",
                        parents=[common])
    dl.add_argument("--data-dir")
    return p


def _given(args, cls):
    # BERTConfig.vocab_size is no flag (the vocabulary gives it); --vocab-size is WordPiece's.
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name != "vocab_size" and getattr(args, f.name, None) is not None}


# The flags that fix the model or its data: a resumed run must keep them (config.json key, default).
DATA_FLAGS = {"dataset": ("name", "tinywiki"), "seq_len": ("max_len", 64),
              "min_freq": ("min_freq", None), "dynamic_masking": ("dynamic_masking", None),
              "dynamic_pairs": ("dynamic_pairs", False),
              "pair_task": ("pair_task", "nsp"), "masking": ("masking", "token"),
              "tokenizer": ("tokenizer", "word"), "vocab_size": ("vocab_size", None),
              "vocab_file": ("vocab_file", None), "init_from": ("init_from", None)}


# The data section of a run's config.json: what each key may hold (types, None, or the choices).
SAVED_DATA = {"name": (str,), "data_dir": (str, None), "max_len": (int,), "min_freq": (int, None),
              "seed": (int,), "vocab_size": (int, None), "vocab_file": (str, None),
              "init_from": (str, None), "dynamic_masking": (bool,), "dynamic_pairs": (bool,),
              "pair_task": ("nsp", "sop"), "tokenizer": ("word", "wordpiece"),
              "masking": tuple(MASKING)}


def _fits(value, allowed) -> bool:
    if value is None or not isinstance(allowed[0], type):
        return value in allowed
    # bool is an int to Python, but true is no sequence length
    return isinstance(value, allowed[0]) and (allowed[0] is bool or not isinstance(value, bool))


def _check_saved_data(data, path) -> None:
    """One line naming `path` for an edited or foreign value, before it reaches the data code."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"{path}: data is {data!r}: not a bertlite run, or edited")
    for key, allowed in SAVED_DATA.items():
        if key in data and not _fits(data[key], allowed):
            names = {bool: "true or false", int: "a whole number", str: "a string", None: "null"}
            expected = " or ".join(names.get(a, repr(a)) for a in allowed)
            raise ValueError(f"{path}: data.{key} is {data[key]!r}, not {expected}: not a "
                             "bertlite run, or edited")


def _resume_config(args):
    """(data, model config, train config, saved config.json) of the run in `args.resume`.
    Model and data flags must repeat the run's values; training flags change it (recorded)."""
    from .data import default_min_freq
    run_dir = Path(args.resume)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--resume {run_dir}: " + ("a file, not a run folder" if
                                run_dir.exists() else "no such folder, nothing to resume"))
    if not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir}/checkpoint.pt not found: nothing to resume (start "
                                f"a new run with --run-dir)")
    if args.run_dir is not None:  # a run lives in one folder: --run-dir would be ignored
        raise ValueError(f"--resume {run_dir} continues in its own folder: drop --run-dir "
                         f"{args.run_dir} (or start a new run with --run-dir alone)")
    saved = read_json(run_dir / "config.json", ("data", "model", "train"))
    model_cfg = BERTConfig.from_file(run_dir / "config.json", "model")
    data = dict(saved["data"])  # a copy: `saved` stays what the run was
    _check_saved_data(data, run_dir / "config.json")  # a typo there would train silently wrong
    if data.get("dynamic_pairs") and not data.get("dynamic_masking"):
        raise ValueError(f"{run_dir}/config.json: dynamic_pairs without dynamic_masking: not a "
                         "bertlite run, or edited")
    given = {name: getattr(args, name) for name in DATA_FLAGS if getattr(args, name) is not None}
    # The model's fields first: its vocab_size must not hide the data's --vocab-size.
    was = {k: v for k, v in model_cfg.to_dict().items() if k != "vocab_size"}
    was.update(preset=saved.get("preset"), seed=saved["train"].get("seed"))
    was.update({name: data.get(key, default) for name, (key, default) in DATA_FLAGS.items()})
    was["min_freq"] = was["min_freq"] or default_min_freq(was["dataset"])
    given.update(_given(args, BERTConfig), **{k: getattr(args, k) for k in ("preset", "seed")
                                             if getattr(args, k) is not None})
    changed = [f"{flag(k)} {v} (the run has {was.get(k)})" for k, v in given.items() if v != was.get(k)]
    if changed:
        raise ValueError(f"--resume {run_dir} cannot change the model or its data: "
                         f"{'; '.join(changed)}. Drop these flags, or start a new run with --run-dir")
    try:
        TrainConfig(**saved["train"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{run_dir}/config.json: {e}: not a bertlite run, or edited") from None
    train_cfg = TrainConfig(**{**saved["train"], **_given(args, TrainConfig)})  # the flags' errors
    if args.data_dir is not None and args.data_dir != data.get("data_dir"):
        # The data may have moved (the vocabulary stays the run's): allowed, said and recorded
        print(f"data: reading --data-dir {args.data_dir} instead of the run's "
              f"{data.get('data_dir') or 'shipped data'} (recorded in {run_dir}/config.json)")
        data["data_dir"] = args.data_dir
    return data, model_cfg, train_cfg, saved


def pretrain(args) -> dict:
    import torch

    from .baselines import unigram_scores
    from .data import load_pretrain_dataset
    from .model import BERTModel
    from .plot import plot_history
    from .rundir import check_new_run_dir, claiming
    from .train import load_checkpoint, load_init, load_vocab, summarize, train_bert
    from .vocab import Vocab

    rank0 = launched_as()[0] == 0  # under torchrun, only rank 0 writes files
    init_net = None  # the model of --init-from (the checkpoint holds it on --resume)
    if args.resume:  # everything comes from the run's own config.json; flags may extend --steps
        run_dir = Path(args.resume)
        data, model_cfg, train_cfg, saved = _resume_config(args)
        state = load_checkpoint(run_dir / "checkpoint.pt")  # readable, before any work
        done = state["step"]  # load_checkpoint checked its parts
        try:  # the weights must be this run's model, or config.json is rewritten for nothing
            BERTModel(model_cfg).load_state_dict(state["model"])
        except (RuntimeError, TypeError, AttributeError) as e:
            first = next((x.strip() for x in str(e).splitlines()[1:] if x.strip()), str(e))[:240]
            raise ValueError(f"{run_dir}/checkpoint.pt does not hold the model of its config.json "
                             f"({first}): not this run's checkpoint, or edited") from None
        del state
        if train_cfg.steps < done:
            raise ConfigError(f"--steps {train_cfg.steps} is less than the {done} steps this run "
                              "has trained: give more, or leave --steps out")
        vocab = load_vocab(run_dir / "vocab.txt", size=model_cfg.vocab_size)  # word or WordPiece
        if saved.get("vocab_sha256") not in (None, digest(run_dir / "vocab.txt")):
            raise ValueError(f"{run_dir}/vocab.txt is not the file this run started with (its "
                             "sha256 differs from config.json's vocab_sha256): restore it; under a "
                             "trained model an edited vocabulary maps ids to other words")
    else:
        shipped = (args.dataset or "tinywiki") == "tinywiki"
        if args.dynamic_pairs and args.dynamic_masking is False:
            raise ConfigError("--dynamic-pairs needs new masks every epoch: drop --no-dynamic-masking")
        masks_every_epoch = shipped or bool(args.dynamic_pairs)
        data = {"name": args.dataset or "tinywiki", "data_dir": args.data_dir,
                "max_len": 64 if args.seq_len is None else args.seq_len, "min_freq": args.min_freq,
                "dynamic_masking": masks_every_epoch if args.dynamic_masking is None
                else args.dynamic_masking, "dynamic_pairs": bool(args.dynamic_pairs),
                "seed": args.seed or 0, "pair_task": args.pair_task or "nsp",
                "masking": args.masking or "token", "tokenizer": args.tokenizer or "word",
                "vocab_size": args.vocab_size, "vocab_file": args.vocab_file}
        train_cfg = TrainConfig(**{**(SHIPPED_DEFAULTS if shipped else {}), **_given(args, TrainConfig)})
        if args.min_freq is not None and (args.vocab_file or args.tokenizer == "wordpiece"):
            raise ConfigError("--min-freq sets which words enter a word vocabulary built from the "
                              "corpus: it does nothing with --vocab-file or --tokenizer wordpiece; "
                              "drop it")
        if getattr(args, "download", False) and shipped:
            raise ConfigError("--download fetches WikiText-2; the shipped tinywiki needs no "
                              "download: drop --download, or add --dataset wikitext-2")
        vocab = None
        if args.init_from:  # the checkpoint fixes the model and the vocabulary
            clash = [flag(k) for k in ("preset", "tokenizer", "vocab_size", "vocab_file", "min_freq",
                                       *_given(args, BERTConfig)) if getattr(args, k) is not None]
            if clash:
                raise ConfigError(f"--init-from brings its own model and vocabulary: drop "
                                  f"{', '.join(clash)}")
            torch.manual_seed(train_cfg.seed)  # the heads it lacks are initialised here
            try:
                init_net, vocab = load_init(args.init_from)
            except (OSError, ImportError) as e:  # no such folder, or a package not installed
                raise FileNotFoundError(f"--init-from {args.init_from}: {one_line(e)}") from None
            data.update(init_from=args.init_from, vocab_size=None, vocab_file=None,
                        tokenizer="word" if isinstance(vocab, Vocab) else "wordpiece")
        # Every model flag is checked now, before the data is built (which can take minutes).
        probe = init_net.config if init_net is not None else BERTConfig.preset(
            args.preset or "d2l", 1, **_given(args, BERTConfig))
        _check_model_fits(probe, counted=False)  # the vocabulary is not built yet
        if args.min_freq is not None and args.min_freq < 1:
            raise ConfigError(f"--min-freq must be >= 1, got {args.min_freq}")
        if not 5 <= data["max_len"] <= probe.max_len:
            raise ConfigError(f"--seq-len must be between 5 (<cls> a <sep> b <sep>) and the "
                              f"{probe.max_len} rows of the position table (--max-len), got "
                              f"{data['max_len']}")
        run_dir = Path(args.run_dir or f"runs/{data['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
        if rank0:
            check_new_run_dir(run_dir)
    t0 = time.perf_counter()
    train_data = load_pretrain_dataset(**{k: v for k, v in data.items()
                                          if k not in ("data_dir", "init_from")},
                                       data_dir=data["data_dir"], vocab=vocab,
                                       download=getattr(args, "download", False))
    # Validation: fixed token masks (seed 0) whatever the training strategy, so that MLM losses
    # compare between runs; the sentence-pair task is the one the model was trained on.
    val_data = load_pretrain_dataset(data["max_len"], data["name"], "valid", data["data_dir"],
                                     vocab=train_data.vocab, seed=0,
                                     pair_task=data.get("pair_task", "nsp"))
    _warn_about_data(train_data, val_data, train_cfg.batch_size)
    _show_warnings()
    print(f"data: {len(train_data)} training pairs, {len(val_data)} validation pairs, "
          f"vocabulary {len(train_data.vocab)} ({time.perf_counter() - t0:.2f} s)")
    if args.resume:
        changes = {k: v for k, v in dataclasses.asdict(train_cfg).items()
                   if v != saved["train"].get(k)}
        if data.get("data_dir") != saved["data"].get("data_dir"):
            changes["data_dir"] = data["data_dir"]
        config = {**saved, "train": dataclasses.asdict(train_cfg), "data": data}
        if changes:  # so that a later resume, and the reader, know what this run really did
            config["changes"] = [*saved.get("changes", []), {"at_step": done, **changes}]
    else:
        model_cfg = init_net.config if init_net is not None else BERTConfig.preset(
            args.preset or "d2l", len(train_data.vocab), **_given(args, BERTConfig))
        _check_model_fits(model_cfg)
        config = {"data": data, "model": model_cfg.to_dict(), "train": dataclasses.asdict(train_cfg),
                  "preset": None if init_net is not None else args.preset or "d2l"}
    with claiming(run_dir, new=not args.resume) if rank0 else contextlib.nullcontext():
        if rank0:
            if not args.resume:
                train_data.vocab.save(run_dir / "vocab.txt")
                config["vocab_sha256"] = digest(run_dir / "vocab.txt")  # checked on --resume
            write_atomic(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
        torch.manual_seed(train_cfg.seed)
        net = init_net if init_net is not None else BERTModel(model_cfg)
        history = train_bert(net, train_data, train_cfg, val_data, run_dir, resume=bool(args.resume),
                             progress=not args.no_progress, eval_first=init_net is not None)
        summary = summarize(history)
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return summary
        V = net.config.vocab_size
        u = unigram_scores(train_data, val_data)  # word counts alone, on the same masked words
        plot_history(history, run_dir / "loss.png", references={
            f"uniform guess (ln {V})": math.log(V), "unigram model": u["mlm_loss"]})
    ev = summary.get("eval", {})
    print(f"MLM loss {summary['mlm_loss']:.3f}, NSP loss {summary['nsp_loss']:.3f} (means over "
          f"{train_cfg.steps} steps), {summary['pairs_per_s']:.1f} sentence pairs/s")
    name = "SOP" if data.get("pair_task") == "sop" else "NSP"
    first = next((r["eval"] for r in history if r["step"] == 0 and "eval" in r), None)
    for when, e in (("before training", first), ("", ev)):
        if e:
            print(f"validation{' ' + when if when else ''}: MLM loss {e['mlm_loss']:.3f} (perplexity "
                  f"{e['perplexity']:.1f}), MLM accuracy {e['mlm_acc']:.3f}, {name} accuracy "
                  f"{e['nsp_acc']:.3f}")
    if ev:
        print(f"unigram model (training-split word counts): MLM loss {u['mlm_loss']:.3f} "
              f"(perplexity {u['perplexity']:.1f}), MLM accuracy {u['mlm_acc']:.3f}")
    print(f"wrote {run_dir}/: config.json vocab.txt metrics.jsonl loss.png checkpoint.pt")
    return summary


def _check_model_fits(c: BERTConfig, counted: bool = True) -> None:
    """Refuse a model whose training state cannot fit in this machine's memory before torch
    tries to allocate it, naming the flag that makes it big (a typo like --max-len 1000000000).
    `counted=False`: the vocabulary is not counted yet (its size in `c` is a stand-in)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): let torch say it
        return
    parts = {  # parameters, by the flag that sets them
        "--max-len": c.max_len * c.hidden,
        "--vocab-size (or the vocabulary's size)":
            c.vocab_size * c.hidden * (1 if c.tie_decoder else 2),
        "--hidden, --ffn-hidden or --layers":
            c.layers * (4 * c.hidden**2 + 2 * c.hidden * c.ffn_hidden),
    }
    need = 16 * sum(parts.values())  # weights, gradients and Adam's two moments, 4 bytes each
    if need > memory:
        flag_name = max(parts, key=parts.get)
        raise ConfigError(f"the model would have about {sum(parts.values()):,} parameters: training "
                          f"needs {need / 1e9:,.0f} GB (weights, gradients, Adam's two moments), "
                          f"this machine has {memory / 1e9:,.0f} GB; most of it comes from "
                          f"{flag_name} (max_len {c.max_len}, "
                          + (f"vocabulary {c.vocab_size}, " if counted else "") + f"hidden "
                          f"{c.hidden}, ffn_hidden {c.ffn_hidden}, layers {c.layers}): lower it")


def data_summary(args) -> None:
    from .data import load_pretrain_dataset
    t0 = time.perf_counter()
    ds = load_pretrain_dataset(args.seq_len, args.dataset, data_dir=args.data_dir)
    seconds = time.perf_counter() - t0
    print(f"{args.dataset}: {len(ds)} sentence pairs of at most {args.seq_len} tokens, vocabulary "
          f"{len(ds.vocab)}, {ds.nsp_labels.mean():.1%} 'is next', "
          f"{ds.arrays['mlm_weights'].sum(1).mean():.2f} predictions per pair, built in {seconds:.2f} s")


def _warn_about_data(train_data, val_data, batch_size: int) -> None:
    """Warnings (not errors: a tiny experiment may want this) for data a run learns little from."""
    import torch

    from .masking import token_id
    v = train_data.vocab
    tokens, lens = train_data.arrays["tokens"], train_data.arrays["valid_lens"]
    real = torch.arange(tokens.shape[1]) < lens[:, None]
    share = ((tokens == token_id(v, v.unk_token)) & real).sum().item() / max(1, real.sum().item())
    if share > 0.3:
        warnings.warn(f"{share:.0%} of the training tokens are {v.unk_token}: the vocabulary "
                      "does not fit this corpus (another --vocab-file, or a larger --vocab-size)")
    if len(train_data) < batch_size:
        warnings.warn(f"only {len(train_data)} training pairs, fewer than --batch-size "
                      f"{batch_size}: every step sees all of them")
    if len(val_data) < 20:
        warnings.warn(f"only {len(val_data)} validation pairs: validation figures will be mostly "
                      "noise (longer --seq-len, or a bigger corpus)")


HELD_WARNINGS: list[str] = []


def _show_warnings() -> None:
    for message in HELD_WARNINGS:
        print(f"warning: {message}", file=sys.stderr)
    HELD_WARNINGS.clear()


def leave_process_group() -> None:
    """Under torchrun, leave the process group that the trainer joined, once the run is done:
    left to the interpreter's exit, gloo's threads can abort a process whose work is finished
    (SIGABRT, "terminate called without an active exception"), failing the whole launch."""
    dist = sys.modules.get("torch.distributed")  # never imported: nothing to leave
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, value in vars(args).items():  # `--run-dir ""` would quietly mean "the default"
        if isinstance(value, str) and not value.strip() and name != "command":
            parser.error(f"--{name.replace('_', '-')} is empty: give a value or leave the flag out")
    debug = args.debug or os.environ.get("BERTLITE_DEBUG") == "1"
    HELD_WARNINGS.clear()
    try:
        with warnings.catch_warnings():
            # Held until the run really starts (`_show_warnings`): a run that then fails on
            # another input ends in its one error line alone.
            warnings.showwarning = lambda message, *a, **k: HELD_WARNINGS.append(str(message))
            if args.command == "pretrain":
                pretrain(args)
                leave_process_group()
            elif args.command == "data":
                data_summary(args)
            else:
                from .wikitext import download_wikitext2
                print(f"WikiText-2 is in {download_wikitext2(args.data_dir)}")
    except Interrupted as e:  # the checkpoint is written: say how to go on, in one line
        print(f"{e}: checkpoint written; continue with: python -m bertlite pretrain --resume "
              f"{e.run_dir}", file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted: nothing more was written (a run's last checkpoint stays whole)",
              file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, RuntimeError, FloatingPointError) as e:  # the user's mistakes
        if debug:
            traceback.print_exc()
        asked = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", str(e))
        if asked:  # torch's own words name neither the input nor the fix
            sys.exit(f"error: out of memory: torch could not get {int(asked[1]) / 1e9:,.1f} GB at "
                     "once; a smaller --batch-size, --seq-len or model needs less")
        if isinstance(e, ConfigError):  # a flag out of its range: a usage error
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        sys.exit(f"error: {one_line(e)}")
