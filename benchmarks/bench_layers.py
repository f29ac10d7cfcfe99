"""Per-layer profile of VGG16's convolutions in training: forward plus backward of each 3x3 layer
through every CPU path of :mod:`vggcifar.models.conv3x3`, against a bf16 matmul probe.

    python benchmarks/bench_layers.py [--arch vgg16] [--batch-size 128] [--reps 6] [--fp32]

Each layer runs as the trainer runs it: bf16 autocast, channels_last input and weight, batch 128,
fp32 master weights. The paths of one layer are timed in turn, rep by rep (A B C A B C ...), and
the fastest rep of each is kept, so a machine shared with other work still ranks them fairly.
Columns: ``onednn`` is ``F.conv2d``; ``patches`` and ``dense`` the matmul paths; ``trainer`` the
``Conv3x3`` module in training mode (whatever path it picks); ``bn_relu`` the BatchNorm and ReLU
that follow the layer. GFLOP/s count the nominal 3x3 convolution (2 x the multiply-adds, forward,
input gradient (not for the first layer) and weight gradient).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import vggcifar.models.conv3x3 as conv3x3
from vggcifar.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_precision import matmul_flops  # noqa: E402


def conv_layers(arch: str, batch: int) -> list[dict]:
    """The 3x3 layers of ``arch`` in order: ``in``, ``out``, ``size`` (map side), ``gflop``."""
    layers, size, in_ch = [], 32, 3
    for m in create_model(arch).features:
        if isinstance(m, torch.nn.MaxPool2d):
            size //= 2
        elif isinstance(m, torch.nn.Conv2d):
            passes = 3 if in_ch > 3 else 2  # no input gradient for the image
            gflop = 2 * batch * size * size * m.out_channels * in_ch * 9 * passes / 1e9
            layers.append({"in": in_ch, "out": m.out_channels, "size": size, "gflop": gflop})
            in_ch = m.out_channels
    return layers


def layer_fns(spec: dict, batch: int, amp: bool) -> dict:
    """name -> callable running forward and backward of one layer's paths on fixed tensors."""
    cin, cout, s = spec["in"], spec["out"], spec["size"]
    cl = torch.channels_last
    dtype = torch.bfloat16 if amp else torch.float32
    x = torch.randn(batch, cin, s, s).to(dtype).contiguous(memory_format=cl)
    x.requires_grad_(cin > 3)
    conv = conv3x3.Conv3x3(cin, cout).to(memory_format=cl).train()
    bn_relu = torch.nn.Sequential(torch.nn.BatchNorm2d(cout), torch.nn.ReLU(inplace=True)).train()
    g = torch.randn(batch, cout, s, s).to(dtype).contiguous(memory_format=cl)
    w, b = conv.weight, conv.bias
    paths = {"onednn": lambda: F.conv2d(x, w, b, padding=1),
             "patches": lambda: conv3x3.conv3x3_patches(x, w, b),
             "trainer": lambda: conv(x)}
    if s <= conv3x3.DENSE_MAX_SIDE:
        paths["dense"] = lambda: conv3x3.conv3x3_dense(x, w, b)
    y_in = g.detach().clone().requires_grad_()
    paths["bn_relu"] = lambda: bn_relu(y_in * 1)  # * 1: ReLU is in place on a leaf's copy

    def run(fn):
        def go():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                y = fn()
            y.backward(g.to(y.dtype))
            x.grad = w.grad = b.grad = y_in.grad = None
        return go

    return {name: run(fn) for name, fn in paths.items()}


def profile(arch: str, batch: int, reps: int, amp: bool, clock=time.perf_counter) -> list[dict]:
    """One row per layer: its spec, the milliseconds of each path and the trainer's path name."""
    rows = []
    for spec in conv_layers(arch, batch):
        fns = layer_fns(spec, batch, amp)
        best = {k: float("inf") for k in fns}
        for _ in range(reps + 1):  # the first round warms up (oneDNN primitive creation)
            for k, fn in fns.items():
                t0 = clock()
                fn()
                best[k] = min(best[k], clock() - t0)
        path = conv3x3.train_path(spec["size"], spec["size"])
        rows.append({**spec, "path": path, "ms": {k: round(v * 1e3, 2) for k, v in best.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--fp32", action="store_true", help="no autocast (default: bf16 autocast)")
    ap.add_argument("--cpu-clock", action="store_true",
                    help="one thread, timed by its CPU time: ranks the paths on a busy machine")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    clock = time.perf_counter
    if args.cpu_clock:  # time slices lost to other processes are not counted
        torch.set_num_threads(1)
        clock = time.thread_time
    probe = matmul_flops(torch.float32 if args.fp32 else torch.bfloat16, seconds=2.0,
                         clock=clock) / 1e9
    rows = profile(args.arch, args.batch_size, args.reps, not args.fp32, clock)
    names = list(rows[0]["ms"])
    print(f"{args.arch}, batch {args.batch_size}, {'fp32' if args.fp32 else 'bf16 autocast'}; "
          f"{torch.get_num_threads()} threads, {'CPU' if args.cpu_clock else 'wall'} clock; "
          f"2048x2048 matmul probe {probe:.0f} GFLOP/s; load {os.getloadavg()[0]:.1f}")
    print(f"{'layer':<10}{'map':>4}{'GFLOP':>7}{'path':>9}" + "".join(f"{n:>10}" for n in names)
          + f"{'trainer GFLOP/s':>17}")
    total = {n: 0.0 for n in names}
    for r in rows:
        ms = [r["ms"].get(n) for n in names]
        for n in names:
            total[n] += r["ms"].get(n) or 0.0
        cells = "".join(f"{'-':>10}" if v is None else f"{v:>8.1f}ms" for v in ms)
        print(f"{r['in']:>4}->{r['out']:<4}{r['size']:>4}{r['gflop']:>7.1f}{r['path']:>9}{cells}"
              f"{r['gflop'] / r['ms']['trainer'] * 1e3:>17.0f}")
    print(f"{'total':<30}" + "".join(f"{total[n]:>8.1f}ms" for n in names))
    if args.json:
        Path(args.json).write_text(json.dumps({"probe_gflop_s": probe, "rows": rows,
                                               "load_average": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
