"""The 3x3 convolution of VGG, with faster training paths on the CPU for small feature maps.

oneDNN's bf16 convolution backward is slow on the deep layers of a CIFAR VGG, whose maps are
only 4x4 and 2x2 pixels: 2-6x slower than the same work as matmuls on the 2-core Xeon with AMX.
There the convolution is written as matmuls instead (``benchmarks/bench_layers.py`` times each
layer every way; the table is in ``docs/benchmarks.md``; from 8x8 up, and on the first layer,
oneDNN is faster):

* ``patches`` (im2col): the 3x3 patches of the padded map, cut out by one strided view and one
  copy, times the weight seen as ``[O, 9*C]``. A custom backward computes the input gradient as
  the patches of the output gradient times the flipped weight, and the weight gradient as one
  matmul, so nothing is scattered back slice by slice.
* ``dense`` (maps of at most 2x2): every output pixel sees the whole map, so the layer is one
  ``[N, H*W*C] x [H*W*C, H*W*O]`` matmul whose weight is assembled from the 3x3 taps; at 2x2 it
  does 16 of the 36 taps' work (the other 20 fall on the zero padding).

The module is an ``nn.Conv2d`` with the same parameters and ``state_dict``; these paths are used
only while training on the CPU, so evaluation, ONNX export and GPUs see a plain convolution.
Under CPU autocast the paths compute in the autocast dtype (bf16), like ``F.conv2d`` does; outside
it they compute in the input's dtype, which is how the float64 tests compare them exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Maps of at most this many pixels (4x4) take a matmul path (0 turns every path off, for the
# benchmarks); from 8x8 up oneDNN's own kernels are faster (docs/benchmarks.md).
PATCH_MAX_PIXELS = 16
# Maps whose sides are at most this long take the dense path rather than the patches.
DENSE_MAX_SIDE = 2


def train_path(h: int, w: int) -> str:
    """The CPU training path of an ``h x w`` map: "dense", "patches" or "onednn"."""
    if PATCH_MAX_PIXELS <= 0:
        return "onednn"
    if h <= DENSE_MAX_SIDE and w <= DENSE_MAX_SIDE:
        return "dense"
    if h * w <= PATCH_MAX_PIXELS:
        return "patches"
    return "onednn"


def _patches(x: torch.Tensor) -> torch.Tensor:
    """``[N, H, W, C]`` -> ``[N*H*W, 9*C]``, the zero-padded 3x3 patch of every pixel, its columns
    ordered (ky, kx, c). One strided view of the padded map, then one copy."""
    n, h, w, c = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 1))
    s = xp.stride()
    view = xp.as_strided((n, h, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    return view.reshape(n * h * w, 9 * c)


class _PatchConv(torch.autograd.Function):
    """``x`` ``[N, H, W, C]``, ``wm`` ``[O, 9*C]`` (columns (ky, kx, c)), ``b`` ``[O]`` or None ->
    ``[N, H, W, O]``."""

    @staticmethod
    def forward(ctx, x, wm, b):
        n, h, w, c = x.shape
        p = _patches(x)
        out = p @ wm.t() if b is None else torch.addmm(b, p, wm.t())
        ctx.save_for_backward(p, wm)
        ctx.dims = (n, h, w, c)
        return out.view(n, h, w, -1)

    @staticmethod
    def backward(ctx, g):
        p, wm = ctx.saved_tensors
        n, h, w, c = ctx.dims
        o = wm.shape[0]
        g = g.contiguous()
        g2 = g.view(n * h * w, o)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # The input gradient is the transposed convolution: the output gradient's patches
            # times the weight with its taps in reverse order, as a [9*O, C] matrix. Reordering
            # whole C-rows is one fast copy; flip() and a full transpose are ten times slower.
            taps = torch.arange(8, -1, -1, device=wm.device)
            wf = wm.view(o, 9, c).permute(1, 0, 2)[taps].reshape(9 * o, c)
            gx = (_patches(g) @ wf).view(n, h, w, c)
        if ctx.needs_input_grad[1]:
            # A contiguous g^T: the matmul with a transposed left operand is about 2x slower.
            gw = g2.t().contiguous() @ p
        if ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _dense_taps(h: int, w: int) -> list[tuple[int, int, int, int]]:
    """(output pixel, input pixel, ky, kx) of every weight tap that an ``h x w`` map uses, pixels
    numbered row by row; with sides of at most 2 every pair of pixels is within reach."""
    return [(oy * w + ox, iy * w + ix, iy - oy + 1, ix - ox + 1)
            for oy in range(h) for ox in range(w) for iy in range(h) for ix in range(w)]


class _DenseConv(torch.autograd.Function):
    """``x`` ``[N, P*C]`` (P = H*W pixels, NHWC order), ``w4`` ``[O, 3, 3, C]``, ``b`` ``[O]`` or
    None -> ``[N, P*O]``, for maps with sides of at most 2."""

    @staticmethod
    def forward(ctx, x, w4, b, h, w):
        o, c, p = w4.shape[0], w4.shape[3], h * w
        taps = _dense_taps(h, w)
        big = w4.new_empty(p, o, p, c)  # [out pixel, O, in pixel, C]
        for op, ip, ky, kx in taps:
            big[op, :, ip].copy_(w4[:, ky, kx])
        big = big.view(p * o, p * c)
        out = x @ big.t() if b is None else torch.addmm(b.repeat(p), x, big.t())
        ctx.save_for_backward(x, big)
        ctx.geom = (h, w, o, c)
        return out

    @staticmethod
    def backward(ctx, g):
        x, big = ctx.saved_tensors
        h, w, o, c = ctx.geom
        p = h * w
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ big
        if ctx.needs_input_grad[1]:
            gbig = (g.t().contiguous() @ x).view(p, o, p, c)
            gw = g.new_zeros(o, 3, 3, c)
            for op, ip, ky, kx in _dense_taps(h, w):
                gw[:, ky, kx] += gbig[op, :, ip]
        if ctx.needs_input_grad[2]:
            gb = g.view(-1, p, o).sum((0, 1))
        return gx, gw, gb, None, None


def _compute_dtype(x, weight, bias):
    """Cast to CPU autocast's dtype when it is on (autograd carries the gradients back)."""
    if torch.is_autocast_enabled("cpu"):
        dt = torch.get_autocast_dtype("cpu")
        return x.to(dt), weight.to(dt), None if bias is None else bias.to(dt)
    return x, weight, bias


def conv3x3_patches(x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """A stride-1, padding-1 3x3 convolution as one matmul over the image's 3x3 patches.

    Args:
        x: ``[N, C, H, W]`` input (channels_last avoids a copy).
        weight: ``[O, C, 3, 3]`` (channels_last avoids a copy); bias: ``[O]`` or None.

    Returns:
        ``[N, O, H, W]`` in channels_last memory format, equal to ``F.conv2d(x, weight, bias,
        padding=1)`` up to rounding; differentiable in all three inputs.
    """
    x, weight, bias = _compute_dtype(x, weight, bias)
    o, c = weight.shape[:2]
    wm = weight.permute(0, 2, 3, 1).reshape(o, 9 * c)
    with torch.autocast("cpu", enabled=False):
        out = _PatchConv.apply(x.permute(0, 2, 3, 1), wm, bias)
    return out.permute(0, 3, 1, 2)


def conv3x3_dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The same convolution for maps with sides of at most 2, as one dense matmul per batch.

    Shapes and result as :func:`conv3x3_patches`.
    """
    n, c, h, w = x.shape
    if h > 2 or w > 2:
        raise ValueError(f"conv3x3_dense needs a map of at most 2x2, got {h}x{w}")
    x, weight, bias = _compute_dtype(x, weight, bias)
    xf = x.permute(0, 2, 3, 1).reshape(n, h * w * c)
    with torch.autocast("cpu", enabled=False):
        out = _DenseConv.apply(xf, weight.permute(0, 2, 3, 1), bias, h, w)
    return out.view(n, h, w, -1).permute(0, 3, 1, 2)


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(in_ch, out_ch, 3, padding=1)`` that trains through :func:`conv3x3_dense` or
    :func:`conv3x3_patches` on the CPU where :func:`train_path` says so.

    ``forward``: ``[N, in_ch, H, W]`` -> ``[N, out_ch, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.device.type == "cpu" and x.dim() == 4
                and not torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()):
            path = train_path(x.shape[-2], x.shape[-1])
            if path == "dense":
                return conv3x3_dense(x, self.weight, self.bias)
            if path == "patches":
                return conv3x3_patches(x, self.weight, self.bias)
        return super().forward(x)
