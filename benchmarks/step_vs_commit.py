"""Today's training step against the same step of an earlier commit, in one process, in turns.

    python benchmarks/step_vs_commit.py [COMMIT] [--precision bf16 fp32] [--repeat 7]
                                        [--batches stream|fixed]

COMMIT (default 80bcd46, the code issue 11's "today" figures were measured on) is read out of
this checkout's git history with `git archive` into a temporary folder and imported as a package
of its own, beside today's `bertlite`. Both build the book's model (the d2l preset, vocabulary
20256, dropout 0.2) from the same seed and take Adam steps on WikiText-2 batches of 512 pairs
(max_len 64), each with its own fused MLM loss and its own trainer's Adam, timed in turns
(old, new, old, new, ...), so the machine's drifting speed moves both alike. Prints the matmul
peaks, pairs/s and the ratio.
`--batches stream` (the default) gives each step the next batch, as training does: every batch
has its own number of real tokens and masked slots, so its matrices have new shapes, and under
bf16 oneDNN compiles kernels for every new shape. Each version first takes 20 untimed steps on
other batches, as the first steps of a run fill its caches of kernels. `--batches fixed` repeats
one batch, as this script did until 2026-12-03: the shapes never change, so that cost is never seen.
Works for commits whose model takes `mlm_logits=False`, whose loss takes the decoder (the
fused loss, since 2026-11) and whose trainer has `make_optimizer`.
"""
import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from _common import book_batch, matmul_peak, precisions_here, step_fn, timed_together
import bertlite.loss
import bertlite.model

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 20  # untimed steps of each version before a stream of batches is timed


def import_commit(commit: str, folder: Path):
    """`bertlite` as it was at `commit`, imported as the package `bertlite_<commit>`."""
    archive = folder / "old.tar"
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit,
                           "bertlite"], capture_output=True, text=True)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        raise SystemExit(f"{commit}: git archive found no bertlite/ at that commit of this "
                         f"checkout ({why}); give a commit of its history, such as 80bcd46")
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    name = f"bertlite_{commit}"
    (folder / "bertlite").rename(folder / name)  # its imports are relative, so any name works
    sys.path.insert(0, str(folder))
    return tuple(importlib.import_module(f"{name}.{part}") for part in ("model", "loss", "train"))


def book_model(model_module):
    """The d2l model built by `model_module` (today's or the commit's), from seed 0."""
    torch.manual_seed(0)
    return model_module.BERTModel(model_module.BERTConfig(vocab_size=20256))  # the d2l sizes


def describe_stream(batches):
    """How the batches' shapes vary: the real tokens' rows and the MLM loss's real slots, exact
    and as today's code rounds them (`shared_row_count`; the loss's bf16 chunks of
    `loss.CHUNK_ROWS_16BIT` rows)."""
    tokens = [int(b["valid_lens"].sum()) for b in batches]
    slots = [int((b["mlm_weights"] > 0).sum()) for b in batches]
    rows = {bertlite.model.shared_row_count(n) for n in tokens}
    chunks = {bertlite.model.shared_row_count(n) % bertlite.loss.CHUNK_ROWS_16BIT for n in slots}
    print(f"{len(batches)} batches: {min(tokens):,} to {max(tokens):,} real tokens ({len(set(tokens))} "
          f"numbers, {len(rows)} shared row counts), {min(slots):,} to {max(slots):,} real MLM slots "
          f"({len(set(slots))} numbers, {len(chunks)} sizes of the loss's last chunk)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("commit", nargs="?", default="80bcd46")
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"],
                        choices=["bf16", "fp32"])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--batches", choices=["stream", "fixed"], default="stream",
                        help="a new batch every step, as in training (default), or one batch "
                        "again and again")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat {args.repeat}: give at least 1 step to time")
    warmup = WARMUP if args.batches == "stream" else 1
    batch, corpus = book_batch(count=warmup + args.repeat if args.batches == "stream" else None)
    with tempfile.TemporaryDirectory() as folder:
        old_model, old_loss, old_train = import_commit(args.commit, Path(folder))
        print(f"threads {torch.get_num_threads()}; matmul peak (2048^2): fp32 "
              f"{matmul_peak(torch.float32):.0f}, bf16 {matmul_peak(torch.bfloat16):.0f} GFLOP/s")
        first = batch[0] if isinstance(batch, list) else batch
        what = "a new batch each step" if isinstance(batch, list) else "the same batch each step"
        print(f"batches {tuple(first['tokens'].shape)} of {corpus} ({what}), "
              f"the book's model, dropout 0.2, Adam; {args.repeat} steps each, in turns")
        if isinstance(batch, list):
            describe_stream(batch)
        for precision in precisions_here(args.precision):
            old = step_fn(book_model(old_model), batch, precision, loss_fn=old_loss.pretrain_loss,
                          optimizer=old_train.make_optimizer, config=old_train.TrainConfig)
            new = step_fn(book_model(bertlite.model), batch, precision)
            t_old, t_new = timed_together([old, new], repeat=args.repeat, warmup=warmup)
            print(f"{precision}: {args.commit} {512 / t_old:.0f} pairs/s, today {512 / t_new:.0f} "
                  f"pairs/s: {t_old / t_new:.2f}x")


if __name__ == "__main__":
    main()
