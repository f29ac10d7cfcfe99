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
