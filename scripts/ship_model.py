"""Make a trained checkpoint the shipped model, with accuracy figures measured on the shipped files.

    python scripts/ship_model.py RUN/best.pt --data data/cifar10-jpg \
        [--out src/vggcifar/weights] [--json ship.json]

1. packs the checkpoint (fp16 parts + manifest, :func:`vggcifar.shipped.pack_shipped`) into a
   scratch folder;
2. measures that packed model on the data's test set exactly as ``vgg-eval`` does (same
   Predictor, same default backend and device), one view, flip TTA and flip+shift TTA;
3. packs it again into ``--out`` with those three figures in the checkpoint and the manifest, and
   removes parts a previous, bigger model left there;
4. measures the files in ``--out`` again and fails unless the figures are identical, so the model
   card, the manifest, the demo header and ``vgg-eval`` quote one figure per context.

Prints the figures and a per-class Markdown table for the model card; ``--json`` also writes the
whole ``vgg-eval`` result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def measure(manifest: Path, data, backend: str, device: str) -> dict:
    """``vgg-eval``'s measurement of ``manifest`` on ``data``'s test set."""
    from vggcifar.serving.evaluation import evaluate_predictor
    from vggcifar.serving.predictor import Predictor

    predictor = Predictor(manifest, backend=backend, device=device)
    result = evaluate_predictor(predictor, data.test_x, data.test_y, progress=True)
    result["backend"] = predictor.backend_name
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="the run's best.pt")
    ap.add_argument("--data", required=True, help="CIFAR-10 folder whose test set is measured")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "vggcifar"
                                         / "weights"), help="the package's weights folder")
    ap.add_argument("--name", default="vggcifar-default")
    ap.add_argument("--backend", default="auto", help="as vgg-eval's --backend")
    ap.add_argument("--device", default="auto", help="as vgg-eval's --device")
    ap.add_argument("--json", default=None, help="write the measurement here")
    args = ap.parse_args(argv)

    from vggcifar.data import load_cifar10
    from vggcifar.errors import VggCifarError
    from vggcifar.shipped import pack_shipped, read_manifest

    try:
        data = load_cifar10(args.data, download=False)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="vggcifar-ship-") as tmp:
            first = measure(pack_shipped(args.checkpoint, tmp, name=args.name), data,
                            args.backend, args.device)
        out = Path(args.out)
        old = set()
        if (out / f"{args.name}.json").is_file():
            old = {p["file"] for p in read_manifest(out / f"{args.name}.json")["parts"]}
        manifest = pack_shipped(args.checkpoint, out, name=args.name,
                                accuracy={"one_view": first["accuracy"],
                                          "tta": first["accuracy_tta"],
                                          "flip_shift": first["accuracy_flip_shift"]})
        m = read_manifest(manifest)
        for stale in old - {p["file"] for p in m["parts"]}:
            (out / stale).unlink(missing_ok=True)
        again = measure(manifest, data, args.backend, args.device)
    except VggCifarError as e:
        print(f"ship_model: error: {e}", file=sys.stderr)
        return 2
    keys = ("accuracy", "accuracy_tta", "accuracy_flip_shift")
    if [again[k] for k in keys] != [first[k] for k in keys]:
        print(f"ship_model: error: the shipped files measure {again['accuracy']:.4%} / "
              f"{again['accuracy_tta']:.4%}, the scratch pack {first['accuracy']:.4%} / "
              f"{first['accuracy_tta']:.4%}", file=sys.stderr)
        return 3
    summary = {"manifest": str(manifest), "arch": m.get("arch"), "sha256": m["sha256"],
               "bytes": m["bytes"], "parts": m["parts"], "data": data.source,
               "seconds": round(time.perf_counter() - t0, 1), **again}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"shipped {m.get('arch')} to {manifest}: {again['n']:,} test images, "
          f"{again['accuracy']:.2%} one view, {again['accuracy_tta']:.2%} flip TTA, "
          f"{again['accuracy_flip_shift']:.2%} flip+shift TTA "
          f"({again['backend']} backend)")
    print("\n| class | one view | flip TTA |\n| --- | ---: | ---: |")
    for c in again["per_class"]:
        print(f"| {c} | {again['per_class'][c]:.1%} | {again['per_class_tta'][c]:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
