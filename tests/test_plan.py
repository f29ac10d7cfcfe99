"""Issue 14: plan_run is the one place a run's numbers are worked out; DistInfo.from_env the one
reader of torchrun's variables."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vggcifar.errors import VggCifarError
from vggcifar.training.config import TrainConfig
from vggcifar.training.distributed import DistInfo
from vggcifar.training.plan import plan_run, steps_per_epoch

CPU = torch.device("cpu")


def test_automatic_values_are_planned_not_written_into_the_config():
    cfg = TrainConfig(epochs=3, amp=False)
    before = cfg.to_dict()
    plan = plan_run(cfg, 500, CPU, n_val=4500)
    assert cfg.to_dict() == before
    assert (plan.batch_size, plan.lr, plan.steps_per_epoch) == (32, 0.025, 15)
    assert (plan.epochs, plan.total_steps, plan.images_per_epoch) == (3, 45, 480)
    assert plan.val_every == 5 and plan.channels_last and not plan.amp
    assert plan.amp_reason == "--no-amp given"
    resolved = plan.resolve(cfg)
    assert (resolved.batch_size, resolved.lr, resolved.amp, resolved.channels_last) == (
        32, 0.025, False, True)
    assert cfg.batch_size == 0 and resolved is not cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.lr = 1.0


def test_explicit_values_steps_and_min_steps():
    cfg = TrainConfig(batch_size=64, lr=0.3, val_every=2, amp=True, channels_last=False)
    plan = plan_run(cfg, 1000, CPU, world=2)
    assert (plan.batch_size, plan.per_rank_batch, plan.lr, plan.val_every) == (64, 32, 0.3, 2)
    assert not plan.channels_last and plan.amp
    steps = plan_run(dataclasses.replace(cfg, steps=20), 1000, CPU)
    assert (steps.total_steps, steps.epochs) == (20, 2)  # 15 steps per epoch
    longer = plan_run(dataclasses.replace(cfg, epochs=1), 1000, CPU, min_steps=40)
    assert (longer.epochs, longer.total_steps) == (3, 45)
    assert plan_run(dataclasses.replace(cfg, amp=False), 1000, CPU,
                    resumed=True).amp_reason == "kept from the resumed run"
    with pytest.raises(VggCifarError, match="divisible by the world size 3"):
        plan_run(cfg, 1000, CPU, world=3)


def test_steps_per_epoch_matches_the_loaders():
    from vggcifar.data import DeviceLoader
    from vggcifar.preprocessing import CIFAR10_MEAN, CIFAR10_STD

    for n, b in [(100, 32), (32, 32), (20, 32), (96, 32)]:
        x, y = torch.zeros(n, 3, 32, 32, dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
        loader = DeviceLoader(x, y, b, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        assert len(loader) == steps_per_epoch(n, b), (n, b)


def test_dist_info_from_env():
    assert DistInfo.from_env({}) == DistInfo(0, 0, 1)
    info = DistInfo.from_env({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4"})
    assert (info.rank, info.local_rank, info.world_size) == (2, 0, 4)
    assert info.enabled and not info.is_main
    assert DistInfo.from_env({"RANK": "3"}) == DistInfo()  # no WORLD_SIZE: one process
    with pytest.raises(VggCifarError, match="WORLD_SIZE='two'"):
        DistInfo.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(VggCifarError, match="outside WORLD_SIZE=2"):
        DistInfo.from_env({"RANK": "2", "WORLD_SIZE": "2"})
