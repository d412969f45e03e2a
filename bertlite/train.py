"""Pre-training: devices, data parallelism, the learning-rate schedule, the training loop,
evaluation and checkpoints.

One process: the model runs on the CPU, Apple's `mps`, one GPU, or all visible GPUs through
`nn.DataParallel`. Several processes (`torchrun --nproc_per_node=N ...`): each runs a replica
wrapped in `DistributedDataParallel` on its own slice of every global batch.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from tqdm import tqdm

from .checks import (ConfigError, check_choice, check_range, check_types, load_safetensors,
                     load_torch, write_atomic)
from .loss import fused_mlm_loss, nsp_accuracy, nsp_loss, pretrain_loss
from .model import BERTConfig, BERTModel, evaluating
from .rundir import Interrupted, stopping_on_signals

METRICS = ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")


def devices() -> list[torch.device]:
    """All GPUs, else Apple's `mps`, else the CPU (the book's `try_all_gpus()` returns [] here
    and its trainer then crashes on `devices[0]`). Explained in notebooks/06_pretraining.ipynb.
    """
    if torch.cuda.is_available():
        return [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        return [torch.device("mps")]
    return [torch.device("cpu")]


@dataclass
class TrainConfig:
    """How to train. The defaults are the book's recipe (with a correct MLM loss)."""
    steps: int = 50
    batch_size: int = 512          # global: split across GPUs or processes
    lr: float = 0.01
    optimizer: str = "adam"        # "adam" (the book) or "adamw" (decay on weight matrices only)
    weight_decay: float = 0.01     # used by adamw
    schedule: str = "constant"     # "constant" (the book) or "linear": warm-up, then decay to 0
    warmup_steps: int = 0
    clip_grad: float = 0.0         # max gradient norm; 0 turns clipping off
    precision: str = "fp32"        # "fp32", "bf16" or "fp16" autocast
    fused_loss: bool = True        # bertlite.loss.fused_mlm_loss: same numbers, less time
    eval_every: int = 0            # steps between validations; 0: at the end only
    checkpoint_every: int = 0      # steps between checkpoints; 0: at the end only
    seed: int = 0

    def __post_init__(self):  # a wrong value fails here, not as a silently wrong run
        check_types(self)
        for name in ("steps", "batch_size"):
            check_range(self, name, 1, 2**31 - 1)  # past it, torch and Python fail obscurely
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            check_range(self, name, 0)
        check_range(self, "seed", 0, 2**63 - 1, why="torch's seeds are 64-bit")
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "weight_decay", 0)
        check_range(self, "clip_grad", 0, why="0 turns clipping off; a negative norm ascends")
        check_choice(self, "optimizer", ("adam", "adamw"))
        check_choice(self, "schedule", ("constant", "linear"))
        check_choice(self, "precision", ("fp32", "bf16", "fp16"))
        if self.warmup_steps >= self.steps:
            warnings.warn(f"--warmup-steps {self.warmup_steps} >= --steps {self.steps}: the "
                          f"learning rate never reaches --lr {self.lr}", stacklevel=3)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` (0-based): a pure function, so a checkpoint needs only the step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "linear":
        return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup_steps))
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choose 'constant' or 'linear'")


def make_optimizer(named_parameters, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over (name, parameter) pairs, e.g. `net.named_parameters()`."""
    named = list(named_parameters)
    # One fused kernel updates every parameter (instead of a dozen passes over all of them): the
    # same update up to rounding in the last bit, three times quicker on the CPU.
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named)
    if cfg.optimizer == "adam":
        return torch.optim.Adam([p for _, p in named], lr=cfg.lr, fused=fused)
    if cfg.optimizer == "adamw":  # no decay on biases, LayerNorm gains or embeddings' rows
        decay = [p for n, p in named if p.dim() == 2 and "embeddings" not in n]
        rest = [p for n, p in named if not (p.dim() == 2 and "embeddings" not in n)]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                  {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, fused=fused)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'adam' or 'adamw'")


def launched_as() -> tuple[int, int]:
    """(rank, world size) as torchrun's environment says: (0, 1) unless WORLD_SIZE is above 1.
    The command line and the trainer both read it here, so they agree on who writes files."""
    names = {"WORLD_SIZE": "1", "RANK": "0"}
    try:
        world, rank = (int(os.environ.get(k, d)) for k, d in names.items())
    except ValueError:
        got = ", ".join(f"{k}={os.environ.get(k)!r}" for k in names if k in os.environ)
        raise ConfigError(f"{got}: torchrun sets WORLD_SIZE and RANK to whole numbers; unset them "
                          "to train in one process, or launch with torchrun") from None
    return (0, 1) if world <= 1 else (rank, world)


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when launched by torchrun."""
    if launched_as()[1] == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def _all_sum(x: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def autocast(device: torch.device, precision: str):
    """Autocast for a precision name: "fp32" (off), "bf16" or "fp16"."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(dtypes)}")
    return torch.autocast(device.type, dtype=dtypes[precision] or torch.float32,
                          enabled=dtypes[precision] is not None)


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX-512 or AMX). Without them (AVX2 only)
    bf16 matrix products take a slow path: 0.17 GFLOP/s for a 2048^2 product against 67 in fp32,
    measured on an AVX2 AMD EPYC on 2026-12-03 (benchmarks/_common.matmul_peak)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_slow_bf16(device: torch.device, precision: str) -> None:
    """Warn when bf16 is asked of a CPU without fast bf16 products: a run meant for an hour
    would take weeks there."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(f"--precision bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}, "
                      "no AVX-512) has no fast bf16 matrix products, so bf16 runs hundreds of "
                      "times slower than fp32 here; use --precision fp32", stacklevel=2)


def optimizer_step(loss, optimizer, scaler, parameters, clip_grad: float = 0.0) -> None:
    """Backward and one update: gradients scaled for fp16 (a no-op otherwise), optionally
    clipped to norm `clip_grad`, then the step. Shared by pre-training and fine-tuning."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(parameters, clip_grad)
    scaler.step(optimizer)
    scaler.update()


def save_checkpoint(path, net: BERTModel, optimizer, scaler, step: int, cfg: TrainConfig,
                    history: list) -> None:
    """Everything needed to continue exactly, written to a temporary file and renamed."""
    state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "model_config": net.config.to_dict(), "train_config": asdict(cfg), "history": history}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash leaves the previous checkpoint whole
    except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError
        raise OSError(f"could not write {path} ({str(e).splitlines()[0]}): is the disk full? "
                      "Free some space and resume; the previous checkpoint is kept") from None
    finally:
        if tmp.exists():
            tmp.unlink()  # no half-written file left on a full disk


def load_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint written by `save_checkpoint` (no pickled code is run), its parts checked:
    an edited or foreign one is one line naming the file, not a traceback on resuming."""
    state = load_torch(path, map_location, keys=("model", "optimizer", "scaler", "step", "history",
                                                 "torch_rng"))
    step, rng, optimizer = state["step"], state["torch_rng"], state["optimizer"]
    wrong = [k for k, kind in (("model", dict), ("scaler", dict), ("history", list))
             if not isinstance(state[k], kind)]
    wrong += ["step"] * (not isinstance(step, int) or isinstance(step, bool) or step < 0)
    wrong += ["torch_rng"] * (not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8)
    wrong += ["optimizer"] * (not isinstance(optimizer, dict) or "param_groups" not in optimizer)
    if wrong:
        raise ValueError(f"{path}: {', '.join(wrong)} not as save_checkpoint writes them: not a "
                         "bertlite checkpoint, or edited; restore it or train again")
    return state


def model_from_checkpoint(path) -> BERTModel:
    state = load_torch(path, keys=("model", "model_config"))
    net = BERTModel(BERTConfig(**state["model_config"]))
    net.load_state_dict(state["model"])
    return net


def save_pretrained(net: BERTModel, vocab, folder, dtype=torch.float32) -> None:
    """A trained model for others to use: `model.safetensors` (weights only; a tied decoder is
    stored once; `dtype=torch.float16` halves the file), `config.json` and `vocab.txt`."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().to("cpu", dtype).contiguous() for name, t in net.state_dict().items()
             if not (net.config.tie_decoder and name == "mlm.decoder.weight")}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(net.config.to_dict(), indent=2) + "\n")
    vocab.save(folder / "vocab.txt")


def _load_weights(folder: Path, net: BERTModel) -> None:
    """Weights from model.safetensors (any float dtype, cast to the model's), else an older
    folder's model.pt; every tensor must be there except a tied decoder's copy."""
    if not (folder / "model.safetensors").is_file():
        net.load_state_dict(load_torch(folder / "model.pt"))
        return
    state = load_safetensors(folder / "model.safetensors")
    ours = net.state_dict()
    state = {k: v.to(ours[k].dtype) if k in ours else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (net.config.tie_decoder and k == "mlm.decoder.weight")]
    if missing or unexpected:
        raise ValueError(f"{folder / 'model.safetensors'} does not match config.json: missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")


def load_vocab(path, size: int | None = None):
    """The vocabulary in a run's or a saved model's vocab.txt: the word-level `Vocab` when it
    begins with `<pad>` (as `Vocab.save` writes it), else WordPiece (BERT's vocab.txt begins with
    [PAD]). With `size` (the model's vocab_size) the file must have that many tokens."""
    from .vocab import Vocab, is_word_vocab_file
    from .wordpiece import WordPieceTokenizer
    if is_word_vocab_file(path):
        return Vocab.load(path, size=size)
    vocab = WordPieceTokenizer.from_vocab_file(path)
    if size is not None and len(vocab) != size:
        raise ValueError(f"{path} has {len(vocab)} tokens but the model has vocab_size={size}: "
                         "not the vocabulary this model was trained with; restore it from the run folder")
    return vocab


def load_pretrained(folder):
    """(model in eval mode, vocabulary: word-level or WordPiece) from a folder written by
    `save_pretrained`. Explained in notebooks/06_pretraining.ipynb."""
    folder = Path(folder)
    config = BERTConfig.from_file(folder / "config.json")
    vocab = load_vocab(folder / "vocab.txt", size=config.vocab_size)
    net = BERTModel(config)
    _load_weights(folder, net)
    return net.eval(), vocab


def _is_bertlite_folder(folder: Path) -> bool:
    """Written by `save_pretrained`: its config.json has bertlite's names (`ffn_hidden`, not
    Hugging Face's `intermediate_size`)."""
    if (folder / "model.pt").is_file():
        return True
    try:
        return "ffn_hidden" in json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # no or no readable config.json: `resolve` below names the problem


def load_init(folder) -> tuple[BERTModel, object]:
    """(model in training mode, vocabulary) to start pre-training from: a `save_pretrained`
    folder (config.json with bertlite's keys), a run folder of `python -m bertlite pretrain` (the
    weights of its checkpoint.pt, not its optimizer or step: that is --resume), or a Hugging Face
    BERT folder or known name (`bertlite.pretrained`) with its vocab.txt. Heads the checkpoint
    lacks (MLM, NSP) are freshly initialised, so pre-training can go on from an encoder alone
    (all-MiniLM-L6-v2 has neither head)."""
    from .pretrained import load_tokenizer, resolve
    if (Path(folder) / "checkpoint.pt").is_file():  # a run folder: the checkpoint holds the model
        net = model_from_checkpoint(Path(folder) / "checkpoint.pt")
        vocab = load_vocab(Path(folder) / "vocab.txt", size=net.config.vocab_size)
    elif _is_bertlite_folder(Path(folder)):
        net, vocab = load_pretrained(folder)
    else:
        from .hf import load_hf_checkpoint
        folder = resolve(folder)  # one clear error for a folder that is no checkpoint
        net, _ = load_hf_checkpoint(folder)
        vocab = load_tokenizer(folder)
    if len(vocab) != net.config.vocab_size:
        raise ValueError(f"{folder}: vocab.txt has {len(vocab)} tokens, the model "
                         f"{net.config.vocab_size}: not a matching checkpoint")
    return net.train(), vocab


def evaluate(net: BERTModel, dataset, batch_size: int = 512, device=None) -> dict:
    """MLM loss over real masked tokens (and its perplexity), MLM accuracy, NSP loss and accuracy
    on a whole dataset, in eval mode. Build the dataset with a fixed seed to compare runs.
    Explained in notebooks/06_pretraining.ipynb.
    """
    device = device or next(net.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64)
    weight = 0.0
    with evaluating(net):
        for batch in DataLoader(dataset, batch_size, generator=torch.Generator()):  # not the global RNG
            b = {k: v.to(device) for k, v in batch.items()}
            out = net(b["tokens"], b["segments"], b["valid_lens"], b["pred_positions"],
                      mlm_logits=False)
            one = torch.ones((), device=device)  # denominators of 1: sums, divided at the end
            mlm, mlm_acc = fused_mlm_loss(out.mlm_hidden, net.mlm.decoder, b["mlm_labels"],
                                          b["mlm_weights"], total_weight=one)
            nsp = nsp_loss(out.nsp_logits, b["nsp_labels"], total=1)
            sums += torch.stack([mlm, nsp, mlm_acc,
                                 nsp_accuracy(out.nsp_logits, b["nsp_labels"], 1)]).cpu()
            weight += b["mlm_weights"].sum().item()
    mlm, nsp, mlm_acc, nsp_acc = (sums / torch.tensor([weight, len(dataset), weight, len(dataset)])).tolist()
    return {"mlm_loss": mlm, "perplexity": math.exp(mlm), "mlm_acc": mlm_acc, "nsp_loss": nsp,
            "nsp_acc": nsp_acc}


def train_bert(net: BERTModel, train_data, cfg: TrainConfig, val_data=None, run_dir=None,
               resume: bool = False, progress: bool = True, eval_first: bool = False) -> list[dict]:
    """Pre-train `net` for `cfg.steps` steps; return the history (one dict per step, plus
    `{"step", "eval": {...}}` records). With `run_dir`, rank 0 appends each record to
    `metrics.jsonl` and writes `checkpoint.pt`; `resume=True` continues from that checkpoint.
    `eval_first` also validates before the first step (a `{"step": 0, "eval"}` record): for a
    model that starts pre-trained, how good it is before this training.
    Explained in notebooks/06_pretraining.ipynb.
    """
    rank, world, local_rank = _distributed()
    devs = devices()
    device = devs[local_rank] if world > 1 and devs[0].type == "cuda" else devs[0]
    net.to(device)
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, [device] if device.type == "cuda" else None)
    elif len(devs) > 1:
        model = nn.DataParallel(net, devs)  # the book's trainer: one process, all GPUs
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide among {world} processes")
    # Even one process uses a DistributedSampler (1 replica): N processes then see exactly the
    # global batches that one process sees, which is what makes their losses comparable.
    sampler = DistributedSampler(train_data, world, rank, shuffle=True, seed=cfg.seed)
    # Whole batches of indices: the dataset indexes each of its tensors once per batch, the same
    # batches as DataLoader's default (an item at a time, then stacked), several times faster
    loader = DataLoader(train_data, batch_size=None,
                        sampler=BatchSampler(sampler, cfg.batch_size // world, drop_last=False),
                        generator=torch.Generator().manual_seed(cfg.seed))  # not the global RNG
    optimizer = make_optimizer(net.named_parameters(), cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    if rank == 0:
        warn_slow_bf16(device, cfg.precision)
    run_dir = Path(run_dir) if run_dir else None
    writer = rank == 0 and run_dir is not None
    step, history = 0, []
    if resume:
        state = load_checkpoint(run_dir / "checkpoint.pt", map_location=device)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, history = state["step"], state["history"]
    else:
        torch.manual_seed(cfg.seed + rank)  # dropout draws
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = run_dir / "metrics.jsonl"
        if not resume and metrics_file.exists() and metrics_file.stat().st_size:
            raise FileExistsError(f"{metrics_file} already holds a run's metrics: resume it, or "
                                  "train into another folder")
        # What the checkpoint knows, no more: steps after it are trained (and recorded) again.
        write_atomic(metrics_file, "".join(json.dumps(r) + "\n" for r in history))
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and rank == 0), unit="step",
               file=sys.stderr, dynamic_ncols=True)

    def record(r):
        history.append(r)
        if writer:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(r) + "\n")

    if eval_first and not resume and val_data is not None and rank == 0:
        record({"step": 0, "eval": evaluate(net, val_data, cfg.batch_size, device)})
    net.train()
    with stopping_on_signals(run_dir is not None) as signals:
        while step < cfg.steps:
            epoch, skip = divmod(step, len(loader))
            sampler.set_epoch(epoch)
            train_data.set_epoch(epoch)  # new masks (and pairs) when they are dynamic
            batches = iter(loader)
            for _ in range(skip):  # resuming mid-epoch: pass over the batches already trained on
                next(batches)
            t0 = time.perf_counter()
            for batch in batches:
                lr = get_lr(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                # Denominators summed over all ranks, so every rank's loss is its share of the
                # global loss; DDP averages gradients, hence the factor `world` below. The third
                # sum counts signals on any rank, so that all ranks stop after the same step.
                totals = _all_sum(torch.cat([b["mlm_weights"].sum()[None], torch.tensor(
                    [len(b["nsp_labels"]), len(signals)], dtype=torch.float32, device=device)]))
                with autocast(device, cfg.precision):
                    out = model(b["tokens"], b["segments"], b["valid_lens"], b["pred_positions"],
                                mlm_logits=not cfg.fused_loss)
                    loss = pretrain_loss(out, b, net.mlm.decoder, totals[0], totals[1])
                optimizer_step(loss.total * world, optimizer, scaler, net.parameters(), cfg.clip_grad)
                metrics = _all_sum(torch.stack(loss[1:]).detach().float()).tolist()
                if not math.isfinite(metrics[0] + metrics[1]):  # never save NaN weights as a run
                    kept = ("the last checkpoint is kept" if run_dir is not None and
                            (run_dir / "checkpoint.pt").exists() else "no checkpoint written")
                    raise FloatingPointError(
                        f"the loss became {metrics[0] + metrics[1]} at step {step + 1}: training "
                        f"diverged and was stopped ({kept}); lower --lr, or clip gradients with "
                        "--clip-grad 1")
                step += 1
                now = time.perf_counter()
                pairs, stop = totals[1:].tolist()
                stop = stop if world > 1 else len(signals)  # one process: the signal of this step
                r = {"step": step, **dict(zip(METRICS, metrics)), "lr": lr,
                     "pairs_per_s": int(pairs) / (now - t0), "seconds": now - t0}
                record(r)
                bar.update(1)
                bar.set_postfix(mlm=f"{r['mlm_loss']:.3f}", nsp=f"{r['nsp_loss']:.3f}",
                                pairs_s=f"{r['pairs_per_s']:.0f}")
                if val_data is not None and rank == 0 and (
                        step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0)):
                    record({"step": step, "eval": evaluate(net, val_data, cfg.batch_size, device)})
                if writer and (step == cfg.steps or stop
                               or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    save_checkpoint(run_dir / "checkpoint.pt", net, optimizer, scaler, step, cfg, history)
                if step >= cfg.steps:
                    break
                if stop:
                    bar.close()
                    raise Interrupted(signals[0] if signals else signal.SIGTERM, step, run_dir)
                t0 = time.perf_counter()
    bar.close()
    return history


def summarize(history: list[dict]) -> dict:
    """Means over all training steps (as the book prints them), throughput, and the last eval."""
    steps = [r for r in history if "eval" not in r]
    out = {k: sum(r[k] for r in steps) / len(steps) for k in METRICS}
    seconds = sum(r["seconds"] for r in steps)
    out["pairs_per_s"] = sum(r["pairs_per_s"] * r["seconds"] for r in steps) / seconds  # pairs / time
    evals = [r["eval"] for r in history if "eval" in r]
    if evals:
        out["eval"] = evals[-1]
    return out
