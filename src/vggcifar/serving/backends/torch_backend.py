"""A vggcifar checkpoint (``.pt``) or the shipped manifest (``.json``) run with PyTorch."""

from __future__ import annotations

import numpy as np
import torch

from ...preprocessing import Preprocessing, normalize
from ...runtime.devices import resolve_device
from ...source import ModelSource, resolve_source
from .base import (SHIPPED_PRECISION, Backend, ModelInfo, display_name, flip_shift_accuracy,
                   served_accuracy)


class TorchBackend(Backend):
    """Applies the model's normalisation (mean/std from the checkpoint) to float RGB in [0, 1],
    as the exported graphs do; runs channels-last in fp32 (shipped fp16 weights are upcast)."""

    name = "torch"

    def __init__(self, source, device: str | None = None):
        """``source``: a checkpoint or shipped manifest, as a path or a
        :class:`~vggcifar.source.ModelSource` already resolved (its verified bytes are loaded)."""
        from ...checkpoint import load_checkpoint

        source = resolve_source(source)
        dev = resolve_device(device)
        model, meta = load_checkpoint(source, map_location=dev)
        # channels_last is what training used and is faster for these convolutions on CPU and GPU.
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.torch_device = dev
        self.device = str(dev)
        self.preproc: Preprocessing = meta["preproc"]
        kind, path = source.kind, source.path
        one, tta = served_accuracy(meta)
        self.info = ModelInfo(
            name=display_name(path), path=str(path), format=kind, preproc=self.preproc,
            arch=meta.get("arch"), test_accuracy=one, test_accuracy_tta=tta,
            test_accuracy_flip_shift=flip_shift_accuracy(meta),
            precision=SHIPPED_PRECISION if kind == "shipped" else None,
            temperature=meta["temperature"])  # checked by load_checkpoint

    @classmethod
    def open(cls, source: ModelSource, device: str | None) -> "TorchBackend":
        return cls(source, device)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` float32 in [0, 1] -> ``[N, C]`` float32 logits."""
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.torch_device)
        with torch.inference_mode():
            t = normalize(t, self.preproc.mean, self.preproc.std)
            z = self.model(t.contiguous(memory_format=torch.channels_last))
        return z.float().cpu().numpy()
