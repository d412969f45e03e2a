"""Run folders: bertlite writes a run only into a folder that is new, empty, or marked as one
of its own runs, and only one process at a time.

Without these rules `pretrain --run-dir` pointed at any folder (a `save_pretrained` one, say)
overwrote the files there, and two runs writing one folder interleaved their metrics.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no lock, the other rules still hold
    fcntl = None

MARKER = ".bertlite-run"  # written when bertlite creates a run; also the file that is locked


def _busy(run_dir) -> RuntimeError:
    return RuntimeError(f"{run_dir} is being written by another bertlite process (pid in its "
                        f"{MARKER}): wait for it to finish, or give another folder")


def _in_use(run_dir: Path) -> bool:
    """Whether another process holds the lock of `claiming` on this run folder now."""
    if fcntl is None or not (run_dir / MARKER).is_file():
        return False
    with open(run_dir / MARKER) as mark:
        try:
            fcntl.flock(mark, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(mark, fcntl.LOCK_UN)
    return False


def check_new_run_dir(run_dir, held: bool = False) -> None:
    """Raise unless a new run may be written into `run_dir`: a folder that does not exist yet,
    an empty folder, or a run folder of ours that stopped before it recorded anything.
    `held`: this process holds the folder's lock already (`claiming`)."""
    run_dir = Path(run_dir)
    above = next((p for p in run_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # found now, not after building the data
        raise NotADirectoryError(f"--run-dir {run_dir}: {above} is a file, not a folder")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise NotADirectoryError(f"--run-dir {run_dir} is a file: give a new folder")
    if (run_dir / "checkpoint.pt").exists():
        raise FileExistsError(f"{run_dir} already holds a run; use --resume {run_dir} to "
                              "continue it, or give another --run-dir")
    names = {p.name for p in run_dir.iterdir()}
    if names and MARKER not in names:
        raise FileExistsError(f"--run-dir {run_dir} is a folder bertlite did not create and it "
                              "is not empty: give a new or empty folder")
    if not held and _in_use(run_dir):  # a live run: never suggest deleting it
        raise _busy(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size:
        raise FileExistsError(f"{run_dir} holds the metrics of a run that stopped before its "
                              "first checkpoint: give another --run-dir (or delete this one)")


@contextmanager
def claiming(run_dir, new: bool):
    """Hold `run_dir` for the `with` block: mark it as a bertlite run and lock the mark. The
    system releases the lock however the process ends, even by SIGKILL, so no stale lock can
    block a `--resume`. `new=True` checks again, under the lock, that the folder is still free."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / MARKER, "a") as mark:
        if fcntl is not None:
            try:
                fcntl.flock(mark, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(run_dir) from None
        if new:
            check_new_run_dir(run_dir, held=True)
        mark.truncate(0)
        mark.write(f"a bertlite run, written by pid {os.getpid()}; continue it with "
                   f"`python -m bertlite pretrain --resume {run_dir}`\n")
        mark.flush()
        yield run_dir


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM once the step in progress had finished and the
    checkpoint was written: `signum` names the signal, `step` the steps done."""

    def __init__(self, signum: int, step: int, run_dir=None):
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}")
        self.signum, self.step, self.run_dir = signum, step, run_dir


@contextmanager
def stopping_on_signals(enabled: bool = True):
    """Within the block, SIGINT (Ctrl-C) and SIGTERM append to the yielded list instead of
    killing: the trainer finishes its step, checkpoints and raises `Interrupted`. A second
    signal gets the usual behaviour at once (the last checkpoint stays whole)."""
    got, previous = [], {}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield got  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        got.append(signum)
        signal.signal(signum, previous[signum] or signal.SIG_DFL)

    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, handler)
    try:
        yield got
    finally:
        for s, h in previous.items():
            signal.signal(s, h or signal.SIG_DFL)
