"""What the lossy JPEG copy of CIFAR-10 costs in accuracy (issue 20, item 3).

    python benchmarks/jpeg_cost.py --data data/cifar10-jpg --quality 50 \
        --out ~/vggcifar-runs/jpeg-cost

The shared data is CIFAR-10 re-encoded as JPEG q75, and no lossless copy can be fetched here. So
the cost is measured one step further down: the same images re-encoded at ``--quality`` (default
50, PIL's baseline JPEG with its default 4:2:0 chroma subsampling, as the q75 copy was made), and
the v2 recipe proxy of ``recipe_proxies.py`` (VGG16 width 0.5, 30 epochs, split 0.9, seeds 0 and
1) trained on both copies. Each is scored by its best validation accuracy on its own 5,000
held-out training images; the test set is never looked at. Without the original pixels the
q75 -> q50 drop is not a bound on what q75 already cost: JPEG's quantisation steps double from
q75 to q50 (scale 50% -> 100% of the base tables), and published quality curves lose accuracy
faster the coarser the steps, so the q75 -> q50 drop is most likely the larger of the two. It
measures how sensitive this recipe is to JPEG detail loss (public reports put the original ->
q75 cost at 1-3 points, docs/recipe.md).

Finished runs are skipped when the script runs again; ``--reencode-only`` just writes the copy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_proxies import BASE_OPTIONS_V2, run_variant  # noqa: E402

WIDTH, EPOCHS, SEEDS = 0.5, 30, (0, 1)


def reencode(src: Path, dst: Path, quality: int) -> int:
    """Write every ``src/{train,test}/<class>/*.jpg`` to the same place under ``dst`` as a JPEG of
    ``quality``; returns the number of images written. Images already there are kept (a stopped
    re-encoding continues)."""
    from PIL import Image
    from tqdm import tqdm

    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents:
        raise SystemExit(f"error: the copy's folder {dst} must lie outside {src}")
    files = sorted(p for part in ("train", "test") for p in (src / part).glob("*/*.jpg")
                   if p.is_file() and not p.is_symlink())
    if not files:
        raise SystemExit(f"error: no train/<class>/*.jpg or test/<class>/*.jpg under {src}")
    for f in tqdm(files, desc=f"re-encoding at q{quality}", unit="img"):
        out = dst / f.relative_to(src)
        if out.exists():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im:
            img = im.convert("RGB")
        tmp = out.with_suffix(".tmp")
        img.save(tmp, format="JPEG", quality=quality)
        tmp.replace(out)  # a file under its final name is always whole
    return len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/cifar10-jpg", help="the q75 copy")
    ap.add_argument("--quality", type=int, default=50, help="JPEG quality of the second copy")
    ap.add_argument("--out", default="~/vggcifar-runs/jpeg-cost")
    ap.add_argument("--reencode-only", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.quality <= 95:
        ap.error("--quality must be in 1..95")
    out = Path(args.out).expanduser()
    copy = out / f"data-q{args.quality}"
    n = reencode(Path(args.data), copy, args.quality)
    print(f"{n:,} images re-encoded at q{args.quality} in {copy}", flush=True)
    if args.reencode_only:
        return
    rows = []
    for label, data in (("q75", args.data), (f"q{args.quality}", str(copy))):
        for seed in SEEDS:
            ns = argparse.Namespace(out=str(out), data=data, width=WIDTH, epochs=EPOCHS, seed=seed)
            row = run_variant(f"{label}-s{seed}", {"seed": seed}, ns, BASE_OPTIONS_V2)
            rows.append({**row, "copy": label})
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps({"quality": args.quality, "width": WIDTH,
                                                  "epochs": EPOCHS, "rows": rows}, indent=2))
    print(f"\nVGG16 width {WIDTH:g}, split 0.9, {EPOCHS} epochs, the v2 proxies' baseline; best "
          "validation accuracy on each copy's own 5,000 held-out training images\n")
    print("| copy | seed | best val acc | vs q75, same seed |")
    print("| --- | ---: | ---: | ---: |")
    base = {r["seed"]: r["best_val_accuracy"] for r in rows if r["copy"] == "q75"}
    for r in rows:
        print(f"| {r['copy']} | {r['seed']} | {r['best_val_accuracy']:.2%} | "
              f"{(r['best_val_accuracy'] - base[r['seed']]) * 100:+.2f} |")


if __name__ == "__main__":
    main()
