"""Does pre-training help? Topic classification of the shipped corpus's paragraphs (6 classes,
465 training, 51 validation and 51 test paragraphs) with a pre-trained encoder vs a randomly
initialised one of the same shape, fine-tuned by the same recipe with the same seeds.

    python benchmarks/finetune_topics.py [--pretrained data/pretrained/tinywiki-d2l]
        [--seeds 0 1 2] [--steps 150] [--lr LR] [--pooling cls mean] [--recipes plain ulmfit]
        [--json data/results/finetune_topics.json]

`--pretrained` is a folder written by `bertlite.train.save_pretrained` (model.safetensors,
config.json, vocab.txt) or a pre-training run directory (checkpoint.pt, vocab.txt). Two recipes: "plain"
(every layer at one rate, peak 3e-3, linear warm-up and decay: BERT's) and "ulmfit"
(discriminative rates, slanted triangular rates and gradual unfreezing, peak 1e-2 as in the
paper), both with AdamW; each with the pooled `<cls>` state or the mean
of the last hidden states. Baselines: the majority class, and a bag-of-words logistic regression
(what a model that only counts words reaches). Prints accuracies; asserts nothing. With
`--json` it also writes them, with the command, to a file (notebook 09 reads the shipped one).
"""
import argparse
import copy
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch

from bertlite.baselines import bag_of_words, logistic_regression
from bertlite.finetune import (BERTClassifier, FinetuneConfig, evaluate_classifier, finetune,
                               load_topic_dataset)
from bertlite.model import BERTModel
from bertlite.train import TrainConfig, load_pretrained, model_from_checkpoint
from bertlite.vocab import Vocab

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"plain": (3e-3, FinetuneConfig()),  # (peak rate, options)
           "ulmfit": (1e-2, FinetuneConfig(discriminative=True, slanted=True, gradual_unfreezing=True))}


def load_encoder(folder: Path):
    if (folder / "checkpoint.pt").exists():  # a pre-training run directory
        return model_from_checkpoint(folder / "checkpoint.pt"), Vocab.load(folder / "vocab.txt")
    return load_pretrained(folder)


def mean_sd(xs) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def bag_of_words_accuracy(data: dict, vocab) -> dict:
    """Accuracy per split of logistic regression on word frequencies (specials left out), the
    same baseline as notebook 10's (`bertlite.baselines`): nothing random."""
    x = {s: bag_of_words(d, len(vocab), vocab.specials) for s, d in data.items()}
    y = {s: d.arrays["label"] for s, d in data.items()}
    classes = len(data["train"].categories)
    return {s: (logistic_regression(x["train"], y["train"], x[s], classes) == y[s]).float().mean().item()
            for s in data}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", type=Path, default=ROOT / "data/pretrained/tinywiki-d2l")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=150, help="about 10 epochs at batch 32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help="peak rate for every recipe (default: the recipe's)")
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--pooling", nargs="+", default=["cls", "mean"], choices=["cls", "mean"])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if not args.pretrained.exists():
        raise SystemExit(f"{args.pretrained} not found: pass --pretrained FOLDER (a folder from "
                         "save_pretrained, or a run directory of `python -m bertlite pretrain`)")
    pretrained, vocab = load_encoder(args.pretrained)
    data = {s: load_topic_dataset(s, vocab, args.max_len) for s in ("train", "valid", "test")}
    counts = torch.bincount(data["train"].arrays["label"], minlength=len(data["train"].categories))
    majority = int(counts.argmax())  # ties go to the first class in the table
    print(f"topic task: {', '.join(f'{len(d)} {s}' for s, d in data.items())} paragraphs, classes "
          f"{data['train'].categories}, training counts {counts.tolist()}; vocabulary {len(vocab)}, "
          f"encoder {pretrained.config.hidden} hidden x {pretrained.config.layers} blocks; "
          f"threads {torch.get_num_threads()}")
    for split in ("valid", "test"):
        acc = (data[split].arrays["label"] == majority).float().mean().item()
        print(f"majority class ({data['train'].categories[majority]}): {split} accuracy {acc:.3f}")
    bow = bag_of_words_accuracy(data, vocab)
    results = {"command": "python benchmarks/finetune_topics.py " + " ".join(sys.argv[1:]),
               "majority": {s: (data[s].arrays["label"] == majority).float().mean().item()
                            for s in ("valid", "test")},
               "bag_of_words": bow, "rows": []}
    print(f"bag-of-words logistic regression: train {bow['train']:.3f}, valid {bow['valid']:.3f}, "
          f"test {bow['test']:.3f}")
    print(f"fine-tuning: {args.steps} steps of {args.batch_size}, peak rate "
          f"{args.lr or {r: RECIPES[r][0] for r in args.recipes}}, adamw, seeds {args.seeds}\n")
    print(f"{'encoder':11s} {'pooling':7s} {'recipe':7s} {'valid acc':>15s} {'test acc':>15s}   "
          "test acc per seed")
    encoders = ("pre-trained", "random")
    for pooling, recipe, encoder in itertools.product(args.pooling, args.recipes, encoders):
        valid, test = [], []
        for seed in args.seeds:
            if encoder == "pre-trained":
                bert = copy.deepcopy(pretrained)
            else:
                torch.manual_seed(seed)  # BERTModel's init draws from the global generator
                bert = BERTModel(pretrained.config)
            net = BERTClassifier(bert, len(data["train"].categories), seed=seed, pooling=pooling)
            lr, ft = RECIPES[recipe]
            cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr or lr,
                              optimizer="adamw", schedule="linear",
                              warmup_steps=args.steps // 10, seed=seed)
            finetune(net, data["train"], cfg, ft=ft)  # STLR replaces the linear schedule
            valid.append(evaluate_classifier(net, data["valid"])["acc"])
            test.append(evaluate_classifier(net, data["test"])["acc"])
        print(f"{encoder:11s} {pooling:7s} {recipe:7s} {mean_sd(valid):>15s} {mean_sd(test):>15s}   "
              + " ".join(f"{x:.3f}" for x in test), flush=True)
        results["rows"].append({"encoder": encoder, "pooling": pooling, "recipe": recipe,
                                "seeds": args.seeds, "valid": valid, "test": test})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
