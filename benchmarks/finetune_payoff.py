"""ULMFiT's three stages with bertlite's own models: does pre-training pay off on the topic task?

    python benchmarks/finetune_payoff.py [--parts perplexity table probe few_labels sweep pair_tasks]
        [--seeds 0 1 2] [--folds 3] [--steps 150] [--max-len 128]
        [--adapted-run runs/adapt] [--tinywiki-run runs/tinywiki-only]
        [--pair-runs runs/pair-nsp runs/pair-sop] [--out data/results/finetune_payoff.json]
        [--rows random "tinywiki only" WikiText-2 "WikiText-2 + adaptation"]

Every classifier has the shape of the shipped WikiText-2 model (d2l sizes, its 20,066-word
vocabulary) and the same fine-tuning recipe, so the rows differ only in where the encoder's
weights come from:
  random                   BERT's init, normal(0, 0.02), seeded
  tinywiki only            pre-trained on the topic task's own text alone (stage 2 from random)
  WikiText-2               data/pretrained/wikitext2-bert (stage 1)
  WikiText-2 + adaptation  stage 1, then masked-LM training on the topic task's text (stage 2)
Plus a bag-of-words logistic regression, and all-MiniLM-L6-v2 read from
data/results/finetune_real.json (benchmarks/finetune_real.py: another vocabulary, one run per fold).

The 567 paragraphs of all three splits are cross-validated over articles (`article_folds`). A
stage-2 model of fold f reads only the text of the articles outside fold f (no labels, and no
paragraph it is tested on); it is trained once per fold (seed 0) and kept in --cache. Each seed
fine-tunes every fold (its own head, dropout, shuffling and, for the random row, init) and tests
each paragraph once; mean ± sd are over the seeds' accuracies.

Parts:
  perplexity  tinywiki validation perplexity (fixed masks) of the CLI runs: WikiText-2 before
              and after `pretrain --init-from`, and tinywiki alone, beside the unigram model
  table       the rows above, each with the plain recipe and with ULMFiT's techniques
  probe       each encoder frozen: logistic regression on its mean-pooled vectors (first seed),
              and the same for gentler and longer adaptations (ADAPTATIONS)
  few_labels  accuracy against labelled paragraphs per class (2, 5, 10, 20; all: the table)
  sweep       the plain recipe with one of rate, pooling, length, steps changed (first seed)
  pair_tasks  two WikiText-2 runs that differ only in --pair-task: each one's NSP and SOP
              validation accuracy, and its fine-tuning accuracy (needs ../shared/data)
Prints each result as it comes and writes them all, with this command, to --out (notebook 11
reads the shipped one); a part not run keeps its entry from an existing file, and so does a row
not named in --rows (after a new data/pretrained/wikitext2-bert, `--rows WikiText-2 "WikiText-2 +
adaptation"` measures again only what depends on it; after a new finetune_real.json,
`--parts table --rows` with no row copies its MiniLM rows and keeps the part's minutes). Parts can run side by side in separate
processes (`--threads 1` each); the stage-2 models are shared through --cache, where an adapted
model's file name carries a digest of the WikiText-2 weights it started from.
"""
import argparse
import copy
import functools
import hashlib
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import wikitext2_dir
from bertlite.baselines import (article_folds, bag_of_words, concat_topics, logistic_regression,
                                subset, unigram_scores)
from bertlite.data import PretrainDataset, load_pretrain_dataset
from bertlite.finetune import (BERTClassifier, FinetuneConfig, evaluate_classifier, finetune,
                               load_topic_dataset, read_articles)
from bertlite.model import BERTModel
from bertlite.pretrained import embed
from bertlite.train import TrainConfig, evaluate, load_pretrained, model_from_checkpoint, train_bert

ROOT = Path(__file__).resolve().parent.parent
WT2 = ROOT / "data/pretrained/wikitext2-bert"
SPLITS = ("train", "valid", "test")
ROWS = ("random", "tinywiki only", "WikiText-2", "WikiText-2 + adaptation")
# Stage 2: (steps, peak rate) at batch 64, AdamW, 10% warm-up then linear decay, dynamic masks.
# Adaptation stops at 100 steps (7 to 9 epochs of a fold's text): by then the validation
# perplexity has levelled off (the `perplexity` part's curve: 53.7 at step 50, 52.8 at 100).
# Tinywiki alone gets the quick job's 300 steps from a random start.
STAGE2 = {"WikiText-2 + adaptation": (100, 1e-3), "tinywiki only": (300, 1e-3)}
# Gentler and longer adaptations, compared by the linear probe only.
ADAPTATIONS = {"WikiText-2 + adaptation, lr 1e-4": (100, 1e-4),
               "WikiText-2 + adaptation, lr 3e-4": (100, 3e-4),
               "WikiText-2 + adaptation, 30 steps": (30, 1e-3),
               "WikiText-2 + adaptation, 300 steps": (300, 1e-3)}
# Fine-tuning. Plain: every layer at 1e-3, which beat 3e-3 and 3e-4 for the random encoder;
# for the adapted one 3e-4 is within one seed's noise (0.698 against 0.690, the `sweep` part). ULMFiT: peak 1e-2 for the head, 2.6 times less per group below,
# slanted triangular rates, one more group unfrozen every steps/8.
RECIPES = {"plain": (1e-3, FinetuneConfig()),
           "ULMFiT": (1e-2, FinetuneConfig(discriminative=True, slanted=True, gradual_unfreezing=True))}
FEW = (2, 5, 10, 20)
PARTS = ("perplexity", "table", "probe", "few_labels", "sweep", "pair_tasks")
ROW_PARTS = ("table", "probe", "few_labels", "sweep")  # the parts that keep rows not in --rows


def mean_sd(xs) -> dict:
    return {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "per_seed": xs}


def stage2(start: BERTModel, paragraphs, vocab, steps: int, lr: float, seed: int) -> BERTModel:
    """Masked-LM (+ NSP) training of a copy of `start` on `paragraphs`, new masks every epoch."""
    data = PretrainDataset.from_paragraphs(paragraphs, 64, vocab=vocab, dynamic_masking=True, seed=seed)
    net = copy.deepcopy(start).train()
    cfg = TrainConfig(steps=steps, batch_size=64, lr=lr, optimizer="adamw", schedule="linear",
                      warmup_steps=steps // 10, seed=seed)
    train_bert(net, data, cfg, progress=False)
    return net.eval()


class Task:
    """The topic task's paragraphs, folds and the text outside each fold."""

    def __init__(self, vocab, max_len: int, folds: int):
        self.vocab = vocab
        self.data = concat_topics(load_topic_dataset(s, vocab, max_len) for s in SPLITS)
        self.folds = article_folds(self.data, folds)
        self.y = self.data.arrays["label"]
        self.classes = len(self.data.categories)
        self.articles = {t: p for s in SPLITS for t, p in read_articles("tinywiki", s)}
        self.bow = bag_of_words(self.data, len(vocab), vocab.specials)  # (N, V), for every fold

    def train_index(self, fold):
        return [i for f, idx in enumerate(self.folds) if f != fold for i in idx]

    def text_outside(self, fold):
        """Paragraphs of two or more sentences of the articles that fold `fold` does not test."""
        tested = {self.data.titles[i] for i in self.folds[fold]}
        return [p for t, ps in self.articles.items() if t not in tested for p in ps if len(p) >= 2]

    def few(self, fold, k, seed):
        """`k` random training paragraphs of each class (all of them when k is None)."""
        index = self.train_index(fold)
        if k is None:
            return index
        g = torch.Generator().manual_seed(seed)
        picked = []
        for c in range(self.classes):
            of_c = [i for i in index if self.y[i] == c]
            picked += [of_c[j] for j in torch.randperm(len(of_c), generator=g)[:k].tolist()]
        return picked


def fine_tune_correct(bert, task, train_index, fold, recipe, seed, steps, lr=None,
                      pooling="mean") -> int:
    """Paragraphs of fold `fold` that `bert`, fine-tuned on `train_index`, classifies right."""
    recipe_lr, ft = RECIPES[recipe]
    lr = lr or recipe_lr
    if ft.gradual_unfreezing:
        ft = FinetuneConfig(**{**vars(ft), "unfreeze_every": max(1, steps // 8)})
    net = BERTClassifier(bert, task.classes, seed=seed, pooling=pooling)
    cfg = TrainConfig(steps=steps, batch_size=min(32, len(train_index)), lr=lr, optimizer="adamw",
                      schedule="linear", warmup_steps=steps // 10, seed=seed)
    finetune(net, subset(task.data, train_index), cfg, ft=ft)
    return round(evaluate_classifier(net, subset(task.data, task.folds[fold]))["acc"] * len(task.folds[fold]))


def encoder(row, task, wt2, seed, fold, cache: Path):
    """The encoder of `row` for (seed, fold). A stage-2 model is trained once per fold (seed 0)
    and its weights kept in the folder `cache`, which later runs and other parts reuse."""
    if row == "random":
        torch.manual_seed(seed)  # BERTModel's init draws from the global generator
        return BERTModel(wt2.config)
    if row == "WikiText-2":
        return copy.deepcopy(wt2)
    adapting = row.startswith("WikiText-2 + adaptation")
    start_tag = f"-from-{wt2_digest()}" if adapting else ""  # a new stage 1 is a new stage 2
    path = cache / f"{row.replace(' ', '_')}-fold{fold}{start_tag}.pt"
    net = BERTModel(wt2.config)
    if path.exists():
        net.load_state_dict(torch.load(path))
        return net
    start = wt2 if adapting else encoder("random", task, wt2, 0, fold, cache)
    t = time.time()
    net = stage2(start, task.text_outside(fold), task.vocab, *{**STAGE2, **ADAPTATIONS}[row], seed=0)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    print(f"  stage 2 for {row}, fold {fold}: {time.time() - t:.0f} s", flush=True)
    return net


@functools.cache  # one read of the weights per process, not one per fold and seed
def wt2_digest() -> str:
    """The first 12 hex digits of the shipped WikiText-2 weights' SHA-256."""
    return hashlib.sha256((WT2 / "model.safetensors").read_bytes()).hexdigest()[:12]


def kept(args, part: str, row: str, key=None):
    """A row not named in --rows: its stored entry from --out (None if the row is to be run)."""
    base = "WikiText-2 + adaptation" if row.startswith("WikiText-2 + adaptation") else row
    if base in args.rows:
        return None
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    entry = stored.get(part, {})
    for k in key or [row]:
        entry = entry.get(k) if isinstance(entry, dict) else None
    if entry is None:
        raise SystemExit(f"--rows leaves out {row!r}, but {args.out} has no {part} entry for it: "
                         f"add it to --rows")
    return entry


def bow_correct(task, train_index, fold) -> int:
    x, test = task.bow, task.folds[fold]
    pred = logistic_regression(x[train_index], task.y[train_index], x[test], task.classes)
    return int((pred == task.y[test]).sum())


def part_table(task, wt2, args, cache) -> dict:
    n = len(task.data)
    rows = {"bag-of-words": mean_sd([sum(bow_correct(task, task.train_index(f), f)
                                         for f in range(args.folds)) / n])}  # nothing random
    print(f"{'bag-of-words':32s} {rows['bag-of-words']['mean']:.3f}", flush=True)
    for recipe in RECIPES:
        for row in ROWS:
            if (old := kept(args, "table", row, [f"{row}, {recipe}"])) is not None:
                rows[f"{row}, {recipe}"] = old
                print(f"{row + ', ' + recipe:32s} {old['mean']:.3f} (kept from {args.out.name})")
                continue
            accs = []
            for seed in args.seeds:
                correct = sum(fine_tune_correct(encoder(row, task, wt2, seed, f, cache), task,
                                                task.train_index(f), f, recipe, seed, args.steps)
                              for f in range(args.folds))
                accs.append(correct / n)
            rows[f"{row}, {recipe}"] = mean_sd(accs)
            print(f"{row + ', ' + recipe:32s} {statistics.mean(accs):.3f} ± {rows[f'{row}, {recipe}']['sd']:.3f}"
                  f"   per seed {' '.join(f'{a:.3f}' for a in accs)}", flush=True)
    real = json.loads((ROOT / "data/results/finetune_real.json").read_text())
    for recipe, key in (("plain", "pre-trained, plain"), ("ULMFiT", "pre-trained, ulmfit")):
        rows[f"all-MiniLM-L6-v2, {recipe}"] = {**real["rows"][key], "from": "finetune_real.json",
                                               "rate": real["rates"][key]}
    return rows


def part_few_labels(task, wt2, args, cache) -> dict:
    curves = {}
    for k in FEW:  # "all" is the table's plain rows
        name = str(k)
        for row in ("bag-of-words", "random", "WikiText-2", "WikiText-2 + adaptation"):
            if row != "bag-of-words" and (old := kept(args, "few_labels", row,
                                                       ["curves", row, name])) is not None:
                curves.setdefault(row, {})[name] = old
                continue
            accs = []
            for seed in args.seeds:
                correct = 0
                for f in range(args.folds):
                    index = task.few(f, k, seed)
                    if row == "bag-of-words":
                        correct += bow_correct(task, index, f)
                    else:
                        bert = encoder(row, task, wt2, seed, f, cache)
                        correct += fine_tune_correct(bert, task, index, f, "plain", seed, args.steps)
                accs.append(correct / len(task.data))
            curves.setdefault(row, {})[name] = mean_sd(accs)
            print(f"{name:>4s} per class  {row:24s} {statistics.mean(accs):.3f} ± "
                  f"{curves[row][name]['sd']:.3f}", flush=True)
    return {"per_class": list(FEW), "curves": curves}


SWEEP = {"the recipe": {}, "lr 3e-4": {"lr": 3e-4}, "lr 3e-3": {"lr": 3e-3},
         "<cls> pooling": {"pooling": "cls"}, "max_len 64": {"max_len": 64}, "75 steps": {"steps": 75}}


def part_sweep(task, wt2, args, cache) -> dict:
    """The plain recipe with one thing changed at a time, first seed only: is the gap between
    pre-trained and random encoders a matter of rate, pooling, length or epochs?"""
    out, tasks = {}, {args.max_len: task}
    stored = json.loads(args.out.read_text()) if args.out.exists() else {}
    table = stored.get("table", {}) if stored.get("seeds", [None])[0] == args.seeds[0] else {}
    for name, change in SWEEP.items():
        if not change and all(f"{row}, plain" in table for row in ("random", "WikiText-2 + adaptation")):
            # The unchanged recipe is the table's first seed: the same runs, already made.
            out[name] = {row: table[f"{row}, plain"]["per_seed"][0]
                         for row in ("random", "WikiText-2 + adaptation")}
            print(f"{name:14s} (from the table) " + "  ".join(f"{r} {a:.3f}" for r, a in out[name].items()))
            continue
        max_len = change.get("max_len", args.max_len)
        if max_len not in tasks:
            tasks[max_len] = Task(task.vocab, max_len, args.folds)
        t, seed = tasks[max_len], args.seeds[0]
        for row in ("random", "WikiText-2 + adaptation"):
            if (old := kept(args, "sweep", row, ["rows", name, row])) is not None:
                out.setdefault(name, {})[row] = old
                continue
            correct = sum(fine_tune_correct(encoder(row, t, wt2, seed, f, cache), t, t.train_index(f), f,
                                            "plain", seed, change.get("steps", args.steps),
                                            change.get("lr"), change.get("pooling", "mean"))
                          for f in range(args.folds))
            out.setdefault(name, {})[row] = correct / len(t.data)
        print(f"{name:14s} " + "  ".join(f"{row} {acc:.3f}" for row, acc in out[name].items()), flush=True)
    return {"seed": args.seeds[0], "changes": {k: v for k, v in SWEEP.items()}, "rows": out}


def part_probe(task, wt2, args, cache) -> dict:
    """Each encoder frozen: logistic regression on its unit-length mean-pooled vectors (the
    linear probe of notebook 10). No fine-tuning noise: is the topic in the features?"""
    out = {}
    a = task.data.arrays
    for row in (*ROWS, *ADAPTATIONS):
        if (old := kept(args, "probe", row)) is not None:
            out[row] = old
            continue
        correct = 0
        for f in range(args.folds):
            net = encoder(row, task, wt2, args.seeds[0], f, cache)
            x = embed(net, [{"tokens": a["tokens"][i:i + 64], "segments": a["segments"][i:i + 64],
                             "valid_lens": a["valid_lens"][i:i + 64]} for i in range(0, len(task.data), 64)])
            tr, te = task.train_index(f), task.folds[f]
            correct += int((logistic_regression(x[tr], task.y[tr], x[te], task.classes) == task.y[te]).sum())
        out[row] = correct / len(task.data)
        print(f"linear probe, frozen {row:36s} {out[row]:.3f}", flush=True)
    return out


def part_perplexity(args, wt2, vocab) -> dict:
    train = load_pretrain_dataset(64, vocab=vocab, seed=0)
    valid = load_pretrain_dataset(64, split="valid", vocab=vocab, seed=0)
    out = {"validation_pairs": len(valid), "masked_words": int((valid.arrays["mlm_weights"] > 0).sum()),
           "unigram": unigram_scores(train, valid)}
    models = {"WikiText-2 (before adaptation)": wt2,
              "WikiText-2 + adaptation": model_from_checkpoint(args.adapted_run / "checkpoint.pt"),
              "tinywiki only": model_from_checkpoint(args.tinywiki_run / "checkpoint.pt")}
    for name, net in models.items():
        out[name] = {k: v for k, v in evaluate(net, valid).items() if k != "nsp_loss"}
    for name, run in (("WikiText-2 + adaptation", args.adapted_run), ("tinywiki only", args.tinywiki_run)):
        if (run / "vocab.txt").read_text() != (WT2 / "vocab.txt").read_text():
            raise SystemExit(f"{run} was not trained with {WT2}/vocab.txt: its perplexity would not compare")
        out[name]["curve"] = [{"step": r["step"], "perplexity": r["eval"]["perplexity"]}
                              for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                              if "eval" in r]
    for name in models:
        print(f"{name:32s} perplexity {out[name]['perplexity']:7.1f}, MLM accuracy {out[name]['mlm_acc']:.3f}")
    print(f"{'unigram model':32s} perplexity {out['unigram']['perplexity']:7.1f}, "
          f"MLM accuracy {out['unigram']['mlm_acc']:.3f}", flush=True)
    return out


def part_pair_tasks(task, args, vocab) -> dict:
    data_dir = wikitext2_dir()
    if data_dir is None:
        raise SystemExit("pair_tasks needs ../shared/data/wikitext-2")
    out = {}
    for run in args.pair_runs:
        config = json.loads((run / "config.json").read_text())
        net = model_from_checkpoint(run / "checkpoint.pt")
        if (run / "vocab.txt").read_text() != (WT2 / "vocab.txt").read_text():
            raise SystemExit(f"{run} was not trained with {WT2}/vocab.txt: pass runs that were")
        trained_on = config["data"]["pair_task"]
        curve = [{"step": r["step"], "perplexity": r["eval"]["perplexity"], "pair_acc": r["eval"]["nsp_acc"]}
                 for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval" in r]
        r = {"run_dir": str(run.resolve().relative_to(ROOT)) if run.resolve().is_relative_to(ROOT) else str(run),
             "steps": config["train"]["steps"], "curve": curve}  # validation on its own task
        for pair_task in ("nsp", "sop"):
            valid = load_pretrain_dataset(64, "wikitext-2", "valid", data_dir, vocab=vocab, seed=0,
                                          pair_task=pair_task)
            ev = evaluate(net, valid)
            r[f"{pair_task}_acc"] = ev["nsp_acc"]
            if pair_task == "nsp":
                r["perplexity"], r["mlm_acc"] = ev["perplexity"], ev["mlm_acc"]
        accs = [sum(fine_tune_correct(copy.deepcopy(net), task, task.train_index(f), f, "plain", seed,
                                      args.steps) for f in range(args.folds)) / len(task.data)
                for seed in args.seeds]
        r["fine_tuned"] = mean_sd(accs)
        out[trained_on] = r
        print(f"trained on {trained_on}: NSP accuracy {r['nsp_acc']:.3f}, SOP accuracy "
              f"{r['sop_acc']:.3f}, perplexity {r['perplexity']:.1f}; fine-tuned "
              f"{statistics.mean(accs):.3f} ± {r['fine_tuned']['sd']:.3f}", flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps (batch 32)")
    parser.add_argument("--max-len", type=int, default=128, help="tokens per paragraph")
    parser.add_argument("--adapted-run", type=Path, default=ROOT / "runs/adapt")
    parser.add_argument("--tinywiki-run", type=Path, default=ROOT / "runs/tinywiki-only")
    parser.add_argument("--pair-runs", type=Path, nargs=2, default=[ROOT / "runs/pair-nsp", ROOT / "runs/pair-sop"])
    parser.add_argument("--out", type=Path, default=ROOT / "data/results/finetune_payoff.json")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/payoff-stage2",
                        help="where the stage-2 models of each fold are kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS,
                        help="encoders to measure again; the others keep their entries from --out "
                             "(none: only bag-of-words and the copied MiniLM rows are redone)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wt2, vocab = load_pretrained(WT2)
    wt2 = wt2.float()  # shipped in fp16
    task = Task(vocab, args.max_len, args.folds)
    result = dict(command=shlex.join(["python", "benchmarks/finetune_payoff.py", *sys.argv[1:]]),
                  paragraphs=len(task.data), folds=args.folds, seeds=args.seeds,
                  fine_tuning={"steps": args.steps, "batch_size": 32, "max_len": args.max_len,
                               "pooling": "mean", "rates": {r: lr for r, (lr, _) in RECIPES.items()}},
                  stage2={row: {"steps": n, "lr": lr, "batch_size": 64} for row, (n, lr) in STAGE2.items()})
    print(f"{len(task.data)} paragraphs, {args.folds} folds of {[len(f) for f in task.folds]}, "
          f"seeds {args.seeds}; fine-tuning {args.steps} steps of 32, max_len {args.max_len}", flush=True)
    cache = args.cache
    for part in args.parts:
        t = time.time()
        if part == "perplexity":
            result[part] = part_perplexity(args, wt2, vocab)
        elif part == "table":
            result[part] = part_table(task, wt2, args, cache)
        elif part == "few_labels":
            result[part] = part_few_labels(task, wt2, args, cache)
        elif part == "probe":
            result[part] = part_probe(task, wt2, args, cache)
        elif part == "sweep":
            result[part] = part_sweep(task, wt2, args, cache)
        elif part == "pair_tasks":
            result[part] = part_pair_tasks(task, args, vocab)
        # After every part; other parts may be running in other processes: keep what they wrote.
        latest = json.loads(args.out.read_text()) if args.out.exists() else {}
        latest.update({k: v for k, v in result.items() if k not in PARTS or k == part})
        # A part's minutes time its measured rows: with --rows and no row, the stored ones stay
        if args.rows or part not in ROW_PARTS or part not in latest.get("minutes", {}):
            latest.setdefault("minutes", {})[part] = round((time.time() - t) / 60, 1)
        latest.setdefault("commands", {})[part] = result["command"]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(latest, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
