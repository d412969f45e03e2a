"""Fixed sentence pairs against new pairs every epoch, on WikiText-2: the validation curves.

    python benchmarks/dynamic_pairs.py FIXED_RUN NEW_RUN [--json data/results/wikitext2_dynamic_pairs.json]

NEW_RUN is the shipped model's run (its command is in data/pretrained/wikitext2-bert/README.md);
FIXED_RUN is the same command without `--dynamic-pairs`, so its pairs are drawn once (the model
shipped before this one). Reads both runs' config.json and metrics.jsonl, and writes both
validation curves (perplexity, MLM accuracy, NSP loss and accuracy every 500 steps,
fixed validation masks and pairs), the mean training NSP accuracy of the last 250 steps (how
well each model knows its own training pairs) and the minutes of training steps. Prints a table.
Notebook 06 reads the JSON. No training happens here: it takes a second.
"""
import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def summary(metrics_file: Path) -> dict:
    history = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    steps = [r for r in history if "eval" not in r]
    curve = [{"step": r["step"], **{k: r["eval"][k] for k in ("perplexity", "mlm_acc", "nsp_loss",
                                                               "nsp_acc")}}
             for r in history if "eval" in r]
    last = steps[-250:]
    return {"steps": steps[-1]["step"], "curve": curve,
            "train_nsp_acc_last_250": sum(r["nsp_acc"] for r in last) / len(last),
            "training_minutes": round(sum(r["seconds"] for r in steps) / 60, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("fixed_run", type=Path, help="a run without --dynamic-pairs")
    parser.add_argument("new_run", type=Path, help="the same command with --dynamic-pairs")
    parser.add_argument("--json", type=Path, default=ROOT / "data" / "results" /
                        "wikitext2_dynamic_pairs.json")
    args = parser.parse_args()
    for run, wanted in ((args.fixed_run, False), (args.new_run, True)):
        missing = [f for f in ("config.json", "metrics.jsonl") if not (run / f).is_file()]
        if missing:
            raise SystemExit(f"{run} has no {' or '.join(missing)}: give a pre-training run folder")
        config = json.loads((run / "config.json").read_text())
        if bool(config["data"].get("dynamic_pairs")) != wanted:
            raise SystemExit(f"{run} was {'not ' if wanted else ''}trained with --dynamic-pairs: "
                             f"give the run without it first, then the run with it")
    out = {"command": f"python benchmarks/dynamic_pairs.py {args.fixed_run} {args.new_run}",
           "fixed_pairs": summary(args.fixed_run / "metrics.jsonl"),
           "new_pairs": summary(args.new_run / "metrics.jsonl")}
    for name in ("fixed_pairs", "new_pairs"):
        r = out[name]
        print(f"{name}: {r['steps']} steps, {r['training_minutes']} min of steps, training NSP "
              f"accuracy (last 250 steps) {r['train_nsp_acc_last_250']:.3f}")
    print(f"{'step':>5} {'perplexity':>21} {'MLM accuracy':>15} {'NSP loss':>15} {'NSP accuracy':>15}")
    print(f"{'':>5} {'fixed':>10} {'new':>10} {'fixed':>7} {'new':>7} {'fixed':>7} {'new':>7} "
          f"{'fixed':>7} {'new':>7}")
    for a, b in zip(out["fixed_pairs"]["curve"], out["new_pairs"]["curve"]):
        print(f"{a['step']:>5} {a['perplexity']:>10.1f} {b['perplexity']:>10.1f} "
              f"{a['mlm_acc']:>7.3f} {b['mlm_acc']:>7.3f} {a['nsp_loss']:>7.3f} {b['nsp_loss']:>7.3f} "
              f"{a['nsp_acc']:>7.3f} {b['nsp_acc']:>7.3f}")
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
