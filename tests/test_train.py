"""The trainer: schedule, learning, checkpoints that survive SIGKILL, and DDP under torchrun."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from bertlite.cli import main
from bertlite.model import BERTConfig, BERTModel
from bertlite.train import TrainConfig, get_lr, summarize, train_bert

SMALL = ["--hidden", "64", "--ffn-hidden", "128", "--heads", "2", "--layers", "2",
         "--batch-size", "32", "--no-progress", "--eval-every", "0"]
LOSSES = ("mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc")


def run_cli(*args, timeout=300, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def metrics(run_dir):
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def same_losses(a, b, tol):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        x, y = (ra["eval"], rb["eval"]) if "eval" in ra else (ra, rb)
        for k in LOSSES:
            assert abs(x[k] - y[k]) <= tol, (ra["step"], k, x[k], y[k])


def test_learning_rate_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, schedule="linear", warmup_steps=10)
    assert get_lr(0, cfg) == pytest.approx(0.1) and get_lr(9, cfg) == pytest.approx(1.0)
    assert get_lr(55, cfg) == pytest.approx(0.5) and get_lr(99, cfg) == pytest.approx(1 / 90)  # 90 decay steps
    assert get_lr(50, TrainConfig(lr=0.01)) == 0.01
    with pytest.raises(ValueError, match="schedule"):
        get_lr(0, TrainConfig(schedule="cosine"))


def test_training_lowers_the_loss_and_records_everything(tiny):
    torch.manual_seed(0)
    net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab), hidden=64, ffn_hidden=128))
    cfg = TrainConfig(steps=20, batch_size=32, lr=2e-3, optimizer="adamw", clip_grad=1.0,
                      precision="bf16")
    history = train_bert(net, tiny, cfg, val_data=tiny, progress=False)
    steps = [r for r in history if "eval" not in r]
    assert len(steps) == 20 and set(steps[0]) >= {*LOSSES, "lr", "pairs_per_s"}
    assert sum(r["mlm_loss"] for r in steps[-5:]) < sum(r["mlm_loss"] for r in steps[:5])
    summary = summarize(history)
    assert summary["eval"]["perplexity"] == pytest.approx(2.718281828 ** summary["eval"]["mlm_loss"])


def test_bf16_training_follows_fp32(tiny):
    # Same weights, batches and dropout masks: bf16 (the whole encoder and the MLM products in
    # bf16) must give fp32's losses to within a few hundredths. Measured here: largest gap over
    # the 20 steps 0.018 in the MLM loss and 0.003 in the NSP loss, 0.0008 in the
    # validation MLM loss; the bounds leave room for other CPUs' kernels.
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab)))
        cfg = TrainConfig(steps=20, batch_size=32, lr=2e-3, optimizer="adamw", precision=precision)
        runs[precision] = train_bert(net, tiny, cfg, val_data=tiny, progress=False)
    for a, b in zip(runs["fp32"], runs["bf16"]):  # losses only: an accuracy over 32 pairs moves
        a, b = (a["eval"], b["eval"]) if "eval" in a else (a, b)  # by 1/32 for one pair
        assert abs(a["mlm_loss"] - b["mlm_loss"]) < 0.05 and abs(a["nsp_loss"] - b["nsp_loss"]) < 0.02


def test_cli_pretrain_writes_a_run_and_refuses_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    main(["pretrain", "--run-dir", str(run), "--steps", "4", *SMALL])
    assert sorted(p.name for p in run.iterdir()) == [  # .bertlite-run: marker and lock
        ".bertlite-run", "checkpoint.pt", "config.json", "loss.png", "metrics.jsonl", "vocab.txt"]
    assert "MLM loss" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--resume"):
        main(["pretrain", "--run-dir", str(run), "--steps", "4", *SMALL])
    with pytest.raises(SystemExit, match="nothing to resume"):
        main(["pretrain", "--resume", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="raise it"):
        main(["pretrain", "--run-dir", str(tmp_path / "r2"), "--seq-len", "8", *SMALL])


def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL in the middle of training, resume, and get the uninterrupted run's losses."""
    args = ["-m", "bertlite", "pretrain", "--steps", "24", "--checkpoint-every", "4", *SMALL]
    full = run_cli(*args, "--run-dir", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stdout.read()
    victim = run_cli(*args, "--run-dir", str(tmp_path / "killed"))
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it once it has checkpointed and trained past that
        if ckpt.exists() and len(metrics(tmp_path / "killed")) >= 10:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(metrics(tmp_path / "killed"))
    assert 10 <= done < 24, "the run ended before it could be killed"
    resumed = run_cli("-m", "bertlite", "pretrain", "--resume", str(tmp_path / "killed"))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    same_losses(metrics(tmp_path / "killed"), metrics(tmp_path / "full"), tol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is missing")
def test_ddp_two_processes_match_one(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo) gives the losses of one process on the same
    global batches. Dropout is off: each process draws its own dropout masks."""
    args = ["-m", "bertlite", "pretrain", "--steps", "6", "--dropout", "0", *SMALL]
    one = run_cli(*args, "--run-dir", str(tmp_path / "one"))
    assert one.wait(timeout=300) == 0, one.stdout.read()
    two = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                  "--run-dir", str(tmp_path / "two"))
    out, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out
    same_losses(metrics(tmp_path / "two"), metrics(tmp_path / "one"), tol=1e-5)


def test_validating_during_training_changes_nothing(tiny):
    """evaluate() must not draw from the global RNG: dropout of later steps would change."""
    runs = []
    for eval_every in (0, 1):
        torch.manual_seed(0)
        net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab), hidden=32, ffn_hidden=64))
        history = train_bert(net, tiny, TrainConfig(steps=4, batch_size=32, eval_every=eval_every),
                             val_data=tiny if eval_every else None, progress=False)
        runs.append([r["mlm_loss"] for r in history if "eval" not in r])
    assert runs[0] == runs[1]


def test_bf16_on_a_cpu_without_bf16_kernels_warns_with_the_fix(tiny, monkeypatch):
    # On an AVX2-only CPU bf16 products run hundreds of times slower than fp32: say so at once.
    monkeypatch.setattr("bertlite.train.cpu_has_fast_bf16", lambda: False)
    net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab), hidden=32, ffn_hidden=64))
    with pytest.warns(UserWarning, match="--precision fp32"):
        train_bert(net, tiny, TrainConfig(steps=1, batch_size=8, precision="bf16"), progress=False)
    monkeypatch.setattr("bertlite.train.cpu_has_fast_bf16", lambda: True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_bert(net, tiny, TrainConfig(steps=1, batch_size=8, precision="bf16"), progress=False)
    assert not [w for w in caught if "bf16" in str(w.message)]
