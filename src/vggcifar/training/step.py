"""The one training step: forward under the run's precision, loss, backward, optimizer step.

``vgg-train`` (:mod:`vggcifar.training.trainer`), ``benchmarks/bench_precision.py`` and
``scripts/gpu_acceptance.py`` all call :func:`train_step`, so a change to how a step runs (and
what a throughput figure measures) is made here once. The precision is chosen once per run and
carried as a :class:`Precision`, not as separate flags.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Precision:
    """How a run computes: bf16 autocast or full fp32, on one device type.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"`` (what ``torch.autocast`` takes).
        amp_dtype: ``torch.bfloat16`` under autocast, None for fp32.
    """

    device_type: str
    amp_dtype: torch.dtype | None = None

    @classmethod
    def for_run(cls, amp: bool, device: torch.device | str) -> Precision:
        """bf16 autocast when ``amp`` (the plan's resolved ``--amp``), fp32 otherwise."""
        return cls(torch.device(device).type, torch.bfloat16 if amp else None)

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype batches are delivered in: bf16 under autocast (half the copy), else fp32."""
        return self.amp_dtype or torch.float32

    @property
    def name(self) -> str:
        return "bf16" if self.amp else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of a forward pass (a no-op context for fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)


def param_groups(model: torch.nn.Module, weight_decay: float, norm_and_bias: bool = True):
    """The optimizer's parameters: all of them with ``weight_decay`` (one group, as before this
    option existed, so old ``last.pt`` files resume), or, with ``norm_and_bias=False``, the
    1-dimensional ones (BatchNorm weights and every bias) in a second group without decay."""
    if norm_and_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    params = list(model.parameters())
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def sgd(params, lr: float, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0) -> torch.optim.SGD:
    """The runs' SGD, fused: one pass over the weights instead of the foreach kernels' five. On
    the 2-core Xeon VGG16's update drops from 77 to 14 ms of CPU time (one thread), with
    bit-identical results; the state_dict format is SGD's own."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay, fused=True)


def forward_backward(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                     optimizer: torch.optim.Optimizer, precision: Precision,
                     label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch, leaving the gradients in the parameters.

    Args:
        model: in training mode (may be compiled or DistributedDataParallel-wrapped).
        batch: ``(x, y)``: ``[N, 3, H, W]`` images (already on the device, in the model's memory
            format and ``precision.input_dtype``) and ``[N]`` int64 labels.
        optimizer: its gradients are cleared (set to None) before the backward pass.
        precision: the run's :class:`Precision`.
        label_smoothing: of the cross-entropy loss.

    Returns:
        ``(logits, loss)``: ``[N, classes]`` and the scalar mean loss (fp32), still attached.
    """
    x, y = batch
    with precision.autocast():
        logits = model(x)
        # The loss in fp32 whatever the forward ran in: bf16 log-softmax loses the small terms.
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return logits, loss


def train_step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
               optimizer: torch.optim.Optimizer, precision: Precision,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: :func:`forward_backward`, then ``optimizer.step()``.

    Arguments and result as :func:`forward_backward`. The learning-rate schedule and any weight
    average are the caller's (they differ between the trainer and a benchmark).
    """
    out = forward_backward(model, batch, optimizer, precision, label_smoothing)
    optimizer.step()
    return out


def first_compiled_step(step, compiled, eager, device: torch.device, log):
    """The first step of a model compiled with ``torch.compile``, falling back to eager.

    torch.compile fails lazily: in the first forward (graph capture, code generation) or in the
    first backward (the backward graph is compiled then). Either way the step is redone on the
    eager module from the same state (buffers such as BatchNorm statistics, and the RNG), instead
    of losing the run.

    Args:
        step: ``step(module) -> out``, one training step of that module.
        compiled, eager: the compiled module and the module it wraps.
        log: ``log(message)`` for the warning.
    Returns:
        ``(out, module to train from now on, status text for the run's records)``.
    """
    from ..checkpoint import unwrap_model

    base = unwrap_model(eager)
    buffers = {k: b.detach().clone() for k, b in base.named_buffers()}
    rng = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        return step(compiled), compiled, "compiled"
    except Exception as e:  # noqa: BLE001 - any compile failure: train eagerly
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        log(f"warning: torch.compile failed ({type(e).__name__}: {msg}); training eagerly")
        status = f"fell back to eager: {type(e).__name__}: {msg}".rstrip(": ")
    with torch.no_grad():
        for k, b in base.named_buffers():
            b.copy_(buffers[k])
    torch.set_rng_state(rng)
    if rng_cuda is not None:
        torch.cuda.set_rng_state(rng_cuda, device)
    return step(eager), eager, status
