"""Cheap proxies for choosing the full-training-set recipe, on validation data only.

    python benchmarks/recipe_proxies.py --data data/cifar10-jpg --out ~/vggcifar-runs/proxies \
        [--set v1|v2] [--width W] [--epochs E] [--only NAME ...]

Two sets. ``v1`` (width 0.25, 8 epochs) is the table of issue 11: under-fitted proxies that
could judge schedule length and Nesterov but not regularisers. ``v2`` (width 0.5, 30 epochs by
default; issue 20) over-fits the way the full run does and compares the regularisers with public
evidence, every variant with seeds 0 and 1, each read against the baseline of the same seed.

Each variant is one ordinary ``vgg-train`` run (through the library, the same trainer) of a
narrow VGG16 on 90% of the training images (``--split 0.9``), scored by its best validation
accuracy on the other 5,000 training images; the test set is never looked at. A finished variant
is skipped when the script runs again and a stopped one continues from its ``last.pt``, so it
can be stopped and restarted. Prints a Markdown table
(the one in ``docs/recipe.md``) and writes ``results.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# name -> options that differ from the baseline: vgg-train's defaults of the day the proxies ran
# (onecycle, SGD momentum 0.9 without Nesterov, weight decay 5e-4, batch 128, LR 0.1, label
# smoothing 0.1), kept in BASE_OPTIONS so the table reproduces after defaults change.
BASE_OPTIONS = {"nesterov": False}
VARIANTS = {
    "baseline": {},
    "baseline-seed1": {"seed": 1},  # the seed-to-seed noise every difference is read against
    "nesterov": {"nesterov": True},
    "nesterov-seed1": {"nesterov": True, "seed": 1},  # paired with baseline-seed1
    "no-label-smoothing": {"label_smoothing": 0.0},
    "batch256-lr0.2": {"batch_size": 256, "lr": 0.2},
    "lr0.05": {"lr": 0.05},
    "lr0.2": {"lr": 0.2},
    "cosine": {"schedule": "cosine"},
    "ema0.998": {"ema": 0.998},  # about the last 500 steps, 1.4 of the 8 epochs
    "half-epochs": {"epochs_factor": 0.5},  # schedule length
    "2x-epochs": {"epochs_factor": 2},
}
# The regularisers of issue 20 against today's defaults (onecycle, Nesterov, weight decay 5e-4,
# batch 128, LR 0.1, label smoothing 0.1, head dropout 0.2); each runs with seeds 0 and 1.
BASE_OPTIONS_V2 = {"nesterov": True, "label_smoothing": 0.1}
VARIANTS_V2 = {
    "baseline": {},
    "cutout8": {"cutout": 8},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "label-smoothing0.2": {"label_smoothing": 0.2},
    "dropout0.5": {"dropout": 0.5},
    "ema0.999": {"ema": 0.999},
    "linear-decay": {"schedule": "linear"},
    "wd1e-3": {"weight_decay": 1e-3},
    "no-wd-norm-bias": {"wd_norm_bias": False},
    "batch256-lr0.2": {"batch_size": 256, "lr": 0.2},
}
SETS = {"v1": (BASE_OPTIONS, VARIANTS, 0.25, 8, (None,)),
        "v2": (BASE_OPTIONS_V2, VARIANTS_V2, 0.5, 30, (0, 1))}


def run_variant(name: str, opts: dict, args, base_options: dict) -> dict:
    """Train one variant (or read its finished run) and return its row."""
    from vggcifar.training import TrainConfig, train

    out = Path(args.out).expanduser()
    summary_file = out / name / "summary.json"
    last = out / name / "last.pt"
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
    elif last.exists():  # stopped mid-run: continue it (the trainer refuses to start over it)
        t0 = time.perf_counter()
        s = train(TrainConfig(resume=str(last), data=args.data, device="cpu", progress=False))
        s["wall_s"] = time.perf_counter() - t0
        summary_file.write_text(json.dumps(s, indent=2))
    else:
        opts = {**base_options, **opts}
        epochs = max(1, round(args.epochs * opts.pop("epochs_factor", 1)))
        opts.setdefault("seed", args.seed)
        cfg = TrainConfig(arch="vgg16", width=args.width, split=0.9, epochs=epochs,
                          val_every=1, data=args.data, out=str(out), name=name, device="cpu",
                          amp=True, progress=False, **opts)
        t0 = time.perf_counter()
        s = train(cfg)
        s["wall_s"] = time.perf_counter() - t0
        summary_file.write_text(json.dumps(s, indent=2))
    return {"variant": name, **{k: v for k, v in opts.items()},
            "epochs": s["epochs"], "best_val_accuracy": s["best_val_accuracy"],
            "best_epoch": s["best_epoch"], "train_time_s": round(s["train_time_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/cifar10-jpg")
    ap.add_argument("--out", default="~/vggcifar-runs/proxies")
    ap.add_argument("--set", choices=sorted(SETS), default="v2", dest="proxy_set")
    ap.add_argument("--width", type=float, default=None, help="default: the set's")
    ap.add_argument("--epochs", type=int, default=None, help="default: the set's")
    ap.add_argument("--seed", type=int, default=0, help="v1's seed (v2 runs seeds 0 and 1)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = ap.parse_args()
    base_options, variants, width, epochs, seeds = SETS[args.proxy_set]
    args.width = width if args.width is None else args.width
    args.epochs = epochs if args.epochs is None else args.epochs
    rows = []
    for seed in seeds:
        for name, opts in variants.items():
            if args.only and name not in args.only:
                continue
            run = name if seed is None else f"{name}-s{seed}"
            opts = opts if seed is None else {**opts, "seed": seed}
            rows.append({**run_variant(run, opts, args, base_options), "name": name})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out).expanduser()
    (out / "results.json").write_text(json.dumps({"set": args.proxy_set, "width": args.width,
                                                  "epochs": args.epochs, "rows": rows}, indent=2))
    print(f"\nVGG16 width {args.width:g}, split 0.9, {args.epochs} epochs unless noted, bf16, "
          "CPU; best validation accuracy (5,000 held-out training images); differences against "
          "the baseline of the same seed\n")
    print("| variant | seed | epochs | best val acc | vs baseline | train time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base = {r.get("seed"): r["best_val_accuracy"] for r in rows if r["name"] == "baseline"}
    for r in rows:
        b = base.get(r.get("seed"))
        diff = f"{(r['best_val_accuracy'] - b) * 100:+.2f}" if b is not None else ""
        print(f"| {r['name']} | {r.get('seed', '')} | {r['epochs']} | "
              f"{r['best_val_accuracy']:.2%} | {diff} | {r['train_time_s']:.0f} s |")


if __name__ == "__main__":
    main()
