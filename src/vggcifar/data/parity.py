"""The device loader on an accelerator against the CPU: the same augmented batches, and how fast
it delivers them there. A check to run on a new device (the GPU acceptance script does)."""

from __future__ import annotations

import time

import torch

from ..preprocessing import CIFAR10_MEAN, CIFAR10_STD
from .loader import DeviceLoader, gather_augmented


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def loader_parity(dev: torch.device, n: int = 256, batch: int = 64, reps: int = 2) -> dict:
    """Compare :class:`DeviceLoader` on ``dev`` with the same loader on the CPU, on ``n`` random
    uint8 ``[3, 32, 32]`` images.

    The raw gather (crop + flip in one index_select) must be bit-identical; the normalised
    batches (fp32 and bf16) equal within a tolerance, with identical labels. Then the loader's
    throughput on ``dev``: ``reps`` bf16 epochs after a warm-up one.

    Returns:
        ``{"gather_equal", "batches_fp32"/"batches_bf16": {"batches", "labels_equal",
        "max_abs_diff", "tolerance", "ok"}, "loader_images_per_s", "ok", ...}``.
    """
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    res = {"images": n, "batch": batch, "compared": f"{dev.type} vs cpu",
           "cpu_only": dev.type != "cuda"}
    kw = dict(train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, channels_last=True, seed=1)

    def loader(device, **more) -> DeviceLoader:
        return DeviceLoader(imgs, labels, batch, device=device, **kw, **more)

    ref, on = loader("cpu"), loader(dev)
    idx = torch.randint(0, n, (batch,), generator=g)
    dy, dx = torch.randint(0, 9, (batch,), generator=g), torch.randint(0, 9, (batch,), generator=g)
    flips = torch.rand(batch, generator=g) < 0.5
    a = gather_augmented(ref.images, idx, dy, dx, flips, 32)
    b = gather_augmented(on.images, idx.to(dev), dy.to(dev), dx.to(dev), flips.to(dev), 32)
    res["gather_equal"] = bool(torch.equal(a, b.cpu()))
    for name, dtype, tol in (("fp32", torch.float32, 1e-5), ("bf16", torch.bfloat16, 2 ** -6)):
        diff, labels_equal, nb = 0.0, True, 0
        for (xa, ya), (xb, yb) in zip(loader("cpu", dtype=dtype), loader(dev, dtype=dtype)):
            assert xb.dtype == dtype
            diff = max(diff, float((xa.float() - xb.float().cpu()).abs().max()))
            labels_equal &= bool(torch.equal(ya, yb.cpu()))
            nb += 1
        res[f"batches_{name}"] = {"batches": nb, "labels_equal": labels_equal,
                                  "max_abs_diff": diff, "tolerance": tol,
                                  "ok": labels_equal and diff <= tol}
    on = loader(dev, dtype=torch.bfloat16)
    for _ in on:  # warm-up
        pass
    _sync(dev)
    t = time.perf_counter()
    for e in range(reps):
        on.set_epoch(e)
        for _ in on:
            pass
    _sync(dev)
    res["loader_images_per_s"] = round(reps * n / (time.perf_counter() - t))
    res["ok"] = res["gather_equal"] and all(res[f"batches_{k}"]["ok"] for k in ("fp32", "bf16"))
    return res
