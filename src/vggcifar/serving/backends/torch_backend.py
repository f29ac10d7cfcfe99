"""A vggcifar checkpoint (``.pt``) or the shipped manifest (``.json``) run with PyTorch."""

from __future__ import annotations

import numpy as np
import torch

from ...preprocessing import Preprocessing, uint8_to_input
from ...runtime.contract import model_kind
from ...runtime.devices import resolve_device
from .base import SHIPPED_PRECISION, Backend, ModelInfo, display_name, served_accuracy


class TorchBackend(Backend):
    """Applies the model's normalisation with :func:`vggcifar.preprocessing.uint8_to_input`,
    exactly as in training; runs channels-last in fp32 (shipped fp16 weights are upcast)."""

    name = "torch"

    def __init__(self, path, device: str | None = None):
        from ...checkpoint import load_checkpoint

        dev = resolve_device(device)
        model, meta = load_checkpoint(path, map_location=dev)
        # channels_last is what training used and is faster for these convolutions on CPU and GPU.
        self.model = model.to(memory_format=torch.channels_last).eval()
        self.torch_device = dev
        self.device = str(dev)
        self.preproc: Preprocessing = meta["preproc"]
        kind = model_kind(path)
        one, tta = served_accuracy(meta)
        self.info = ModelInfo(
            name=display_name(path), path=str(path), format=kind, preproc=self.preproc,
            arch=meta.get("arch"), test_accuracy=one, test_accuracy_tta=tta,
            precision=SHIPPED_PRECISION if kind == "shipped" else None)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """``[N, 3, S, S]`` uint8 -> ``[N, C]`` float32 probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device)
        with torch.inference_mode():
            x = uint8_to_input(x, self.preproc.mean, self.preproc.std)
            logits = self.model(x.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()
