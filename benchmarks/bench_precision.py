"""Training throughput in fp32 and bf16 autocast, side by side in one run, with the bf16 ceiling
that a matmul probe on the same machine puts on it.

    python benchmarks/bench_precision.py [--archs vgg11 vgg16] [--batch-size 128] [--steps 12]

The step is the trainer's own (:func:`vggcifar.training.step.train_step`): channels_last, fused
SGD with momentum, label-smoothed cross-entropy, the precision as ``vgg-train --amp`` builds it.
The ceiling is (matmul FLOP/s in bf16) divided by the model's training FLOPs per image (3 x the
forward multiply-adds x 2), i.e. what the machine could do if every FLOP of the step ran at
matmul speed.

Each precision is measured twice: as ``vgg-train`` runs it (the 4x4 and 2x2 maps through
``Conv3x3``'s matmul paths, :mod:`vggcifar.models.conv3x3`) and with every convolution on oneDNN
(``PATCH_MAX_PIXELS = 0``), which is how the trainer ran before those paths existed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import vggcifar.models.conv3x3 as conv3x3
from vggcifar.models import create_model
from vggcifar.training.config import resolve_amp
from vggcifar.training.step import Precision, sgd, train_step

PATCH_DEFAULT = conv3x3.PATCH_MAX_PIXELS


def matmul_flops(dtype: torch.dtype, n: int = 2048, seconds: float = 3.0,
                 clock=time.perf_counter) -> float:
    """Sustained FLOP/s of an ``n x n`` matmul in ``dtype`` on the CPU, timed by ``clock``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, clock()
    while clock() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (clock() - t0)


def forward_macs(model: torch.nn.Module, size: int = 32) -> int:
    """Multiply-adds of one image's forward pass (convolutions and linear layers)."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            macs += out.numel() * k
        elif isinstance(mod, torch.nn.Linear):
            macs += out.numel() * mod.in_features

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return macs


def train_throughput(arch: str, amp: bool, batch: int, steps: int, warmup: int = 3,
                     patch: bool = True) -> float:
    """Images per second of the trainer's step on ``batch`` random images; ``patch=False``
    keeps every convolution on oneDNN."""
    conv3x3.PATCH_MAX_PIXELS = PATCH_DEFAULT if patch else 0
    torch.manual_seed(0)
    model = create_model(arch).to(memory_format=torch.channels_last).train()
    opt = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    precision = Precision.for_run(amp, "cpu")
    x = torch.randn(batch, 3, 32, 32).to(precision.input_dtype)
    batch_xy = (x.contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (batch,)))
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        train_step(model, batch_xy, opt, precision, label_smoothing=0.1)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=["vgg11", "vgg16"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    amp_auto, reason = resolve_amp(None, torch.device("cpu"))
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16)
    rows = []
    for arch in args.archs:
        macs = forward_macs(create_model(arch))
        train_flops = 3 * 2 * macs  # forward + backward (two matmuls per forward one)
        r = {"arch": arch, "forward_mmacs": round(macs / 1e6, 1),
             "train_gflop_per_image": round(train_flops / 1e9, 3)}
        for name, amp in (("fp32", False), ("bf16", True)):
            r[f"{name}_img_s"] = round(train_throughput(arch, amp, args.batch_size, args.steps), 1)
            r[f"{name}_onednn_only_img_s"] = round(
                train_throughput(arch, amp, args.batch_size, args.steps, patch=False), 1)
        conv3x3.PATCH_MAX_PIXELS = PATCH_DEFAULT
        r["speedup"] = round(r["bf16_img_s"] / r["fp32_img_s"], 2)
        r["bf16_ceiling_img_s"] = round(bf16 / train_flops, 1)
        r["bf16_of_ceiling"] = round(r["bf16_img_s"] / r["bf16_ceiling_img_s"], 2)
        rows.append(r)
    res = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "load_average": os.getloadavg(), "torch": str(torch.__version__),
           "batch_size": args.batch_size, "steps": args.steps,
           "matmul_gflop_s": {"fp32": round(fp32 / 1e9, 1), "bf16": round(bf16 / 1e9, 1)},
           "amp_auto": amp_auto, "amp_reason": reason, "rows": rows}
    print(f"matmul 2048x2048: fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} GFLOP/s; "
          f"--amp auto here: {amp_auto} ({reason})")
    print(f"{'arch':<7}{'GFLOP/img':>10}{'fp32 img/s':>12}{'bf16 img/s':>12}{'speed-up':>10}"
          f"{'ceiling':>9}{'of ceiling':>12}{'fp32/bf16 oneDNN only':>24}")
    for r in rows:
        print(f"{r['arch']:<7}{r['train_gflop_per_image']:>10.2f}{r['fp32_img_s']:>12.1f}"
              f"{r['bf16_img_s']:>12.1f}{r['speedup']:>9.2f}x{r['bf16_ceiling_img_s']:>9.0f}"
              f"{r['bf16_of_ceiling']:>12.0%}"
              f"{r['fp32_onednn_only_img_s']:>14.1f} / {r['bf16_onednn_only_img_s']:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
