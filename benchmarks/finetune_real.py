"""The payoff: a real pre-trained BERT (all-MiniLM-L6-v2) fine-tuned on the shipped topic task,
against the same architecture randomly initialised, a frozen-encoder linear probe and a
bag-of-words logistic regression, all cross-validated over articles.

    python benchmarks/finetune_real.py [--folds 3] [--steps 60] [--max-len 64]
        [--out data/results/finetune_real.json]

The 567 paragraphs of all three splits are dealt into `--folds` folds by article
(`bertlite.baselines.article_folds`). Seed s fine-tunes on every fold but fold s and tests on
fold s: over the seeds each paragraph is tested once, and each seed also draws its own head,
dropout and shuffling (for the random encoder, its own init). mean ± sd are over those seeds.
Rates (`RATES`) are the usual ones for each start, not tuned on these folds: a pre-trained BERT
takes 1e-4 (BERT's paper used 2e-5 to 5e-5 for ten times more steps), a network trained from
nothing 1e-3; ULMFiT's peak is the new head's rate and discriminative rates divide it by 2.6 per
group below, so it starts higher (1e-3) for the pre-trained encoder (at 1e-4 the layers below
the head would get far smaller rates still, for only 60 steps). Prints each run's time, the
table, and writes it as JSON for notebooks/10_real_bert.ipynb; one thread.
`--only ROW ...` reruns some rows and keeps the others of an existing table.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bertlite.baselines import article_folds, bag_of_words, concat_topics, logistic_regression, subset
from bertlite.finetune import BERTClassifier, FinetuneConfig, evaluate_classifier, finetune, load_topic_dataset
from bertlite.model import BERTModel
from bertlite.pretrained import embed, load
from bertlite.train import TrainConfig, load_pretrained

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "valid", "test")


RATES = {("pre-trained", "plain"): 1e-4, ("pre-trained", "ulmfit"): 1e-3,
         ("random", "plain"): 1e-3, ("random", "ulmfit"): 1e-3}


def recipes(steps: int) -> dict:
    ulmfit = FinetuneConfig(discriminative=True, slanted=True, gradual_unfreezing=True,
                            unfreeze_every=max(1, steps // 16))  # all 8 groups train by mid-way
    return {"plain": FinetuneConfig(), "ulmfit": ulmfit}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="2.5 epochs at batch 16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "data/results/finetune_real.json")
    parser.add_argument("--only", nargs="+", help='rows to rerun, e.g. "pre-trained, ulmfit"')
    args = parser.parse_args()
    torch.set_num_threads(1)
    real, tok = load("all-MiniLM-L6-v2")
    data = concat_topics(load_topic_dataset(s, tok, args.max_len) for s in SPLITS)
    _, words = load_pretrained(ROOT / "data/pretrained/tinywiki-d2l")  # a word-level vocabulary
    word_data = concat_topics(load_topic_dataset(s, words, args.max_len) for s in SPLITS)
    assert word_data.titles == data.titles  # the same paragraphs in the same order
    folds = article_folds(data, args.folds)
    y = data.arrays["label"]
    classes = len(data.categories)
    rows = json.loads(args.out.read_text())["rows"] if args.only else {}
    wanted = lambda name: not args.only or name in args.only  # noqa: E731

    def record(name, accs):
        rows[name] = {"mean": statistics.mean(accs), "sd": statistics.stdev(accs), "per_seed": accs}
        print(f"{name:28s} {rows[name]['mean']:.3f} ± {rows[name]['sd']:.3f}   "
              + " ".join(f"{a:.3f}" for a in accs), flush=True)

    def held_out(seed):  # (training indices, test indices) of fold `seed`
        return [i for f, idx in enumerate(folds) if f != seed for i in idx], folds[seed]

    print(f"{len(data)} paragraphs, {args.folds} folds of {[len(f) for f in folds]}; "
          f"{args.steps} steps of {args.batch_size}, max_len {args.max_len}")
    bow = bag_of_words(word_data, len(words), words.specials)
    features = embed(real, (dataset_rows(data, i, 64) for i in range(0, len(data), 64)))
    for name, x in (("bag-of-words", bow), ("frozen encoder, linear probe", features)):
        if not wanted(name):
            continue
        accs = []
        for seed in range(args.folds):
            tr, te = held_out(seed)
            pred = logistic_regression(x[tr], y[tr], x[te], classes, steps=300)
            accs.append((pred == y[te]).float().mean().item())
        record(name, accs)
    for encoder in ("pre-trained", "random"):
        for recipe, ft in recipes(args.steps).items():
            if not wanted(f"{encoder}, {recipe}"):
                continue
            lr, accs = RATES[encoder, recipe], []
            for seed in range(args.folds):
                tr, te = held_out(seed)
                torch.manual_seed(seed)  # the random encoder's init
                bert = load("all-MiniLM-L6-v2")[0] if encoder == "pre-trained" else BERTModel(real.config)
                net = BERTClassifier(bert, classes, seed=seed, pooling="mean")
                cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=lr,
                                  optimizer="adamw", schedule="linear",
                                  warmup_steps=args.steps // 10, seed=seed)
                start = time.time()
                finetune(net, subset(data, tr), cfg, ft=ft)
                accs.append(evaluate_classifier(net, subset(data, te), 64)["acc"])
                print(f"  {encoder} {recipe} seed {seed}: {accs[-1]:.3f} ({time.time() - start:.0f} s)",
                      flush=True)
            record(f"{encoder}, {recipe}", accs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = {"command": "python benchmarks/finetune_real.py " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "only")),
             "paragraphs": len(data), "folds": args.folds,
             "rates": {f"{e}, {r}": lr for (e, r), lr in RATES.items()}, "rows": rows}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {args.out}")


def dataset_rows(data, start, size):
    """The dataset's own rows as a model batch (already tokenized and padded)."""
    a = {k: v[start:start + size] for k, v in data.arrays.items()}
    return {"tokens": a["tokens"], "segments": a["segments"], "valid_lens": a["valid_lens"]}


if __name__ == "__main__":
    main()
