import json
import os
import time

import pytest
import torch

import vggcifar
from vggcifar.errors import VggCifarError
from vggcifar.shipped import default_model, pack_shipped


def test_pack_and_load_compact_model(tiny_checkpoint, tmp_path):
    manifest = pack_shipped(tiny_checkpoint, tmp_path, part_bytes=64 * 1024)
    m = json.loads(manifest.read_text())
    assert len(m["parts"]) >= 2 and all(p["bytes"] <= 64 * 1024 for p in m["parts"])
    model, meta = vggcifar.load_checkpoint(manifest)
    ref, ref_meta = vggcifar.load_checkpoint(tiny_checkpoint)
    x = torch.randn(16, 3, 32, 32)
    assert torch.equal(model(x).argmax(1), ref(x).argmax(1))
    assert torch.allclose(model(x), ref(x), atol=0.05)
    assert meta["arch"] == ref_meta["arch"] and meta["test_accuracy"] == ref_meta["test_accuracy"]


def test_tampered_or_missing_part_is_refused(tiny_checkpoint, tmp_path):
    manifest = pack_shipped(tiny_checkpoint, tmp_path, part_bytes=64 * 1024)
    part = tmp_path / json.loads(manifest.read_text())["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(VggCifarError, match="sha256 mismatch"):
        vggcifar.load_checkpoint(manifest)
    part.unlink()
    with pytest.raises(VggCifarError, match="is missing"):
        vggcifar.load_checkpoint(manifest)
    os.mkfifo(part)  # never read from (it would block)
    with pytest.raises(VggCifarError, match="cannot read shipped model part .*not a regular"):
        vggcifar.load_checkpoint(manifest)
    m = json.loads(manifest.read_text())
    m["parts"][1]["file"] = "p" * 300  # ENAMETOOLONG: a traceback (exit 3) before
    manifest.write_text(json.dumps(m))
    with pytest.raises(VggCifarError, match="cannot read shipped model part"):
        vggcifar.load_checkpoint(manifest)


def test_default_model_prefers_newest_run_then_shipped(tiny_checkpoint, tmp_path, monkeypatch):
    models = tmp_path / "models"
    pack_shipped(tiny_checkpoint, models)
    monkeypatch.setenv("VGGCIFAR_MODELS", str(models))
    runs = tmp_path / "runs"
    path, why = default_model(runs)
    assert path == models / "vggcifar-default.json" and "shipped model" in why
    for i, name in enumerate(("old", "new")):
        (runs / name).mkdir(parents=True)
        (runs / name / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
        os.utime(runs / name / "best.pt", (time.time() + i, time.time() + i))
    path, why = default_model(runs)
    assert path == runs / "new" / "best.pt" and "newest run" in why
    # Planted in a shared working folder: dated 2100 to always win, a dangling link (was a
    # FileNotFoundError traceback), another user's file. None is chosen.
    (runs / "zz").mkdir()
    (runs / "zz" / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
    os.utime(runs / "zz" / "best.pt", (4102444800, 4102444800))
    (runs / "dangling").mkdir()
    (runs / "dangling" / "best.pt").symlink_to(tmp_path / "gone.pt")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        (runs / "theirs").mkdir()
        (runs / "theirs" / "best.pt").write_bytes(tiny_checkpoint.read_bytes())
        os.chown(runs / "theirs" / "best.pt", 65534, 65534)
    assert default_model(runs)[0] == runs / "new" / "best.pt"
    monkeypatch.setenv("VGGCIFAR_MODELS", str(tmp_path / "nothing"))
    with pytest.raises(VggCifarError, match="no model found"):
        default_model(tmp_path / "no-runs")


def test_repository_shipped_model_verifies():
    from vggcifar.shipped import MANIFEST_NAME, models_dir

    manifest = models_dir() / MANIFEST_NAME
    if not manifest.exists():
        pytest.skip("no shipped model in this checkout")
    model, meta = vggcifar.load_checkpoint(manifest)
    assert meta["preproc"].class_names[0] == "airplane"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_ship_model_records_the_figures_vgg_eval_measures(tiny_checkpoint, cifar_batches, tmp_path):
    """scripts/ship_model.py packs, measures the packed files like vgg-eval, records those
    figures in the checkpoint and manifest, and removes parts a bigger earlier model left."""
    import importlib.util
    from pathlib import Path

    from click.testing import CliRunner

    from vggcifar.serving.eval_cli import main as eval_cli

    spec = importlib.util.spec_from_file_location(
        "ship_model", Path(__file__).resolve().parents[1] / "scripts" / "ship_model.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    out = tmp_path / "weights"
    old = pack_shipped(tiny_checkpoint, out, part_bytes=16 * 1024)
    n_old = len(json.loads(old.read_text())["parts"])
    assert n_old > 2
    report = tmp_path / "ship.json"
    assert ship.main([str(tiny_checkpoint), "--data", str(cifar_batches), "--out", str(out),
                      "--json", str(report), "--device", "cpu"]) == 0
    m = json.loads((out / "vggcifar-default.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["vggcifar-default.json"] + [p["file"] for p in m["parts"]])
    measured = json.loads(report.read_text())
    assert measured["n"] == 200 and 0.5 < measured["accuracy"] <= 1
    assert m["test_accuracy_one_view"] == measured["accuracy"]
    assert m["test_accuracy"] == measured["accuracy_tta"]
    _, meta = vggcifar.load_checkpoint(out / "vggcifar-default.json")
    assert meta["test_accuracy_one_view"] == measured["accuracy"]
    r = CliRunner().invoke(eval_cli, ["--model", str(out / "vggcifar-default.json"), "--data",
                                      str(cifar_batches), "--json", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.output)
    assert (ev["accuracy"], ev["accuracy_tta"]) == (measured["accuracy"], measured["accuracy_tta"])
    assert ship.main([str(tmp_path / "missing.pt"), "--data", str(cifar_batches), "--out",
                      str(out)]) == 2


@pytest.mark.parametrize("backend", ["onnx", "torch", "auto"])
def test_each_digest_is_checked_once_per_load(tiny_checkpoint, tmp_path, monkeypatch, backend):
    """create_backend resolves the model once: a shipped model's parts are joined and verified
    once, on a cache miss (export) as on a hit, and a .pt is hashed once."""
    import hashlib

    import vggcifar.source as source
    from vggcifar.serving.backends import create_backend

    monkeypatch.setenv("VGGCIFAR_CACHE", str(tmp_path / "cache"))
    manifest = pack_shipped(tiny_checkpoint, tmp_path / "w", part_bytes=64 * 1024)
    joins, hashes = [], []
    real_join, real_sha = source.join_parts, hashlib.sha256

    def counted_join(*a):
        joins.append(a[0])
        return real_join(*a)

    class CountedHashlib:
        @staticmethod
        def sha256(data=b""):
            hashes.append(len(data))
            return real_sha(data)

    monkeypatch.setattr(source, "join_parts", counted_join)
    monkeypatch.setattr(source, "hashlib", CountedHashlib)
    for load in ("miss", "hit"):
        joins.clear()
        b = create_backend(manifest, backend, "cpu")
        assert len(joins) == 1, (load, joins)
        assert b.info.format == "shipped" and b.info.path == str(manifest)
    hashes.clear()
    b = create_backend(tiny_checkpoint, backend, "cpu")
    assert hashes == [tiny_checkpoint.stat().st_size] and b.info.format == "checkpoint"


def test_model_source_is_resolved_once_and_loads_the_hashed_bytes(tiny_checkpoint, tmp_path):
    """The bytes that were hashed are the ones loaded: replacing the file after resolving it
    changes nothing."""
    import hashlib
    import shutil

    from vggcifar.source import resolve_source

    pt = shutil.copy(tiny_checkpoint, tmp_path / "m.pt")
    src = resolve_source(pt)
    assert src.kind == "checkpoint" and src.sha256 == hashlib.sha256(pt.read_bytes()).hexdigest()
    pt.write_bytes(b"replaced")
    model, meta = vggcifar.load_checkpoint(src)
    assert meta["arch"] and resolve_source(src) is src
    onnx = tmp_path / "x.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(VggCifarError, match="an ONNX model, not a checkpoint"):
        vggcifar.load_checkpoint(onnx)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_shipped_figures_of_every_tta_mode_reach_the_model_line(tiny_checkpoint, tmp_path,
                                                                backend, monkeypatch):
    """ship_model.py records one view, flip and flip+shift figures; every backend shows each
    mode's own (the ONNX export carries the flip+shift one in its metadata)."""
    from vggcifar.serving.predictor import Predictor

    monkeypatch.setenv("VGGCIFAR_CACHE", str(tmp_path / "cache"))
    manifest = pack_shipped(tiny_checkpoint, tmp_path / "w",
                            accuracy={"one_view": 0.5, "tta": 0.52, "flip_shift": 0.53})
    assert json.loads(manifest.read_text())["test_accuracy_flip_shift"] == 0.53
    info = Predictor(manifest, backend=backend, device="cpu").info
    assert (info.accuracy("none"), info.accuracy("flip"), info.accuracy("flip-shift")) == \
        (0.5, 0.52, 0.53)
    assert "53.00% (flip+shift" in info.describe("flip-shift")


@pytest.mark.parametrize("suffix", [".pt", ".json", ".onnx"])
def test_a_device_as_the_model_is_refused_at_once(tmp_path, suffix):
    """A link to /dev/zero named like a model must not be read (it never ends)."""
    from vggcifar.serving.backends import create_backend

    link = tmp_path / f"model{suffix}"
    link.symlink_to("/dev/zero")
    with pytest.raises(VggCifarError, match="not a regular file"):
        create_backend(link, "auto", "cpu")
    with pytest.raises(VggCifarError, match="not a regular file"):
        vggcifar.load_checkpoint(link)
