"""DistributedDataParallel glue for runs started by torchrun (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import VggCifarError

# The autograd-aware all_reduce below is deprecated in favour of an API that is not differentiable
# on gloo yet; it is the one that works on CPUs today.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun launch: ``rank`` of ``world_size`` processes, and
    ``local_rank`` on this machine (its GPU index). The default is a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls, environ=None) -> "DistInfo":
        """Read torchrun's ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (from ``environ``, default
        ``os.environ``): the one place they are read. Without ``WORLD_SIZE`` > 1 this is a
        single process (rank 0), whatever else is set.

        Raises:
            VggCifarError: a variable that is not a whole number, or a rank outside the world.
        """
        env = os.environ if environ is None else environ
        values = {}
        for var, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
            text = env.get(var, "").strip()
            try:
                values[var] = int(text) if text else default
            except ValueError:
                raise VggCifarError(f"environment variable {var}={text[:20]!r} is not a whole "
                                    "number; start distributed runs with torchrun") from None
        if values["WORLD_SIZE"] <= 1:
            return cls()
        info = cls(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"])
        if not 0 <= info.rank < info.world_size:
            raise VggCifarError(f"RANK={info.rank} is outside WORLD_SIZE={info.world_size}; start "
                                "distributed runs with torchrun")
        return info

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_timeout_s() -> float:
    """``VGGCIFAR_DIST_TIMEOUT`` in seconds (default 300), 1 s to 1 day.

    Raises:
        VggCifarError: not a number in that range ("abc", "nan" and "1e30" were tracebacks).
    """
    text = os.environ.get("VGGCIFAR_DIST_TIMEOUT", "").strip() or "300"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 1 <= value <= 86400:  # nan fails too
        raise VggCifarError(f"VGGCIFAR_DIST_TIMEOUT={text!r}: give the seconds a rank waits for "
                            "the others, from 1 to 86400 (default 300)")
    return value


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when torchrun's environment says so (``WORLD_SIZE`` > 1).

    A rank that dies makes the others fail within ``VGGCIFAR_DIST_TIMEOUT`` seconds (default
    300) instead of hanging. Returns the rank info and the device this rank uses.
    """
    info = DistInfo.from_env()
    if not info.enabled:
        return DistInfo(), device
    if device.type == "cuda" and device.index not in (None, info.local_rank):
        # each rank takes the GPU of its LOCAL_RANK: a --device cuda:N would be ignored
        raise VggCifarError(f"--device {device}: under torchrun each process uses the GPU of its "
                            f"LOCAL_RANK (this one cuda:{info.local_rank}); give --device cuda, "
                            "and choose GPUs with CUDA_VISIBLE_DEVICES")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=dist_timeout_s())
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=timeout)
    elif device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    return info, device


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def check_same_config(info: DistInfo, config: dict) -> None:
    """Raise on every rank when the ranks were started with different options."""
    if not info.enabled:
        return
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    digests = [None] * info.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise VggCifarError(f"ranks disagree on the training options (ranks {bad} differ from "
                            "rank 0); start every rank with the same command")


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (a no-op in a single process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class CpuSyncBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch of all ranks, for CPU (gloo)
    runs: PyTorch's own SyncBatchNorm only supports GPU tensors. Same parameters and buffers as
    BatchNorm2d, so checkpoints load into the plain model.

    ``forward``: ``[N, C, H, W]`` -> ``[N, C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # autograd-aware

        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[c]
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        # Two passes (mean, then centred squares) for the accuracy of single-process BatchNorm.
        var = all_reduce((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(float(n) - 1, 1.0), alpha=m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Make BatchNorm use global-batch statistics: PyTorch's SyncBatchNorm on GPUs,
    :class:`CpuSyncBatchNorm2d` on CPUs."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            new = CpuSyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new.to(device))
        else:
            convert_sync_batchnorm(child, device)
    return model
