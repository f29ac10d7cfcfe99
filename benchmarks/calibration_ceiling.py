"""How far one temperature can calibrate a model: its test ECE over a grid of T, and at the
T that minimises NLL on the test images themselves.

    python benchmarks/calibration_ceiling.py --data data/cifar10-jpg [--model FILE] [--json OUT]

A DIAGNOSTIC, not a fit: it looks at the test labels, so no T from here may ever be shipped or
reported as a model's calibration (vgg-train fits T on held-out training images; docs/recipe.md,
"Calibration"). What it answers is whether temperature scaling *can* reach a target at all:
the lowest ECE any single T gives on the test images is a floor for what a T fitted elsewhere
gets there. For the label-smoothed shipped VGG16 that floor was 0.028 (at T = 0.84; the
NLL-optimal T gives 0.040), above the 0.02 target, which is why the calibrated model trains
without label smoothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# T from 0.40 to 1.50 in steps of 0.01; the printed rows are every 0.05.
GRID = tuple(round(0.40 + 0.01 * i, 2) for i in range(111))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 folder (its test set is read)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import torch

    from vggcifar.calibration import ece, fit_temperature, nll, softmax
    from vggcifar.data import load_cifar10
    from vggcifar.preprocessing import uint8_to_unit
    from vggcifar.serving.predictor import Predictor
    from vggcifar.shipped import shipped_manifest

    data = load_cifar10(args.data, download=False)
    p = Predictor(args.model or shipped_manifest(), backend=args.backend, device="cpu")
    x, y = data.test_x, np.asarray(data.test_y)
    z = np.concatenate([p.backend.logits(uint8_to_unit(x[i:i + 500]))
                        for i in range(0, len(x), 500)])
    rows = []
    for t in GRID:
        pr = softmax(z, t)
        rows.append({"T": t, "ece": ece(pr, y), "nll": nll(pr, y)})
    t_nll = fit_temperature(torch.from_numpy(z), torch.from_numpy(y))
    best = min(rows, key=lambda r: r["ece"])
    res = {"model": p.info.name, "model_T": p.info.temperature, "backend": p.backend_name,
           "images": len(y), "accuracy": float((z.argmax(1) == y).mean()), "grid": rows,
           "nll_optimal_T_on_test": t_nll, "ece_at_nll_optimal_T": ece(softmax(z, t_nll), y),
           "lowest_ece_on_grid": best}
    print(f"{res['model']} ({res['backend']}), {len(y):,} test images, accuracy "
          f"{res['accuracy']:.2%}; logits as served, before the model's own T "
          f"({p.info.temperature:g})")
    for r in rows:
        if round(r["T"] * 100) % 5 == 0:
            print(f"  T = {r['T']:<5g} ECE {r['ece']:.4f}  NLL {r['nll']:.4f}")
    print(f"  lowest ECE over T in [0.40, 1.50] (steps of 0.01): {best['ece']:.4f} at "
          f"T = {best['T']:g}")
    print(f"  NLL-optimal T on the test images: {t_nll:.4f}, ECE {res['ece_at_nll_optimal_T']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
