"""Cheap proxies for choosing the full-training-set recipe, on validation data only.

    python benchmarks/recipe_proxies.py --data data/cifar10-jpg --out ~/vggcifar-runs/proxies \
        [--width 0.25] [--epochs 8] [--only NAME ...]

Each variant is one ordinary ``vgg-train`` run (through the library, the same trainer) of a
narrow VGG16 on 90% of the training images (``--split 0.9``), scored by its best validation
accuracy on the other 5,000 training images; the test set is never looked at. A finished variant
is skipped when the script runs again, so it can be stopped and restarted. Prints a Markdown table
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


def run_variant(name: str, opts: dict, args) -> dict:
    """Train one variant (or read its finished run) and return its row."""
    from vggcifar.training import TrainConfig, train

    out = Path(args.out).expanduser()
    summary_file = out / name / "summary.json"
    if summary_file.exists():
        s = json.loads(summary_file.read_text())
    else:
        opts = {**BASE_OPTIONS, **opts}
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
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = ap.parse_args()
    rows = []
    for name, opts in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        rows.append(run_variant(name, opts, args))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out).expanduser()
    (out / "results.json").write_text(json.dumps({"width": args.width, "epochs": args.epochs,
                                                  "rows": rows}, indent=2))
    base = next((r["best_val_accuracy"] for r in rows if r["variant"] == "baseline"), None)
    print(f"\nVGG16 width {args.width:g}, split 0.9, {args.epochs} epochs unless noted, bf16, "
          "CPU; best validation accuracy (5,000 held-out training images)\n")
    print("| variant | epochs | best val acc | vs baseline | train time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        diff = (f"{(r['best_val_accuracy'] - base) * 100:+.2f}" if base is not None else "")
        print(f"| {r['variant']} | {r['epochs']} | {r['best_val_accuracy']:.2%} | {diff} | "
              f"{r['train_time_s']:.0f} s |")


if __name__ == "__main__":
    main()
