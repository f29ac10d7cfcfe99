"""The headline VGG16's accuracy against epochs, next to the recipe proxies' (docs/recipe.md).

    python benchmarks/headline_curve.py ~/vggcifar-runs/vgg16-headline \
        --proxies ~/vggcifar-runs/proxies --out docs/headline-curve.png

Left: the headline run's training accuracy per epoch (augmented batches; the run had no
validation set) and its one test measurement at the end, against the study's 92.58%. Right: the
proxies' best validation accuracy for 4, 8 and 16 epochs (narrow VGG16, split 0.9) with a power
law fitted to their error, ``err = a * epochs ** -b``, and that slope applied from the headline's
60 epochs to 120: what doubling the schedule would give if the full-width model kept the
proxies' rate. It is an upper bound: the proxies were under-fitted (train accuracy 83% at 16
epochs), the headline model is not (99.4%); see docs/recipe.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

STUDY_VGG16 = 92.58


def load_run(run: Path) -> tuple[list[int], list[float], dict]:
    """Epochs, train accuracy (%) per epoch, and ``summary.json`` of a finished run folder."""
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    epochs = [int(r["epoch"]) for r in rows]
    train = [100 * float(r["train_acc"]) for r in rows]
    return epochs, train, json.loads((run / "summary.json").read_text())


def load_proxies(folder: Path) -> list[tuple[int, float]]:
    """(epochs, best val acc %) of the length proxies: baseline (8), half-epochs, 2x-epochs."""
    points = []
    for name in ("half-epochs", "baseline", "2x-epochs"):
        s = json.loads((folder / name / "summary.json").read_text())
        points.append((int(s["epochs"]), 100 * float(s["best_val_accuracy"])))
    return points


def fit_power(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares of log(100 - acc) on log(epochs): returns (a, b) of err = a * e**-b."""
    xs = [math.log(e) for e, _ in points]
    ys = [math.log(100 - acc) for _, acc in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the headline run folder")
    ap.add_argument("--proxies", type=Path, required=True, help="recipe_proxies.py's --out")
    ap.add_argument("--out", type=Path, default=Path("docs/headline-curve.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, train, summary = load_run(args.run)
    one, tta = 100 * summary["test_accuracy_one_view"], 100 * summary["test_accuracy"]
    points = load_proxies(args.proxies)
    a, b = fit_power(points)
    last = epochs[-1]
    extrapolated = {e: 100 - (100 - one) * (e / last) ** -b for e in (120,)}

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(epochs, train, label="train accuracy (augmented batches)")
    left.scatter([last], [one], color="C3", zorder=3, label=f"test, one view: {one:.2f}%")
    left.scatter([last], [tta], color="C2", marker="^", zorder=3, label=f"test, flip TTA: {tta:.2f}%")
    left.axhline(STUDY_VGG16, color="grey", ls="--", lw=1, label=f"study's VGG16: {STUDY_VGG16}%")
    left.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(60, 100),
             title="headline VGG16, full training set, 60 epochs")
    left.legend(loc="lower right", fontsize=8)
    left.grid(alpha=0.3)

    es = [e for e, _ in points]
    right.plot(es, [acc for _, acc in points], "o-", label="proxies: narrow VGG16, val acc")
    grid = [2 ** (i / 4) for i in range(8, 29)]
    right.plot(grid, [100 - a * e ** -b for e in grid], ":", color="C0",
               label=f"power-law fit, error x{2 ** -b:.2f} per doubling")
    right.plot([last, 120], [one, extrapolated[120]], "s--", color="C3",
               label="headline test (one view); 120: proxies' slope (an upper bound)")
    right.axhline(STUDY_VGG16, color="grey", ls="--", lw=1)
    right.set(xscale="log", xlabel="epochs (log)", ylabel="accuracy (%)", ylim=(55, 100),
              title="what more epochs extrapolate to")
    right.set_xticks([4, 8, 16, 30, 60, 120], ["4", "8", "16", "30", "60", "120"])
    right.legend(loc="lower right", fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(json.dumps({"one_view": round(one, 2), "tta": round(tta, 2), "fit_b": round(b, 3),
                      "error_factor_per_doubling": round(2 ** -b, 3),
                      "extrapolated": {k: round(v, 2) for k, v in extrapolated.items()},
                      "proxies": [(e, round(acc, 2)) for e, acc in points], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
