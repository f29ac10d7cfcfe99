"""Temperature scaling: the fit, the calibration figures, T carried through checkpoints, shipped
manifests, ONNX exports (fp32, fp16, int8), the serving backends, vgg-eval and vgg-train."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from vggcifar.calibration import (brier, calibration_figures, ece, fit_temperature, nll,
                                  reliability_bins, softmax)
from vggcifar.checkpoint import load_checkpoint, save_checkpoint
from vggcifar.checkpoint_file import read_checkpoint
from vggcifar.errors import VggCifarError

T = 1.7  # a temperature far enough from 1 that using the wrong one shows


def with_temperature(src: Path, dst: Path, t) -> Path:
    """A copy of checkpoint ``src`` recording temperature ``t`` (``None``: no key, as in files
    written before temperature scaling)."""
    ckpt = read_checkpoint(src)
    ckpt.pop("temperature", None)
    ckpt.pop("calibration", None)
    if t is not None:
        ckpt["temperature"] = t
    save_checkpoint(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def hot_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    return with_temperature(tiny_checkpoint, tmp_path_factory.mktemp("hot") / "hot.pt", T)


@pytest.fixture(scope="module")
def unit_images() -> np.ndarray:
    return np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)


def run_onnx(path, x) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(sess.run(["logits", "probabilities"], {"image": x}))


# ------------------------------------------------------------------------------ figures and fit
def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20000, 10)) * 4
    for true_t in (0.5, 2.5):
        p = softmax(z, true_t)
        y = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)  # labels drawn from p
        assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.05)
        assert fit_temperature(torch.from_numpy(z), torch.from_numpy(y)) == pytest.approx(
            true_t, rel=0.05)


def test_figures_on_hand_computed_examples():
    p = np.array([[0.9, 0.1], [0.65, 0.35], [0.25, 0.75], [0.85, 0.15]])
    y = np.array([0, 1, 1, 0])
    # one image per bin: |1 - 0.9|, |0 - 0.65|, |1 - 0.75|, |1 - 0.85|
    assert ece(p, y) == pytest.approx((0.1 + 0.65 + 0.25 + 0.15) / 4)
    assert nll(p, y) == pytest.approx(-(math.log(0.9) + math.log(0.35) + math.log(0.75)
                                        + math.log(0.85)) / 4)
    assert brier(p, y) == pytest.approx((0.02 + 0.845 + 0.125 + 0.045) / 4)
    # two images in one bin: accuracy 0.5 against mean confidence 0.9
    same = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert ece(same, np.array([0, 1])) == pytest.approx(0.4)
    b = reliability_bins(same, np.array([0, 1]))
    assert b["count"].sum() == 2 and b["count"][13] == 2
    perfect = np.eye(3)
    assert calibration_figures(perfect, np.arange(3)) == pytest.approx(
        {"ece": 0.0, "nll": 0.0, "brier": 0.0}, abs=1e-9)


def test_temperature_never_changes_the_argmax():
    z = np.random.default_rng(1).normal(size=(5000, 10)) * 3
    for t in (0.1, 0.7, 1.0, 1.7, 15.0):
        assert (softmax(z, t).argmax(1) == z.argmax(1)).all()


# ------------------------------------------------------------------------------ model files
def test_old_files_load_as_t1_and_bad_values_are_refused(tiny_checkpoint, tmp_path):
    old = with_temperature(tiny_checkpoint, tmp_path / "old.pt", None)
    assert load_checkpoint(old)[1]["temperature"] == 1.0
    assert load_checkpoint(with_temperature(tiny_checkpoint, tmp_path / "t.pt", T))[1][
        "temperature"] == T
    for bad in (float("nan"), 0.0, 50.0, "2", True):
        with pytest.raises(VggCifarError, match="temperature"):
            load_checkpoint(with_temperature(tiny_checkpoint, tmp_path / "bad.pt", bad))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_probabilities_are_softmax_of_logits_over_t(hot_checkpoint, unit_images, tmp_path,
                                                         precision):
    from vggcifar.export.onnx_export import checkpoint_sha256, export_onnx
    from vggcifar.runtime.contract import build_metadata

    model, meta = load_checkpoint(hot_checkpoint)
    md = build_metadata(meta, precision=precision, exporter="torchscript",
                        source_sha256=checkpoint_sha256(hot_checkpoint))
    assert json.loads(md["temperature"]) == T
    hot = export_onnx(model, meta["preproc"], tmp_path / "hot.onnx", precision=precision,
                      metadata=md)
    plain = export_onnx(model, meta["preproc"], tmp_path / "plain.onnx", precision=precision,
                        temperature=1.0)
    z, p = run_onnx(hot, unit_images)
    z1, p1 = run_onnx(plain, unit_images)
    np.testing.assert_allclose(p, softmax(z, T), atol=1e-5)
    np.testing.assert_array_equal(z, z1)  # the logits are the model's own
    assert (p.argmax(1) == p1.argmax(1)).all()
    assert not np.allclose(p, p1, atol=1e-3)
    stored = {m.key: m.value for m in onnx.load(str(hot)).metadata_props}
    assert json.loads(stored["temperature"]) == T


def test_int8_export_keeps_the_temperature(hot_checkpoint, unit_images, tmp_path):
    from vggcifar.export.onnx_export import export_onnx
    from vggcifar.runtime.contract import build_metadata
    from vggcifar.export.quantize import quantize_int8

    model, meta = load_checkpoint(hot_checkpoint)
    fp32 = export_onnx(model, meta["preproc"], tmp_path / "m.onnx",
                       metadata=build_metadata(meta, precision="fp32", exporter="torchscript",
                                               source_sha256="0" * 64))
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", unit_images[:16],
                         metadata=build_metadata(meta, precision="int8", exporter="torchscript",
                                                 source_sha256="0" * 64))
    z, p = run_onnx(int8, unit_images)
    np.testing.assert_allclose(p, softmax(z, T), atol=1e-5)


def test_backends_serve_softmax_of_logits_over_t(hot_checkpoint, tiny_checkpoint, unit_images,
                                                 tmp_path):
    from vggcifar.export.cache import onnx_from_checkpoint
    from vggcifar.serving.backends import create_backend

    exported = onnx_from_checkpoint(hot_checkpoint, tmp_path)
    for path, backend in ((hot_checkpoint, "torch"), (hot_checkpoint, "onnx"),
                          (exported, "onnx")):
        b = create_backend(path, backend, "cpu")
        assert b.info.temperature == T, (path, backend)
        z, p = b.outputs(unit_images)
        np.testing.assert_allclose(p, softmax(z, T), atol=1e-5)
    # An export without the temperature key (made before it existed) serves T = 1.
    proto = onnx.load(str(exported))
    keep = [m for m in proto.metadata_props if m.key != "temperature"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    old = create_backend(tmp_path / "old.onnx", "onnx", "cpu")
    assert old.info.temperature == 1.0
    z, p = old.outputs(unit_images)
    np.testing.assert_allclose(p, softmax(z, 1.0), atol=1e-5)


def test_shipped_manifest_carries_t_and_the_cache_follows_it(hot_checkpoint, unit_images,
                                                             tmp_path):
    from vggcifar.serving.backends import create_backend
    from vggcifar.shipped import pack_shipped

    manifest = pack_shipped(hot_checkpoint, tmp_path / "shipped")
    assert json.loads(manifest.read_text())["temperature"] == T
    assert load_checkpoint(manifest)[1]["temperature"] == T
    assert create_backend(manifest, "onnx", "cpu").info.temperature == T
    # The manifest's value applies; the ONNX cache must not serve the export made with the old
    # one (the parts, and so their digest, are unchanged).
    m = json.loads(manifest.read_text())
    m["temperature"] = 0.8
    manifest.write_text(json.dumps(m))
    b = create_backend(manifest, "onnx", "cpu")
    assert b.info.temperature == 0.8
    z, p = b.outputs(unit_images)
    np.testing.assert_allclose(p, softmax(z, 0.8), atol=1e-5)
    m.pop("temperature")  # a manifest from before temperature scaling
    manifest.write_text(json.dumps(m))
    assert load_checkpoint(manifest)[1]["temperature"] == T  # the parts' own value
    m["temperature"] = -1
    manifest.write_text(json.dumps(m))
    with pytest.raises(VggCifarError, match="temperature"):
        load_checkpoint(manifest)


# ------------------------------------------------------------------------------ the commands
def test_vgg_eval_reports_calibration_and_plots(hot_checkpoint, cifar_batches, tmp_path):
    from vggcifar.serving.eval_cli import main as eval_main

    png = tmp_path / "plots" / "reliability.png"
    r = CliRunner().invoke(eval_main, ["--model", str(hot_checkpoint), "--data",
                                       str(cifar_batches), "--limit", "60", "--quiet", "--json",
                                       "--backend", "torch", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for key in ("ece", "nll", "brier", "ece_tta", "nll_tta", "brier_tta"):
        assert math.isfinite(res[key]), key
    cal = res["calibration"]
    assert cal["temperature"] == T and cal["bins"] == 15
    assert res["ece"] == cal["one_view"]["after"]["ece"]
    assert cal["one_view"]["before"] != cal["one_view"]["after"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = CliRunner().invoke(eval_main, ["--model", str(hot_checkpoint), "--data",
                                          str(cifar_batches), "--limit", "20", "--quiet",
                                          "--backend", "torch"])
    assert text.exit_code == 0 and "ECE" in text.stdout and "T = 1.7" in text.stdout
    jpg = CliRunner().invoke(eval_main, ["--model", str(hot_checkpoint), "--data",
                                         str(cifar_batches), "--plot", str(tmp_path / "r.jpg")])
    assert jpg.exit_code == 2 and "name the file *.png" in jpg.stderr  # was PNG bytes as .jpg
    assert not (tmp_path / "r.jpg").exists()


def test_vgg_train_fits_t_on_its_validation_split(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    cal = summary["calibration"]
    assert summary["temperature"] == cal["temperature"] != 1.0
    assert cal["images"] == summary["val_images"] > 0 and "validation" in cal["fitted_on"]
    assert cal["nll_after"] <= cal["nll_before"] + 1e-9
    assert load_checkpoint(tiny_run / "best.pt")[1]["temperature"] == summary["temperature"]
    assert json.loads((tiny_run / "config.json").read_text())["calibration"] == cal


def test_vgg_train_without_validation_keeps_t1(cifar_batches, tmp_path):
    from vggcifar.training import TrainConfig, train

    s = train(TrainConfig(arch="vgg11", width=0.125, head="linear", epochs=1, steps=2, lr=0.05,
                          split=1.0, data=str(cifar_batches), out=str(tmp_path), name="all",
                          device="cpu", progress=False, seed=0))
    assert s["temperature"] == 1.0 and "no held-out images" in s["calibration"]["reason"]
    assert load_checkpoint(Path(s["run_dir"]) / "best.pt")[1]["temperature"] == 1.0
    shutil.rmtree(tmp_path / "all", ignore_errors=True)


class _Fixed(torch.nn.Module):
    """Returns the given logits, a batch at a time."""

    def __init__(self, z):
        super().__init__()
        self.z, self.i = z, 0

    def forward(self, x):
        out = self.z[self.i:self.i + len(x)]
        self.i += len(x)
        return out


def test_non_finite_logits_keep_t1_instead_of_t_max():
    # one inf logit made every NLL NaN and the search end at T = 20: near-uniform probabilities
    from vggcifar.training.temperature import fit_on_loader, fit_run_temperature

    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.integers(0, 10, 200))
    z = torch.randn(200, 10) + 4 * torch.nn.functional.one_hot(y, 10)
    batches = [(torch.zeros(100, 3, 32, 32), y[:100]), (torch.zeros(100, 3, 32, 32), y[100:])]
    clean = fit_on_loader(_Fixed(z), batches)
    assert clean["fitted_on"] and 0.05 < clean["temperature"] < 20 and clean["images"] == 200
    z[17, 3] = float("inf")
    t, record = fit_run_temperature(_Fixed(z), batches)
    assert t == 1.0 and record["temperature"] == 1.0 and record["fitted_on"] is None
    assert record["reason"] == "1 of 200 validation images have non-finite logits: T = 1"
    t, record = fit_run_temperature(_Fixed(z), [])  # a rank's empty shard: no torch.cat crash
    assert t == 1.0 and record["reason"] == "no validation images: T = 1"
