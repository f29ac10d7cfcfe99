"""Issue 14: a new architecture is one file (tests/toy_arch.py). Here it is trained with the
trainer, checked on load like VGG, exported to ONNX and served; and format-version-1
checkpoints (VGG options at top level) still load and resume."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vggcifar.checkpoint import load_checkpoint, make_checkpoint
from vggcifar.checkpoint_file import model_spec, read_checkpoint
from vggcifar.errors import VggCifarError
from vggcifar.models import create_model, list_models, unregister_model
from vggcifar.preprocessing import Preprocessing
from vggcifar.testing import synthetic_images
from vggcifar.training import TrainConfig, train


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """Registers "toy" for this module's tests only (importing tests/toy_arch.py registers it;
    a reload registers it again), so other tests see the real registry."""
    importlib.reload(importlib.import_module("toy_arch"))
    yield
    unregister_model("toy")


@pytest.fixture(scope="module")
def toy_run(cifar_batches, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy-runs")
    config = TrainConfig(arch="toy", model_kwargs={"channels": 6}, epochs=2, lr=0.05,
                         split=0.8, data=str(cifar_batches), out=str(out), name="toy",
                         device="cpu", progress=False, tta=False)
    before = config.to_dict()
    summary = train(config)
    assert config.to_dict() == before  # the trainer works on its own copy
    return Path(summary["run_dir"])


def test_toy_is_registered_with_its_options():
    assert "toy" in list_models()
    m = create_model("toy", num_classes=3, channels=4)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(VggCifarError, match="channels 1000 outside"):
        create_model("toy", channels=1000)
    with pytest.raises(VggCifarError, match="takes no option 'head'"):
        create_model("toy", head="mlp")


def test_toy_trains_into_a_version_2_checkpoint(toy_run):
    raw = torch.load(toy_run / "best.pt", weights_only=True)
    assert raw["format_version"] == 2 and raw["arch"] == "toy"
    # --dropout (TrainConfig.dropout, 0.2) applies to every architecture that takes a dropout.
    assert raw["model_kwargs"] == {"channels": 6, "dropout": 0.2}
    assert not {"head", "width", "dropout"} & raw.keys()
    cfg = json.loads((toy_run / "config.json").read_text())
    assert cfg["batch_size"] > 0 and cfg["resolved"]["model_kwargs"] == raw["model_kwargs"]
    model, meta = load_checkpoint(toy_run / "best.pt")
    assert model_spec(meta) == ("toy", {"channels": 6, "dropout": 0.2})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_toy_checkpoint_checked_before_allocating(toy_run, tmp_path, monkeypatch):
    import vggcifar.checkpoint as checkpoint

    def no_build(*a, **k):
        raise AssertionError("the model was built before the checkpoint was checked")

    monkeypatch.setattr(checkpoint, "create_model", no_build)
    for kwargs, message in [({"channels": 10**6}, "channels 1000000 outside"),
                            ({"channels": 12}, "weights do not match toy"),
                            ({"depth": 3}, "takes no option 'depth'")]:
        c = torch.load(toy_run / "best.pt", weights_only=True)
        c["model_kwargs"].update(kwargs)
        torch.save(c, tmp_path / "bad.pt")
        with pytest.raises(VggCifarError, match=message):
            checkpoint.load_checkpoint(tmp_path / "bad.pt")


def test_toy_exports_to_onnx_and_serves(toy_run, tmp_path):
    from vggcifar.export import export_checkpoint
    from vggcifar.serving import Predictor

    report = export_checkpoint(toy_run / "best.pt", ["onnx"], out=tmp_path, random_images=16)
    assert report["status"] == "PASS", report["formats"][0].get("failures")
    onnx_file = tmp_path / "model.onnx"
    assert onnx_file.is_file()
    pixels, _ = synthetic_images(8, seed=1)
    by_torch = Predictor(toy_run / "best.pt", backend="torch", device="cpu")
    by_onnx = Predictor(onnx_file, backend="onnx", device="cpu")
    p_torch = by_torch.probabilities(pixels, tta=False)
    p_onnx = by_onnx.probabilities(pixels, tta=False)
    assert p_torch.shape == p_onnx.shape == (8, 10)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-4)
    assert by_onnx.class_names == by_torch.class_names


# ---- format version 1 ---------------------------------------------------------------------------


def write_v1_checkpoint(path: Path, training_state: dict | None = None,
                        config: dict | None = None, model=None) -> Path:
    """A checkpoint exactly as format version 1 wrote it: VGG's head/width/dropout at top level."""
    model = model or create_model("vgg11", num_classes=10, head="linear", width=0.125)
    v2 = make_checkpoint(model, arch="vgg11", num_classes=10, preprocessing=Preprocessing(),
                         config=config, training_state=training_state)
    v1 = {k: v for k, v in v2.items() if k != "model_kwargs"}
    v1.update(format_version=1, head="linear", width=0.125, dropout=0.2)
    torch.save(v1, path)
    return path


def test_version_1_checkpoint_loads(tmp_path):
    path = write_v1_checkpoint(tmp_path / "v1.pt")
    ckpt = read_checkpoint(path)
    assert ckpt["model_kwargs"] == {"head": "linear", "width": 0.125, "dropout": 0.2}
    assert "head" not in ckpt and ckpt["format_version"] == 2
    model, meta = load_checkpoint(path)
    assert meta["arch"] == "vgg11" and meta["head"] == "linear" and meta["width"] == 0.125
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    c = torch.load(path, weights_only=True)
    c["width"] = 40.0  # version-1 files are checked like version-2 ones
    torch.save(c, tmp_path / "wide.pt")
    with pytest.raises(VggCifarError, match="width 40.0 outside"):
        load_checkpoint(tmp_path / "wide.pt")


def test_version_1_last_pt_resumes(cifar_batches, tmp_path):
    """A run interrupted under format version 1 (like a long run started before the upgrade)
    continues with this code: its last.pt is rewritten as version 2."""
    cfg = TrainConfig(arch="vgg11", width=0.125, head="linear", epochs=2, steps=None, lr=0.05,
                      split=0.5, data=str(cifar_batches), out=str(tmp_path), name="old",
                      device="cpu", progress=False, tta=False, save_every=1)
    first = train(TrainConfig(**{**cfg.to_dict(), "epochs": 1, "name": "one"}))
    one = read_checkpoint(Path(first["run_dir"]) / "last.pt")
    # The same state, saved the old way, with the old config (no model_kwargs field).
    old_config = {k: v for k, v in one["config"].items() if k != "model_kwargs"}
    old_config.update(epochs=2, name="old")
    run = tmp_path / "old"
    run.mkdir()
    model = create_model("vgg11", num_classes=10, head="linear", width=0.125)
    model.load_state_dict(one["state_dict"])
    last = write_v1_checkpoint(run / "last.pt", one["training_state"], old_config, model)
    c = torch.load(last, weights_only=True)
    c.update(epoch=1, metrics=one["metrics"])
    torch.save(c, last)
    shutil.copyfile(Path(first["run_dir"]) / "best.pt", run / "best.pt")  # the run's end reads it
    summary = train(TrainConfig(resume=str(last), device="cpu", progress=False,
                                data=str(cifar_batches)))
    assert summary["epochs"] == 2 and Path(summary["run_dir"]) == run.resolve()
    resumed = torch.load(run / "last.pt", weights_only=True)
    assert resumed["format_version"] == 2 and resumed["epoch"] == 2
    assert resumed["model_kwargs"] == {"head": "linear", "width": 0.125, "dropout": 0.2}
