"""Training curves of finished `vgg-train` runs side by side (docs/recipe.md).

    python benchmarks/compare_runs.py ~/vggcifar-runs/vgg16-cal98-ls0 \
        ~/vggcifar-runs/vgg16-h98-co12 --out docs/cutout-run-curve.png

Left: training accuracy per epoch (augmented batches). Right: validation accuracy per epoch, and
each run's one test measurement at the end (one view, the trainer's own figure) as a marker at
its last epoch, against the study's 92.58%. Runs with the same ``--split`` and ``--seed`` share
their validation images, so their right-hand curves are directly comparable.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

STUDY_VGG16 = 92.58


def load(run: Path) -> dict:
    """``metrics.csv`` columns (percent) and ``summary.json`` of a finished run folder."""
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    summary = json.loads((run / "summary.json").read_text())
    val = [(int(r["epoch"]), 100 * float(r["val_acc"])) for r in rows if r.get("val_acc")]
    return {"name": run.name, "epochs": [int(r["epoch"]) for r in rows],
            "train": [100 * float(r["train_acc"]) for r in rows], "val": val, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders (metrics.csv, summary.json)")
    ap.add_argument("--out", type=Path, required=True, help="PNG written")
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "metrics.csv").is_file() or not (run / "summary.json").is_file():
            ap.error(f"{run}: not a finished run folder (metrics.csv and summary.json)")
    runs = [load(r) for r in args.runs]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(runs):
        colour = f"C{i}"
        left.plot(r["epochs"], r["train"], color=colour, label=r["name"])
        if r["val"]:
            e, v = zip(*r["val"])
            right.plot(e, v, color=colour, label=f"{r['name']} (validation)")
        one = r["summary"].get("test_accuracy_one_view")
        if one is not None:
            right.scatter([r["epochs"][-1]], [100 * one], color=colour, marker="*", s=120, zorder=3,
                          label=f"{r['name']}: test {100 * one:.2f}% one view")
    right.axhline(STUDY_VGG16, color="grey", ls=":", label=f"study's VGG16, {STUDY_VGG16}%")
    left.set(title="training accuracy (augmented batches)", xlabel="epoch", ylabel="%", ylim=(60, 100))
    right.set(title="validation accuracy; test at the end", xlabel="epoch", ylabel="%", ylim=(80, 94))
    for ax, where in ((left, "lower right"), (right, "upper left")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc=where)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    for r in runs:
        s = r["summary"]
        print(f"{r['name']}: {len(r['epochs'])} epochs, last train {r['train'][-1]:.2f}%, best val "
              f"{100 * s.get('best_val_accuracy', float('nan')):.2f}% (epoch {s.get('best_epoch')}), "
              f"test one view {100 * s.get('test_accuracy_one_view', float('nan')):.2f}%")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
