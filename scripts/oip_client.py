"""Classify images over the Open Inference Protocol (KServe v2 REST) with ``tritonclient.http``:
the same script, unchanged, against `vgg-serve` and against Triton serving the repository that
``vgg-export --triton`` writes.

    python scripts/oip_client.py --url localhost:8000 cat.jpg dog.png        # vgg-serve
    python scripts/oip_client.py --url localhost:8001 --labels triton-models/vggcifar-default/labels.txt cat.jpg
                                                                             # tritonserver

Images are decoded exactly as ``vgg-predict`` does (:func:`vggcifar.serving.load_pixels`) and
sent as the model's input ``image``: float32 ``[N, 3, 32, 32]`` RGB in [0, 1], as binary
tensors (tritonclient's default); the answer's ``probabilities`` ``[N, 10]`` give the label.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+", help="image files")
    ap.add_argument("--url", default="localhost:8000", help="host:port of the server")
    ap.add_argument("--model", default="vggcifar-default",
                    help="model name (vgg-export --triton's; vggcifar-default for the shipped "
                         "model)")
    ap.add_argument("--labels", default=None,
                    help="class names, one per line (the repository's labels.txt) [default: "
                         "CIFAR-10's]")
    ap.add_argument("--size", type=int, default=32, help="the model's input size")
    args = ap.parse_args()

    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    from vggcifar.errors import VggCifarError
    from vggcifar.preprocessing import CIFAR10_CLASSES
    from vggcifar.serving import load_pixels

    labels = open(args.labels).read().splitlines() if args.labels else list(CIFAR10_CLASSES)
    try:
        x = np.stack([load_pixels(p, args.size)[0].numpy() for p in args.images])
    except VggCifarError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    x = x.astype(np.float32) / 255  # the model's contract: RGB in [0, 1], normalised inside
    try:
        with tc.InferenceServerClient(args.url) as client:
            if not client.is_model_ready(args.model):
                print(f"error: model {args.model!r} is not ready on {args.url}", file=sys.stderr)
                return 1
            inp = tc.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            res = client.infer(args.model, [inp],
                               outputs=[tc.InferRequestedOutput("probabilities")])
    except (InferenceServerException, OSError) as e:
        print(f"error: {args.url}: {e}", file=sys.stderr)
        return 1
    for path, row in zip(args.images, res.as_numpy("probabilities")):
        i = int(row.argmax())
        print(f"{path}: {labels[i]} ({row[i]:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
