"""The OpenVINO backend: parity with onnxruntime on the same export (fp32 tight, bf16 loose),
checkpoints through the cached export, ``auto``'s choice, and its absence reported clearly."""

from __future__ import annotations

import builtins
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from test_serving import base_image, write_varied_checkpoint
from vggcifar.errors import VggCifarError
from vggcifar.runtime import openvino as OV
from vggcifar.serving import Predictor
from vggcifar.serving.backends import create_backend
from vggcifar.serving.cli import main as predict_cli

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_varied_checkpoint(tmp_path_factory.mktemp("ov") / "best.pt")


@pytest.fixture(scope="module")
def onnx_file(checkpoint, tmp_path_factory) -> Path:
    from vggcifar.export.cache import onnx_from_checkpoint

    return onnx_from_checkpoint(checkpoint, tmp_path_factory.mktemp("ov-onnx"))


@pytest.fixture(scope="module")
def unit_images() -> np.ndarray:
    """``[32, 3, 32, 32]`` float32 in [0, 1]: structured synthetic pictures."""
    from vggcifar.testing import synthetic_images

    return synthetic_images(32, seed=7)[0].astype(np.float32) / 255.0


def no_openvino(monkeypatch):
    """Make ``import openvino`` fail, as on a platform without its wheels."""
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_logits_match_onnxruntime(onnx_file, unit_images, precision):
    ref = create_backend(onnx_file, "onnx", "cpu").logits(unit_images)
    b = create_backend(onnx_file, "openvino", "cpu")
    if precision != b.precision:
        b = type(b)(onnx_file, "cpu", precision=precision)
    assert b.describe() == f"openvino (CPU, {precision})"
    out = b.logits(unit_images)
    assert out.shape == ref.shape == (32, 10) and out.dtype == np.float32
    if precision == "fp32":
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    else:  # bf16 keeps 8 bits of mantissa: loose, but the same answers where they are clear
        scale = np.abs(ref).max()
        assert np.abs(out - ref).max() < 0.05 * scale
        top2 = np.sort(ref, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.1 * scale
        assert clear.sum() >= 16
        assert (out.argmax(1) == ref.argmax(1))[clear].all()
    assert len(set(ref.argmax(1).tolist())) > 1  # the check is not vacuous


def test_checkpoint_runs_through_the_cached_export(checkpoint, unit_images):
    from vggcifar.export import cache

    b = create_backend(checkpoint, "openvino", "cpu")
    assert b.name == "openvino" and b.info.format == "checkpoint"
    assert b.info.name.endswith("/best.pt") and b.info.arch == "vgg11"
    assert list(cache.onnx_cache_dir().glob("best-*.onnx"))  # the export onnx uses, too
    ref = create_backend(checkpoint, "onnx", "cpu").logits(unit_images)
    assert (b.logits(unit_images).argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_any_batch_size_from_several_threads(onnx_file, unit_images):
    b = create_backend(onnx_file, "openvino", "cpu")
    whole = b.logits(unit_images)
    np.testing.assert_array_equal(b.logits(unit_images[:1]), whole[:1])  # batch 1, then 32
    results = [None] * 4

    def call(i):
        results[i] = b.logits(unit_images[i * 8:(i + 1) * 8])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.concatenate(results), whole, atol=1e-5)


def test_auto_picks_openvino_on_cpu(checkpoint, onnx_file):
    import torch

    for path in (checkpoint, onnx_file):
        assert create_backend(path, "auto", "cpu").name == "openvino"
    # --device auto: OpenVINO only where the model runs on the CPU; with a GPU, CUDA.
    gpu = torch.cuda.is_available()
    assert create_backend(onnx_file).name == ("onnx" if gpu else "openvino")


def test_precision_follows_the_cpu_flags(monkeypatch):
    from vggcifar.runtime import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512f", "amx_bf16", "amx_tile"})
    assert OV.cpu_precision()[0] == "bf16"
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx512f", "avx2"})
    assert OV.cpu_precision()[0] == "fp32"
    monkeypatch.setattr(devices, "cpu_flags", lambda: None)
    assert OV.cpu_precision() == ("fp32", "no CPU flags to read")


def test_without_openvino_it_is_unavailable_and_auto_uses_onnx(checkpoint, onnx_file,
                                                               monkeypatch):
    no_openvino(monkeypatch)
    ok, reason = OV.openvino_status()
    assert not ok and "openvino is not importable" in reason
    with pytest.raises(VggCifarError, match="the openvino backend needs .*not importable"):
        create_backend(onnx_file, "openvino")
    for path in (checkpoint, onnx_file):
        assert create_backend(path, "auto", "cpu").name == "onnx"
    monkeypatch.setattr(OV.platform, "system", lambda: "Linux")
    monkeypatch.setattr(OV.platform, "machine", lambda: "ppc64le")
    assert "publishes no packages for Linux ppc64le" in OV.openvino_status()[1]


def test_gpu_device_is_refused(onnx_file):
    with pytest.raises(VggCifarError, match="runs on the CPU"):
        create_backend(onnx_file, "openvino", "cuda")


def test_vgg_predict_with_openvino(checkpoint, tmp_path):
    img = tmp_path / "pic.png"
    base_image(seed=3).save(img)
    r = CliRunner().invoke(predict_cli, [str(img), "--model", str(checkpoint), "--json",
                                         "--backend", "openvino"])
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout.splitlines()[0])
    assert row["backend"] == f"openvino (CPU, {OV.cpu_precision()[0]})"
    want = Predictor(checkpoint, backend="onnx", device="cpu").predict(img)
    assert row["label"] == want.label
