"""DistributedDataParallel glue for runs started by torchrun (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import VggCifarError


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when torchrun's environment says so (``WORLD_SIZE`` > 1).

    A rank that dies makes the others fail within ``VGGCIFAR_DIST_TIMEOUT`` seconds (default
    300) instead of hanging. Returns the rank info and the device this rank uses.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("VGGCIFAR_DIST_TIMEOUT", "300")))
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
