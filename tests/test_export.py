"""vgg-export: ONNX fp32/fp16/int8 files, their metadata, parity report, CLI and bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from vggcifar.checkpoint import load_checkpoint
from vggcifar.export import (INPUT_NAME, METADATA_KEYS, OUTPUT_NAMES, export_checkpoint,
                             read_metadata)
from vggcifar.export import parity as P
from vggcifar.export.cli import main
from vggcifar.preprocessing import normalize


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint, cifar_batches):
    """fp32 + fp16 + int8 export of the tiny checkpoint with real (synthetic) images."""
    out = tmp_path_factory.mktemp("export")
    report = export_checkpoint(tiny_checkpoint, ["onnx", "fp16", "int8"], out=out,
                               data=cifar_batches, parity_images=200, calib_images=200)
    return out, report


def _sess(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _entry(report, key):
    return next(e for e in report["formats"] if e["format"] == key)


def test_files_pass_full_checker_and_have_the_interface(exported):
    out, _ = exported
    for name in ("model.onnx", "model-fp16.onnx", "model-int8.onnx"):
        proto = onnx.load(str(out / name))
        onnx.checker.check_model(proto, full_check=True)
        (inp,) = proto.graph.input
        assert inp.name == INPUT_NAME
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value  # dynamic batch
        assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
        # float32 in and out for every precision: clients never change
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert tuple(o.name for o in proto.graph.output) == OUTPUT_NAMES
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                   for o in proto.graph.output)


@pytest.mark.parametrize("name", ["model.onnx", "model-fp16.onnx", "model-int8.onnx"])
def test_dynamic_batch(exported, name):
    out, _ = exported
    sess = _sess(out / name)
    x = np.random.default_rng(1).random((256, 3, 32, 32), dtype=np.float32)
    full_logits, full_probs = sess.run(None, {INPUT_NAME: x})
    assert full_logits.shape == full_probs.shape == (256, 10)
    np.testing.assert_allclose(full_probs.sum(1), 1.0, atol=1e-3)
    for n in (1, 7):
        logits, probs = sess.run(None, {INPUT_NAME: x[:n]})
        assert logits.shape == (n, 10) and probs.shape == (n, 10)
        np.testing.assert_allclose(logits, full_logits[:n], rtol=1e-4, atol=1e-4)


def test_metadata(exported, tiny_checkpoint):
    out, report = exported
    _, meta = load_checkpoint(tiny_checkpoint)
    pre = meta["preproc"]
    for name, precision in (("model.onnx", "fp32"), ("model-fp16.onnx", "fp16"),
                            ("model-int8.onnx", "int8")):
        md = read_metadata(out / name)
        assert set(METADATA_KEYS) <= set(md)
        assert json.loads(md["class_names"]) == list(pre.class_names)
        assert json.loads(md["mean"]) == pytest.approx(list(pre.mean))
        assert json.loads(md["std"]) == pytest.approx(list(pre.std))
        assert md["input_size"] == "32"
        assert "[0, 1]" in md["input_description"]
        assert md["arch"] == meta["arch"] == "vgg11" and md["head"] == meta["head"]
        assert md["source_checkpoint"] == str(Path(tiny_checkpoint).resolve())
        assert md["source_sha256"] == file_sha256(tiny_checkpoint)
        assert json.loads(md["test_accuracy"]) == pytest.approx(meta["test_accuracy"])
        assert md["vggcifar_version"]
        assert md["precision"] == precision
        assert md["exporter"] == report["exporter"]


def test_metadata_keys_are_the_written_keys(tmp_path):
    from vggcifar.preprocessing import Preprocessing
    from vggcifar.runtime.contract import build_metadata

    meta = {"preproc": Preprocessing(), "arch": "vgg11", "path": tmp_path / "best.pt"}
    md = build_metadata(meta, precision="fp32", exporter="torchscript", source_sha256="0" * 64)
    assert sorted(md) == sorted(METADATA_KEYS)


def test_in_graph_normalisation_matches_the_checkpoint(exported, tiny_checkpoint):
    out, _ = exported
    model, meta = load_checkpoint(tiny_checkpoint)
    x = np.random.default_rng(2).random((16, 3, 32, 32), dtype=np.float32)
    logits, probs = _sess(out / "model.onnx").run(None, {INPUT_NAME: x})
    with torch.no_grad():
        t = torch.from_numpy(x)
        ref = model(normalize(t, meta["preproc"].mean, meta["preproc"].std)).numpy()
        unnormalised = model(t).numpy()
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    # probabilities = softmax(logits / T), T fitted by vgg-train on the run's validation split
    t = meta["temperature"]
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref) / t, 1).numpy(),
                               atol=1e-5)
    assert np.abs(unnormalised - logits).max() > 1e-3  # the normalisation really is in the graph


def test_parity_report(exported):
    out, report = exported
    assert report["status"] == "PASS"
    assert report["exporter"] in ("torchscript", "dynamo")
    fp32, fp16, int8 = (_entry(report, k) for k in ("onnx", "fp16", "int8"))
    for e in (fp32, fp16):
        assert e["status"] == "PASS", e["failures"]
    cpu = {r["inputs"]: r for r in fp32["results"] if r["runtime"] == "ort-cpu"}
    assert set(cpu) == {"random", "test"} and cpu["test"]["n"] == 200
    assert cpu["random"]["max_abs_diff"] <= 1e-4 and cpu["test"]["agreement"] == 1.0
    assert cpu["test"]["accuracy"] == cpu["test"]["accuracy_reference"] > 0.5
    fp16_test = next(r for r in fp16["results"] if r["inputs"] == "test")
    assert fp16_test["checked"] and fp16_test["agreement"] >= 0.995
    # int8: runs, and its agreement and accuracy change are reported
    int8_test = next(r for r in int8["results"] if r["inputs"] == "test")
    assert 0.0 <= int8_test["agreement"] <= 1.0 and int8_test["accuracy"] is not None
    assert int8["accuracy_change_points"] == pytest.approx(
        100 * (int8_test["accuracy"] - int8_test["accuracy_reference"]))
    assert int8["calibration_images"] == 200
    saved = json.loads((out / "parity.json").read_text())
    assert saved["status"] == "PASS" and [e["file"] for e in saved["formats"]] == [
        "model.onnx", "model-fp16.onnx", "model-int8.onnx"]
    assert sorted(p.name for p in out.iterdir()) == [
        "model-fp16.onnx", "model-int8.onnx", "model.onnx", "parity.json"]  # no temp leftovers


def test_int8_is_quantised(exported):
    out, _ = exported
    ops = {n.op_type for n in onnx.load(str(out / "model-int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (out / "model-int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size


def test_tolerance_logic():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], np.float32)
    fig = P.compare(ref, ref + np.float32(2e-4), labels=np.array([0, 1, 1]))
    assert fig["agreement"] == 1.0 and fig["accuracy"] == pytest.approx(2 / 3)
    assert P.failures(fig, "fp32") and not P.failures(fig, "fp16")
    flipped = P.compare(ref, ref[:, ::-1].copy(), labels=np.array([0, 1, 1]))
    assert any("agreement" in f for f in P.failures(flipped, "int8"))
    assert P.checked_sets("fp16", True) == ("test",)
    assert P.checked_sets("fp32", True) == ("random", "test")
    nan = P.compare(ref, ref * np.nan)
    assert P.failures(nan, "fp32")


# ---------------------------------------------------------------------- command line
def test_cli_table_and_parity_json(tiny_checkpoint, cifar_batches, tmp_path):
    out = tmp_path / "exp"
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--onnx", "--fp16",
                                    "--out", str(out),
                                    "--data", str(cifar_batches), "--parity-images", "100",
                                    "--exporter", "torchscript", "--quiet"])
    assert res.exit_code == 0, res.output
    for word in ("Format", "ONNX fp32", "ONNX fp16", "model-fp16.onnx", "ort-cpu", "PASS",
                 "overall: PASS"):
        assert word in res.stdout
    report = json.loads((out / "parity.json").read_text())
    assert [e["format"] for e in report["formats"]] == ["onnx", "fp16"]
    assert report["inputs"]["test"] == 100


def test_cli_default_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "best.pt")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["--out", "o", "--exporter", "torchscript", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "newest run checkpoint" in res.stderr
    assert read_metadata(tmp_path / "o" / "model.onnx")["source_sha256"] == file_sha256(
        run / "best.pt")


def test_shipped_manifest_uses_its_sha256(tiny_checkpoint, tmp_path):
    from vggcifar.shipped import pack_shipped

    manifest = pack_shipped(tiny_checkpoint, tmp_path / "models")
    report = export_checkpoint(manifest, ["onnx"], out=tmp_path / "o", exporter="torchscript")
    assert report["status"] == "PASS"
    sha = json.loads(manifest.read_text())["sha256"]
    assert read_metadata(tmp_path / "o" / "model.onnx")["source_sha256"] == sha


def test_parity_failure_keeps_files_and_exits_1(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(P.TOLERANCES, "fp32", P.Tolerance(max_abs_diff=-1.0, min_agreement=1.0))
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--out", str(out),
                                    "--exporter",
                                    "torchscript", "--quiet"])
    assert res.exit_code == 1, res.output
    assert "FAIL" in res.stdout
    assert (out / "model.onnx").is_file()
    assert json.loads((out / "parity.json").read_text())["status"] == "FAIL"


def _assert_user_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in res.output


def test_missing_checkpoint(tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["--model", str(tmp_path / "nope.pt"), "--out", str(out)])
    _assert_user_error(res, "does not exist")
    assert not out.exists()


def test_text_file_named_pt(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("this is not a checkpoint\n")
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["--model", str(bad), "--out", str(out)])
    _assert_user_error(res, "not")
    assert not out.exists()


def test_unwritable_out(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--out",
                                    str(blocker / "sub")])
    _assert_user_error(res, "cannot write", "--out")
    assert blocker.read_text() == "x"


def test_int8_without_data(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--int8", "--out",
                                    str(out)])
    _assert_user_error(res, "--int8", "--data")
    assert not out.exists()


def test_error_leaves_existing_folder_clean(tiny_checkpoint, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--out", str(out), "--data",
                                    str(tmp_path / "no-data-here")])
    assert res.exit_code == 2, res.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------------- exporters, TensorRT
@pytest.mark.slow
def test_auto_falls_back_to_dynamo(tiny_checkpoint, tmp_path, monkeypatch):
    """When the TorchScript exporter fails, "auto" uses the dynamo exporter and says so."""
    from vggcifar.export import onnx_export

    def broken(*args, **kwargs):
        raise RuntimeError("simulated TorchScript exporter failure")

    monkeypatch.setattr(onnx_export, "_export_torchscript", broken)
    report = export_checkpoint(tiny_checkpoint, ["onnx"], out=tmp_path, random_images=32)
    assert report["status"] == "PASS", report["formats"][0]["failures"]
    assert [(a["exporter"], a["status"]) for a in report["exporter_attempts"]] == [
        ("torchscript", "ERROR"), ("dynamo", "PASS")]
    assert read_metadata(tmp_path / "model.onnx")["exporter"] == "dynamo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "parity.json"]


def _tensorrt_reason():
    from vggcifar.runtime.tensorrt import tensorrt_status

    return tensorrt_status()


def test_tensorrt_missing_is_a_user_error(tiny_checkpoint, tmp_path):
    ok, reason = _tensorrt_reason()
    if ok:
        pytest.skip(f"TensorRT is usable here ({reason})")
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["--model", str(tiny_checkpoint), "--tensorrt", "--out",
                                    str(out)])
    _assert_user_error(res, "--tensorrt", "pip install")
    assert not out.exists()


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_engine(tiny_checkpoint, cifar_batches, tmp_path, fp16):
    ok, reason = _tensorrt_reason()
    if not ok:
        pytest.skip(f"TensorRT engine test needs TensorRT and CUDA: {reason}")
    formats = ["onnx", "tensorrt"] + (["fp16"] if fp16 else [])
    report = export_checkpoint(tiny_checkpoint, formats, out=tmp_path, data=cifar_batches,
                               parity_images=200, max_batch=64)
    trt = _entry(report, "tensorrt")
    assert trt["precision"] == ("fp16" if fp16 else "fp32")
    assert trt["status"] == "PASS", trt["failures"]
    assert (tmp_path / trt["file"]).is_file() and (tmp_path / (trt["file"] + ".json")).is_file()
    assert (tmp_path / "tensorrt-timing.cache").is_file()
