"""Loader benchmark: augmented training images per second delivered by the device loader versus
the classic torchvision DataLoader pipeline (same augmentation: 4-pixel-pad random crop,
horizontal flip, normalisation).

    python benchmarks/bench_loader.py --data data/cifar10-jpg [--device cpu|cuda] [--images 20000]

Without --data (or when it is missing) it uses synthetic images of the same shape; the speed of
either loader does not depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from vggcifar.data import DeviceLoader, classic_loader, load_cifar10
from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD
from vggcifar.testing import synthetic_images


def drain(loader, images: int, device: torch.device) -> float:
    """Images per second to pull ``images`` images through ``loader`` onto ``device``."""
    n = 0
    it = iter(loader)
    x, _ = next(it)  # start-up (worker processes, first transfer) is not throughput
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    while n < images:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        x = x.to(device, non_blocking=True)
        n += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/cifar10-jpg")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if os.path.exists(args.data):
        d = load_cifar10(args.data, download=False)
        x, y, source = d.train_x, d.train_y, f"{args.data} ({d.kind})"
    else:
        xs, ys = synthetic_images(10_000)
        x, y, source = torch.from_numpy(xs), torch.from_numpy(ys), "synthetic"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours = DeviceLoader(x, y, args.batch_size, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                        device=device, dtype=dtype, channels_last=True)
    classic = classic_loader(x, y, args.batch_size, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                             workers=args.workers)
    # ours is ~50x faster: pull 25x as many images so both timings last long enough to be steady
    fast = drain(ours, args.images * 25, device)
    slow = drain(classic, args.images, device)
    res = {"device": str(device), "cpu": platform.processor() or platform.machine(),
           "cores": os.cpu_count(), "data": source, "batch_size": args.batch_size,
           "classic_workers": args.workers, "device_loader_img_s": round(fast),
           "classic_loader_img_s": round(slow), "speedup": round(fast / slow, 1),
           "torch": str(torch.__version__)}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    print(f"{'loader':<28}{'images/s':>12}")
    print(f"{'device (batched, ' + str(device) + ')':<28}{fast:>12,.0f}")
    print(f"{'classic DataLoader x' + str(args.workers):<28}{slow:>12,.0f}")
    print(f"speed-up: {fast / slow:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
