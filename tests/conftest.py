"""Shared fixtures: synthetic CIFAR-10 in both on-disk formats and one tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vggcifar.testing import write_batches_py, write_image_folder


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the decoded-data cache and default-model lookup inside the test's temp folders."""
    old = {k: os.environ.get(k) for k in ("VGGCIFAR_CACHE",)}
    os.environ["VGGCIFAR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def cifar_batches(tmp_path_factory) -> Path:
    """Parent folder holding ``cifar-10-batches-py`` (500 train, 200 test synthetic images)."""
    root = tmp_path_factory.mktemp("cifar-batches")
    write_batches_py(root, n_train=500, n_test=200)
    return root


@pytest.fixture(scope="session")
def cifar_images(tmp_path_factory) -> Path:
    """Image-folder layout ``train/<class>/*.png``, ``test/<class>/*.png`` (200 / 100 images)."""
    return write_image_folder(tmp_path_factory.mktemp("cifar-images"), n_train=200, n_test=100)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar_batches) -> Path:
    """A finished run folder of a width-reduced VGG11 (linear head: the N(0, 0.01)-initialised MLP
    head learns too slowly at width 0.125 for a test) trained for a few epochs on synthetic data."""
    from vggcifar.training import TrainConfig, train

    out = tmp_path_factory.mktemp("runs")
    summary = train(TrainConfig(arch="vgg11", width=0.125, head="linear", epochs=4, lr=0.05, split=0.8,
                                data=str(cifar_batches), out=str(out), name="tiny",
                                device="cpu", progress=False, seed=0))
    return Path(summary["run_dir"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """``best.pt`` of :func:`tiny_run`."""
    return tiny_run / "best.pt"
