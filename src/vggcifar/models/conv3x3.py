"""The 3x3 convolution of VGG, with a faster training path on the CPU for small feature maps.

oneDNN's convolution backward is slow on the deep layers of a CIFAR VGG, whose feature maps are
only 4x4 and 2x2 pixels: on a 2-core Xeon (AMX, bf16 autocast, batch 128, channels_last) one
512->512 layer at 2x2 takes 117 ms forward and backward, and the deep layers take two thirds of
the whole VGG16 step. The same convolution written as one matmul over 3x3 patches ("im2col",
cut out of the padded map with nine slices) runs at matmul speed: 27 ms for that layer, and VGG16
trains about 1.8x faster (``benchmarks/bench_precision.py``). Bigger maps stay on oneDNN, where
the patches would cost more memory traffic than they save.

The module is an ``nn.Conv2d`` with the same parameters and ``state_dict``; the patch path is
used only while training on the CPU, so evaluation, ONNX export and GPUs see a plain
convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Maps of at most this many pixels (4x4) take the patch path; at 8x8 oneDNN is faster again.
PATCH_MAX_PIXELS = 16


def conv3x3_patches(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A stride-1, padding-1 3x3 convolution as one matmul over the image's 3x3 patches.

    Args:
        x: ``[N, C, H, W]`` input (any memory format).
        weight: ``[O, C, 3, 3]``; bias: ``[O]`` or None.

    Returns:
        ``[N, O, H, W]`` in channels_last memory format, equal to ``F.conv2d(x, weight, bias,
        padding=1)`` up to rounding; differentiable in all three inputs.
    """
    n, c, h, w = x.shape
    xl = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # [N, H+2, W+2, C]
    patches = torch.cat([xl[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], dim=3)
    wm = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * c)  # (ky, kx, c), as patches
    out = F.linear(patches.reshape(n * h * w, 9 * c), wm, bias)  # [N*H*W, O]
    return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(in_ch, out_ch, 3, padding=1)`` that trains through :func:`conv3x3_patches` on
    the CPU when the map has at most :data:`PATCH_MAX_PIXELS` pixels.

    ``forward``: ``[N, in_ch, H, W]`` -> ``[N, out_ch, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training and x.device.type == "cpu" and x.dim() == 4
                and x.shape[-1] * x.shape[-2] <= PATCH_MAX_PIXELS
                and not torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()):
            return conv3x3_patches(x, self.weight, self.bias)
        return super().forward(x)
