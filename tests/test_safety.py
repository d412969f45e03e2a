"""Bad input and interruptions: every user's mistake ends as one line on stderr that names the
input, with exit status 1 (2 for a wrong flag), and leaves every file as it was."""
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bertlite import Corpus, Vocab, parse_wikitext
from bertlite.cli import main, one_line
from bertlite.download import fetch, fetch_verified
from bertlite.model import BERTConfig, BERTModel
from bertlite.train import TrainConfig, train_bert
from bertlite.wikitext import SPLITS, default_data_dir, download_wikitext2

SMALL = ["--hidden", "32", "--ffn-hidden", "64", "--heads", "2", "--layers", "1",
         "--batch-size", "8", "--no-progress", "--eval-every", "0", "--warmup-steps", "0"]
TINY = default_data_dir() / "tinywiki"


def snapshot(*folders) -> dict:
    """sha256 of every file under `folders` (hidden ones too), by path."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")) if Path(folder).exists() else ():
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_main(capsys, args):
    """(exit status, stdout, stderr) of `bertlite.cli.main(args)` run in this process."""
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:  # sys.exit("message") prints the message only when Python exits
        code = e.code
    out, err = capsys.readouterr()
    if isinstance(code, str):
        code, err = 1, err + code + "\n"
    return code, out, err


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished 2-step run to copy and then damage."""
    run = tmp_path_factory.mktemp("good") / "run"
    main(["pretrain", "--run-dir", str(run), "--steps", "2", *SMALL])
    return run


def write(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def corpus(tmp, name="mine", train=None, valid=None):
    """A dataset folder `tmp/data/name` with the shipped corpus (or the given texts)."""
    for split, text in (("train", train), ("valid", valid)):
        src = (TINY / f"wiki.{split}.tokens").read_bytes()
        write(tmp / "data" / name / f"wiki.{split}.tokens", src if text is None else text)
    return ["--data-dir", tmp / "data", "--dataset", name]


def edit(relpath, data):
    """A setup that overwrites one file of the copied run."""
    return lambda tmp: (write(tmp / "run" / relpath, data), ["--resume", tmp / "run"])[1]


def vocab_lines(tmp):
    return (tmp / "run" / "vocab.txt").read_text().split("\n")


def vocab_edit(change):
    def setup(tmp):
        lines = vocab_lines(tmp)
        write(tmp / "run" / "vocab.txt", "\n".join(change(lines)))
        return ["--resume", tmp / "run"]
    return setup


def flags(*a):
    return lambda tmp: [*a]


HELD = []  # files a case keeps open (and locked) while the command runs


class Evil:  # a pickle that would run code when loaded
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def evil_checkpoint(tmp):
    with open(tmp / "run" / "checkpoint.pt", "wb") as f:
        pickle.dump(Evil(), f)
    return ["--resume", tmp / "run"]


def locked(tmp):
    """Another process's lock: flock conflicts between two open files even in one process."""
    import fcntl
    HELD.append(open(tmp / "run" / ".bertlite-run"))
    fcntl.flock(HELD[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
    return ["--resume", tmp / "run"]


def live_without_checkpoint(tmp):  # a run being trained that has not checkpointed yet
    stopped_early(tmp)
    locked(tmp)  # held by "another process"
    return ["--run-dir", tmp / "run"]


def hf_folder_with_garbage_weights(tmp):
    write(tmp / "hf" / "config.json", json.dumps({"vocab_size": 7, "hidden_size": 8,
                                                   "intermediate_size": 16, "num_attention_heads": 2,
                                                   "num_hidden_layers": 1}))
    write(tmp / "hf" / "vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\na\n")
    write(tmp / "hf" / "pytorch_model.bin", bytes(range(256)) * 4)
    return ["--init-from", tmp / "hf"]


def checkpoint_edit(change):
    """The good run's checkpoint with `change(state)` applied, then --resume."""
    def setup(tmp):
        path = tmp / "run" / "checkpoint.pt"
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
        return ["--resume", tmp / "run"]
    return setup


def not_ours(tmp):
    write(tmp / "saved" / "config.json", "{}")
    write(tmp / "saved" / "model.pt", b"weights")
    return ["--run-dir", tmp / "saved"]


def stopped_early(tmp):  # a marked run with metrics but no checkpoint (killed, or diverged)
    (tmp / "run" / "checkpoint.pt").unlink()
    return ["--run-dir", tmp / "run"]


def resume(*extra):
    return lambda tmp: ["--resume", tmp / "run", *extra]


# (name, setup(tmp) -> pretrain flags, needs a copy of the good run, exit status, in stderr)
CASES = [
    # Flags out of range: usage errors, caught before any data is built.
    ("clip-grad negative", flags("--clip-grad", "-1"), False, 2, "--clip-grad"),
    ("dropout 1", flags("--dropout", "1.0"), False, 2, "--dropout"),
    ("dropout 1.5", flags("--dropout", "1.5"), False, 2, "--dropout"),
    ("dropout negative", flags("--dropout", "-0.1"), False, 2, "--dropout"),
    ("lr 0", flags("--lr", "0"), False, 2, "--lr"),
    ("lr negative", flags("--lr", "-1"), False, 2, "--lr"),
    ("lr nan", flags("--lr", "nan"), False, 2, "--lr"),
    ("lr inf", flags("--lr", "inf"), False, 2, "--lr"),
    ("warmup negative", flags("--warmup-steps", "-10"), False, 2, "--warmup-steps"),
    ("weight decay negative", flags("--weight-decay", "-1"), False, 2, "--weight-decay"),
    ("schedule cosine", flags("--schedule", "cosine"), False, 2, "--schedule"),
    ("steps 0", flags("--steps", "0"), False, 2, "--steps"),
    ("steps negative", flags("--steps", "-5"), False, 2, "--steps"),
    ("batch size 0", flags("--batch-size", "0"), False, 2, "--batch-size"),
    ("optimizer sgd", flags("--optimizer", "sgd"), False, 2, "--optimizer"),
    ("precision fp8", flags("--precision", "fp8"), False, 2, "--precision"),
    ("eval-every negative", flags("--eval-every", "-1"), False, 2, "--eval-every"),
    ("checkpoint-every negative", flags("--checkpoint-every", "-1"), False, 2, "--checkpoint-every"),
    ("seed negative", flags("--seed", "-1"), False, 2, "--seed"),
    ("activation tanh", flags("--activation", "tanh"), False, 2, "--activation"),
    ("segments 1", flags("--segments", "1"), False, 2, "--segments"),
    ("hidden 0", flags("--hidden", "0"), False, 2, "--hidden"),
    ("heads do not divide hidden", flags("--heads", "3"), False, 2, "--hidden"),
    ("layers 0", flags("--layers", "0"), False, 2, "--layers"),
    ("ffn-hidden 0", flags("--ffn-hidden", "0"), False, 2, "--ffn-hidden"),
    ("max-len 0", flags("--max-len", "0"), False, 2, "--max-len"),
    ("norm-eps 0", flags("--norm-eps", "0"), False, 2, "--norm-eps"),
    ("init-std negative", flags("--init-std", "-0.02"), False, 2, "--init-std"),
    ("seq-len beyond the position table", flags("--seq-len", "200000"), False, 2, "--seq-len"),
    ("seq-len beyond bert-tiny's 512", flags("--seq-len", "600", "--preset", "bert-tiny"), False, 2,
     "--seq-len"),
    ("seq-len 3", flags("--seq-len", "3"), False, 2, "--seq-len"),
    ("min-freq 0", flags("--min-freq", "0"), False, 2, "--min-freq"),
    ("unknown preset", flags("--preset", "bert-huge"), False, 2, "--preset"),
    # argparse's own usage errors, in one line too.
    ("steps not a number", flags("--steps", "abc"), False, 2, "--steps"),
    ("unknown pair task", flags("--pair-task", "xyz"), False, 2, "--pair-task"),
    ("unknown masking", flags("--masking", "foo"), False, 2, "--masking"),
    ("misspelt flag", flags("--stpes", "3"), False, 2, "--stpes"),
    # Data.
    ("data dir missing", lambda t: ["--data-dir", t / "nowhere"], False, 1, "wiki.train.tokens"),
    ("data dir is a file", lambda t: (write(t / "f", "x"), ["--data-dir", t / "f"])[1], False, 1,
     "wiki.train.tokens"),
    ("unknown dataset", lambda t: ["--dataset", "nosuch", "--data-dir", t], False, 1, "nosuch"),
    ("wikitext-2 not downloaded", lambda t: ["--dataset", "wikitext-2", "--data-dir", t], False, 1,
     "python -m bertlite download"),
    ("corpus not UTF-8", lambda t: corpus(t, train=b" a . b . \xff\xfe \n"), False, 1, "not UTF-8"),
    ("corpus empty", lambda t: corpus(t, train=""), False, 1, "wiki.train.tokens is empty"),
    ("corpus is a folder", lambda t: (corpus(t), shutil.rmtree(t / "data/mine"),
                                      (t / "data/mine/wiki.train.tokens").mkdir(parents=True),
                                      ["--data-dir", t / "data", "--dataset", "mine"])[-1],
     False, 1, "wiki.train.tokens is a folder"),
    ("corpus of headings only", lambda t: corpus(t, train=" = A = \n = B = \n"), False, 1,
     "mine/train"),
    ("validation split missing", lambda t: (corpus(t), (t / "data/mine/wiki.valid.tokens").unlink(),
                                            ["--data-dir", t / "data", "--dataset", "mine"])[-1],
     False, 1, "wiki.valid.tokens"),
    ("validation split not UTF-8", lambda t: corpus(t, valid=b"\xc3\x28 . x . \n"), False, 1,
     "wiki.valid.tokens"),
    ("seq-len too short for any pair", flags("--seq-len", "8"), False, 1, "max_len=8"),
    # Run folders: write only into new, empty or our own folders, one process at a time.
    ("run-dir is someone's folder", not_ours, False, 1, "saved"),
    ("run-dir is a file", lambda t: (write(t / "f", "x"), ["--run-dir", t / "f"])[1], False, 1,
     "is a file"),
    ("run-dir holds a run", lambda t: ["--run-dir", t / "run"], True, 1, "--resume"),
    ("run-dir holds a run that stopped early", stopped_early, True, 1, "metrics"),
    ("run-dir locked by another run", locked, True, 1, "another bertlite process"),
    # A live run before its first checkpoint: told apart from a dead one (whose folder may go)
    ("run-dir of a live run without checkpoint", live_without_checkpoint, True, 1,
     "another bertlite process"),
    ("run-dir empty", flags("--run-dir", ""), False, 2, "--run-dir"),
    ("dataset empty", flags("--dataset="), False, 2, "--dataset"),
    ("seq-len 0", flags("--seq-len", "0"), False, 2, "--seq-len"),
    ("init-from weights that are not a pickle of tensors", hf_folder_with_garbage_weights, False, 1,
     "pytorch_model.bin"),
    # Resuming.
    ("resume a missing folder", lambda t: ["--resume", t / "nowhere"], False, 1, "nowhere"),
    ("resume a folder without checkpoint", lambda t: (write(t / "r/x", ""), ["--resume", t / "r"])[1],
     False, 1, "checkpoint.pt not found"),
    ("checkpoint corrupt", edit("checkpoint.pt", b"PK\x03\x04 garbage"), True, 1, "checkpoint.pt"),
    ("checkpoint empty", edit("checkpoint.pt", b""), True, 1, "checkpoint.pt"),
    ("checkpoint is a pickle payload", evil_checkpoint, True, 1, "checkpoint.pt"),
    ("checkpoint of something else", lambda t: (torch.save({"x": 1}, t / "run/checkpoint.pt"),
                                                ["--resume", t / "run"])[1], True, 1, "lacks"),
    ("config.json not JSON", edit("config.json", "{not json"), True, 1, "config.json"),
    ("config.json empty", edit("config.json", ""), True, 1, "config.json"),
    ("config.json without model", edit("config.json", '{"data": {}, "train": {}}'), True, 1,
     "config.json"),
    ("config.json not UTF-8", edit("config.json", b"\xff{}"), True, 1, "config.json"),
    ("config.json edited out of range", lambda t: edit("config.json", (t / "run/config.json")
                                                       .read_text().replace('"dropout": 0.2',
                                                                            '"dropout": 1.5'))(t),
     True, 1, "config.json"),
    ("config.json dynamic_pairs not a boolean", lambda t: edit("config.json", (t / "run/config.json")
                                                               .read_text().replace('"dynamic_pairs": false',
                                                                                    '"dynamic_pairs": "no"'))(t),
     True, 1, "config.json"),
    ("config.json new pairs with static masks", lambda t: edit("config.json", (t / "run/config.json")
     .read_text().replace('"dynamic_pairs": false', '"dynamic_pairs": true')
     .replace('"dynamic_masking": true', '"dynamic_masking": false'))(t), True, 1, "config.json"),
    ("vocab.txt without <mask>", vocab_edit(lambda lines: [x for x in lines if x != "<mask>"]),
     True, 1, "vocab.txt"),
    ("vocab.txt with a line deleted", vocab_edit(lambda lines: lines[:10] + lines[11:]), True, 1,
     "vocab.txt"),
    ("vocab.txt with a duplicate", vocab_edit(lambda lines: lines[:10] + [lines[6]] + lines[11:]),
     True, 1, "vocab.txt"),
    ("vocab.txt empty", edit("vocab.txt", ""), True, 1, "vocab.txt"),
    ("vocab.txt not UTF-8", edit("vocab.txt", b"<pad>\n\xff\n"), True, 1, "vocab.txt"),
    ("vocab.txt missing", lambda t: ((t / "run/vocab.txt").unlink(), ["--resume", t / "run"])[1],
     True, 1, "vocab.txt"),
    ("resume with another preset", resume("--preset", "bert-tiny"), True, 1, "--preset"),
    ("resume with another hidden size", resume("--hidden", "64"), True, 1, "--hidden"),
    ("resume with another seq-len", resume("--seq-len", "32"), True, 1, "--seq-len"),
    ("resume with another dataset", resume("--dataset", "wikitext-2"), True, 1, "--dataset"),
    ("resume with another masking", resume("--masking", "span"), True, 1, "--masking"),
    ("resume with another seed", resume("--seed", "5"), True, 1, "--seed"),
    ("resume with new pairs added", resume("--dynamic-pairs"), True, 1, "--dynamic-pairs"),
    ("resume with fewer steps", resume("--steps", "1"), True, 2, "--steps"),
    ("resume into another run-dir", resume("--run-dir", "elsewhere"), True, 1, "--run-dir"),
    ("checkpoint of another model", checkpoint_edit(lambda state: state["model"].update(
        {"embeddings.token.weight": torch.zeros(3, 3)})), True, 1, "does not hold the model"),
    ("checkpoint step not a number", checkpoint_edit(lambda state: state.update(step="1")), True, 1,
     "step"),
    ("checkpoint without its random state", checkpoint_edit(lambda state: state.pop("torch_rng")),
     True, 1, "torch_rng"),
    ("checkpoint random state of floats", checkpoint_edit(lambda state: state.update(
        torch_rng=torch.zeros(3))), True, 1, "torch_rng"),
    ("checkpoint history not a list", checkpoint_edit(lambda state: state.update(history="abc")),
     True, 1, "history"),
    ("checkpoint optimizer emptied", checkpoint_edit(lambda state: state.update(optimizer={})), True,
     1, "optimizer"),
    ("config.json data value of the wrong type", lambda t: edit("config.json", (t / "run/config.json")
     .read_text().replace('"max_len": 64', '"max_len": "64"'))(t), True, 1, "data.max_len"),
    ("vocab.txt edited, same size", vocab_edit(lambda lines: lines[:5] + [lines[6], lines[5]] + lines[7:]),
     True, 1, "vocab_sha256"),
    ("min-freq with a vocabulary file", lambda t: ["--vocab-file", t / "run/vocab.txt", "--min-freq", "3"],
     True, 2, "--min-freq"),
    ("download with the shipped corpus", flags("--download"), False, 2, "--download"),
    ("run-dir below a file", lambda t: (write(t / "f", "x"), ["--run-dir", t / "f" / "sub"])[1], False,
     1, "is a file"),
    ("resume a file", lambda t: (write(t / "f", "x"), ["--resume", t / "f"])[1], False, 1,
     "not a run folder"),
    ("vocab-file is a folder", lambda t: ["--vocab-file", t / "run"], True, 1, "give its vocab.txt"),
    ("seed past 64 bits", flags("--seed", str(2**64)), False, 2, "--seed"),
    ("batch size past 2**31", flags("--batch-size", str(2**40)), False, 2, "--batch-size"),
    ("resume with a bad flag", resume("--lr", "-1"), True, 2, "--lr"),
    ("max-len a billion", flags("--max-len", "1000000000"), False, 2, "from --max-len"),
    ("hidden a million", flags("--hidden", "1000000", "--heads", "1"), False, 2,
     "from --hidden, --ffn-hidden or --layers"),
]


@pytest.mark.parametrize("name,setup,needs_run,status,named", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(name, setup, needs_run, status, named,
                                                      tmp_path, good_run, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default runs/ folder would appear here
    if needs_run:
        shutil.copytree(good_run, tmp_path / "run")
    args = setup(tmp_path)
    before = snapshot(tmp_path, TINY)
    code, out, err = run_main(capsys, ["pretrain", *args])
    while HELD:
        HELD.pop().close()
    lines = err.strip().splitlines()
    assert code == status, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert snapshot(tmp_path, TINY) == before  # nothing written, nothing deleted
    assert not (tmp_path / "pwned").exists()


def test_rank_without_world_size_is_one_process(tmp_path, capsys, monkeypatch):
    """RANK alone (no WORLD_SIZE above 1) is not torchrun: the command line checks and claims
    the run folder, as the trainer, which reads WORLD_SIZE, then writes into it."""
    monkeypatch.setenv("RANK", "1")
    write(tmp_path / "theirs" / "loss.png", "my own plot")
    code, out, err = run_main(capsys, ["pretrain", "--run-dir", tmp_path / "theirs", "--steps", "1", *SMALL])
    assert code == 1 and "did not create" in err
    assert (tmp_path / "theirs" / "loss.png").read_text() == "my own plot"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "abc")
    code, out, err = run_main(capsys, ["pretrain", "--run-dir", tmp_path / "r", "--steps", "1", *SMALL])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "RANK='abc'" in err


def test_data_a_run_learns_little_from_is_warned_about(tmp_path, capsys):
    write(tmp_path / "tiny.txt", "<pad>\n<mask>\n<cls>\n<sep>\n<unk>\nthe\n")
    code, out, err = run_main(capsys, ["pretrain", "--run-dir", tmp_path / "a", "--steps", "1",
                                       "--vocab-file", tmp_path / "tiny.txt", *SMALL])
    assert code == 0 and "of the training tokens are <unk>" in err
    code, out, err = run_main(capsys, ["pretrain", "--run-dir", tmp_path / "b", "--steps", "1",
                                       "--seq-len", "27", *SMALL, "--batch-size", "64"])
    assert code == 0 and "only 1 validation pairs" in err and "training pairs, fewer than" in err


def test_wordpiece_vocabulary_smaller_than_asked_is_warned_about():
    from bertlite.data import make_tokenizer
    with pytest.warns(UserWarning, match="--vocab-size 5000: this corpus gives only"):
        tokenizer = make_tokenizer("the cat sat on the mat . the cat sat .", "wordpiece", 5000)
    assert len(tokenizer) < 5000


def test_torch_out_of_memory_is_one_line_naming_the_fix(tmp_path, capsys, monkeypatch):
    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 68719476736 bytes. "
                           "Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr("bertlite.train.train_bert", no_memory)  # cli imports it when it runs
    code, out, err = run_main(capsys, ["pretrain", "--run-dir", tmp_path / "r", "--steps", "1",
                                       *SMALL])
    lines = err.strip().splitlines()
    assert code == 1 and lines[-1] == ("error: out of memory: torch could not get 68.7 GB at once; "
                                       "a smaller --batch-size, --seq-len or model needs less"), err


def test_resume_on_moved_data_says_so_and_records_it(good_run, tmp_path, capsys):
    shutil.copytree(good_run, tmp_path / "run")
    shutil.copytree(TINY, tmp_path / "moved" / "tinywiki")
    code, out, err = run_main(capsys, ["pretrain", "--resume", tmp_path / "run", "--steps", "3",
                                       "--data-dir", tmp_path / "moved", "--no-progress"])
    assert code == 0, err
    assert f"--data-dir {tmp_path / 'moved'} instead of the run's" in out
    changes = json.loads((tmp_path / "run/config.json").read_text())["changes"]
    assert changes == [{"at_step": 2, "steps": 3, "data_dir": str(tmp_path / "moved")}]


def test_at_least_sixty_cases():
    assert len(CASES) >= 60


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    code, _, err = run_main(capsys, ["pretrain", "--resume", tmp_path / "x", "--debug"])
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")
    monkeypatch.setenv("BERTLITE_DEBUG", "1")
    assert "Traceback" in run_main(capsys, ["pretrain", "--resume", tmp_path / "x"])[2]


def test_download_into_a_file_is_one_line(tmp_path, capsys):
    write(tmp_path / "f", "x")
    code, _, err = run_main(capsys, ["download", "--data-dir", tmp_path / "f"])
    assert code == 1 and err.count("\n") == 1 and str(tmp_path / "f") in err


def test_download_into_a_mistyped_folder_creates_nothing(tmp_path, capsys):
    """A typo in --data-dir (a parent that does not exist) is one line, and no folder appears."""
    code, _, err = run_main(capsys, ["download", "--data-dir", tmp_path / "dta" / "wiki"])
    assert code == 1 and err.count("\n") == 1 and "a typo in --data-dir" in err
    assert list(tmp_path.iterdir()) == []


def test_warm_up_longer_than_the_run_warns_once(capsys):
    with pytest.warns(UserWarning, match="--warmup-steps 10 >= --steps 5"):
        TrainConfig(steps=5, warmup_steps=10)


def test_a_warning_does_not_come_before_an_error(tmp_path, capsys, monkeypatch):
    # --steps 2 under the default warm-up would warn, but the run fails on --dropout: one line
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(capsys, ["pretrain", "--steps", "2", "--dropout", "1.0"])
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "--dropout" in err


# Model inputs out of range: a message naming the tensor, not "index out of range in self".
def _inputs():
    tokens = torch.randint(5, 20, (2, 6))
    return tokens, torch.zeros_like(tokens), torch.tensor([6, 4]), torch.tensor([[1, 2], [1, 3]])


@pytest.mark.parametrize("change,named", [
    (lambda t, s, v, p: (t.fill_(20), s, v, p), "tokens holds 20"),
    (lambda t, s, v, p: (t.fill_(-1), s, v, p), "tokens holds -1"),
    (lambda t, s, v, p: (t, s.fill_(2), v, p), "segments holds 2"),
    (lambda t, s, v, p: (t, s, v.fill_(7), p), "valid_lens holds 7"),
    (lambda t, s, v, p: (t, s, v, p.fill_(-1)), "pred_positions holds -1"),
    (lambda t, s, v, p: (t, s, v, p.fill_(6)), "pred_positions holds 6"),
    (lambda t, s, v, p: (t[:0], s[:0], v[:0], p[:0]), "tokens is empty"),
    (lambda t, s, v, p: (t[:, :0], s[:, :0], v, p), "tokens is empty"),
], ids=["token too big", "token negative", "segment too big", "length too big",
        "position negative", "position too big", "empty batch", "length 0"])
def test_model_inputs_out_of_range_name_the_tensor(change, named):
    net = BERTModel(BERTConfig(vocab_size=20, hidden=8, ffn_hidden=8, layers=1, max_len=16))
    with pytest.raises(ValueError, match=named):
        net(*change(*_inputs()))


def test_nan_loss_stops_training_without_saving(tmp_path, tiny):
    net = BERTModel(BERTConfig.preset("d2l", len(tiny.vocab), hidden=16, ffn_hidden=16, layers=1))
    with torch.no_grad():
        net.nsp.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 1"):
        train_bert(net, tiny, TrainConfig(steps=3, batch_size=8), run_dir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_resume_records_training_changes(good_run, tmp_path, capsys):
    shutil.copytree(good_run, tmp_path / "run")
    code, out, err = run_main(capsys, ["pretrain", "--resume", tmp_path / "run", "--steps", "3",
                                       "--batch-size", "16", "--no-progress"])
    assert code == 0, err
    config = json.loads((tmp_path / "run/config.json").read_text())
    assert config["train"]["steps"] == 3 and config["train"]["batch_size"] == 16
    assert config["changes"] == [{"at_step": 2, "steps": 3, "batch_size": 16}]
    steps = [json.loads(x)["step"] for x in open(tmp_path / "run/metrics.jsonl")
             if "eval" not in json.loads(x)]
    assert steps == [1, 2, 3] and "over 3 steps" in out


# Vocabulary files and the corpus readers.
def test_vocab_file_without_final_newline_keeps_its_last_token(tmp_path):
    v = Vocab("a b c".split())
    write(tmp_path / "v.txt", "\n".join(v.idx_to_token))
    assert Vocab.load(tmp_path / "v.txt").idx_to_token == v.idx_to_token


@pytest.mark.parametrize("seed", range(20))
def test_fast_corpus_reader_agrees_with_parse_wikitext_on_any_text(seed):
    rng = np.random.default_rng(seed)
    alphabet = ["a", "B", ".", "=", " ", " ", "\n", "\0", "\r", "\t", "\x0b", "\u2028", "é", "İ",
                "<mask>", "<CLS>", "\x00\x00", "ß"]
    text = "".join(rng.choice(alphabet, 300))
    paragraphs = parse_wikitext(text, 1)
    if not text.strip():
        return
    fast, vocab = Corpus.from_text(text, min_freq=1, min_sentences=1)
    slow = Corpus.encode(paragraphs, Vocab([s for p in paragraphs for s in p], min_freq=1))
    assert fast.paragraphs(vocab) == Corpus.paragraphs(slow, vocab) or not paragraphs
    assert np.array_equal(fast.ids, slow.ids) and np.array_equal(fast.starts, slow.starts)


def test_literal_special_tokens_in_text_are_unknown_words():
    text = " one <mask> two . <cls> three <sep> . \n"
    corpus_, vocab = Corpus.from_text(text, min_freq=1)
    assert set(corpus_.ids.tolist()).isdisjoint({vocab["<mask>"], vocab["<cls>"], vocab["<sep>"]})
    slow = Corpus.encode(parse_wikitext(text), vocab)
    assert np.array_equal(slow.ids, corpus_.ids)


# Downloads: never delete what bertlite did not create; an overall deadline; no old leftovers.
def test_download_keeps_the_users_files_and_adds_the_missing_split(tmp_path):
    import io
    import zipfile
    texts = {s: f" {s} one . two . \n".encode() for s in SPLITS}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for s, t in texts.items():
            zf.writestr(f"wikitext-2/wiki.{s}.tokens", t)
    write(tmp_path / "served.zip", buf.getvalue())
    target = tmp_path / "data" / "wikitext-2"
    write(target / "notes.txt", "mine")
    write(target / "wiki.train.tokens", "my own edited train split . yes . \n")
    before = snapshot(target)
    download_wikitext2(tmp_path / "data", mirrors=[(tmp_path / "served.zip").as_uri()],
                       sha1=hashlib.sha1(buf.getvalue()).hexdigest(),
                       file_sha256={s: hashlib.sha256(t).hexdigest() for s, t in texts.items()})
    after = snapshot(target)
    assert all(after[k] == v for k, v in before.items())  # kept as they were
    assert (target / "wiki.valid.tokens").read_bytes() == texts["valid"]
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


def test_a_trickling_server_hits_the_deadline(tmp_path):
    import http.server

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError, match="not finished after 0.5 s"):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/x", tmp_path / "x", "0" * 64,
                  timeout=5, deadline=0.5)
        assert time.monotonic() - t0 < 3
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []


def test_bad_url_scheme_and_old_temporaries(tmp_path):
    with pytest.raises(RuntimeError) as e:
        fetch_verified(["notaurl", "ftp2://x/y.zip"], tmp_path / "a.zip", "0" * 64)
    assert "notaurl" in one_line(e.value) and "\n" not in one_line(e.value)
    old, young = tmp_path / ".bertlite-download-k2x_9abc", tmp_path / ".bertlite-extract-young123"
    write(old, "left by a killed download")
    young.mkdir()
    # The user's own files, however old and however named, are never ours to delete
    theirs = [tmp_path / ".download-list.txt", tmp_path / ".extract-photos", tmp_path / ".bertlite-download-notes.txt"]
    write(theirs[0], "mine")
    (theirs[1] / "img").mkdir(parents=True)
    write(theirs[2], "mine too")
    for p in (old, *theirs):
        os.utime(p, (time.time() - 7200,) * 2)
    write(tmp_path / "src", "data")
    fetch((tmp_path / "src").as_uri(), tmp_path / "dst", hashlib.sha256(b"data").hexdigest())
    assert not old.exists() and young.exists() and (tmp_path / "dst").read_text() == "data"
    assert all(p.exists() for p in theirs) and (theirs[1] / "img").is_dir()


# Real signals to a real process, then a resume; and a full disk.
def _child(run_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "bertlite", "pretrain", "--run-dir", str(run_dir),
                             "--steps", "100000", *SMALL], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigint_and_sigterm_checkpoint_and_say_how_to_resume(tmp_path, capsys):
    runs = {signal.SIGINT: tmp_path / "int", signal.SIGTERM: tmp_path / "term"}
    children = {sig: _child(run) for sig, run in runs.items()}
    for sig, child in children.items():
        metrics = runs[sig] / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
            time.sleep(0.05)
        child.send_signal(sig)
    for sig, child in children.items():
        out, err = child.communicate(timeout=60)
        assert child.returncode == 128 + sig, err
        assert err.strip().splitlines() == [
            f"stopped by {sig.name} after step {err.split('step ')[1].split(':')[0]}: checkpoint "
            f"written; continue with: python -m bertlite pretrain --resume {runs[sig]}"], err
        done = int(err.split("step ")[1].split(":")[0])
        lines = (runs[sig] / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == done  # every finished step recorded, none lost
        code, out, err = run_main(capsys, ["pretrain", "--resume", runs[sig], "--steps", done + 1])
        assert code == 0, err
        steps = [json.loads(x)["step"] for x in open(runs[sig] / "metrics.jsonl")]
        assert steps[:done + 1] == list(range(1, done + 2))


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(size)`: a fresh tmpfs of that size, unmounted afterwards (skips unless root)."""
    mounts = []

    def mount(size):
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a small tmpfs here (needs root)")
        mounts.append(folder)
        return folder
    yield mount
    for folder in mounts:
        subprocess.run(["umount", str(folder)], check=True)


def test_full_disk_is_one_line_and_leaves_no_half_file(tmpfs, capsys):
    small_disk = tmpfs("1m")
    before = snapshot(TINY)
    code, _, err = run_main(capsys, ["pretrain", "--run-dir", small_disk / "run", "--steps", "1",
                                     *SMALL])
    assert code == 1 and err.count("\n") == 1 and "checkpoint.pt" in err, err
    assert "space" in err and snapshot(TINY) == before
    assert not list((small_disk / "run").glob("*.tmp"))


def test_read_only_folder_is_one_line(tmpfs, good_run, capsys):
    small_disk = tmpfs("32m")
    shutil.copytree(good_run, small_disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    before = snapshot(small_disk)
    for args in (["--resume", small_disk / "run"], ["--run-dir", small_disk / "new", *SMALL]):
        code, _, err = run_main(capsys, ["pretrain", *args])
        assert code == 1 and err.count("\n") == 1 and str(small_disk) in err, err
        assert "read-only" in err.lower()
    assert snapshot(small_disk) == before
