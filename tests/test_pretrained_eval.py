"""The shipped model as package data, load_pretrained, flip TTA in the Predictor, and vgg-eval."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vggcifar
from vggcifar.errors import VggCifarError
from vggcifar.serving import Predictor
from vggcifar.serving.eval_cli import main as eval_main
from vggcifar.shipped import MANIFEST_NAME, pack_shipped

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return next(out.glob("vggcifar-*.whl"))


def test_wheel_carries_the_shipped_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    manifest = json.loads(zipfile.ZipFile(wheel).read(f"vggcifar/weights/{MANIFEST_NAME}"))
    for part in manifest["parts"]:
        assert f"vggcifar/weights/{part['file']}" in names
    assert "vggcifar/weights/README.md" in names  # the model card travels with the weights


def test_installed_package_serves_the_shipped_model_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-index", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(work / "some.jpg")
    env = {k: v for k, v in os.environ.items() if k != "VGGCIFAR_MODELS"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable checkout on sys.path
    code = ("import sys, vggcifar; assert vggcifar.__file__.startswith(sys.argv[1]), "
            "vggcifar.__file__; m, meta = vggcifar.load_pretrained(); print(meta['arch']); "
            "from vggcifar.serving.cli import main; sys.argv = ['vgg-predict', 'some.jpg', "
            "'--json']; main()")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    shipped = json.loads((site / "vggcifar" / "weights" / MANIFEST_NAME).read_text())
    assert lines[0] == shipped["arch"]
    pred = json.loads(lines[-1])
    assert pred["file"] == "some.jpg" and pred["label"] in vggcifar.load_pretrained()[1][
        "preproc"].class_names
    assert "shipped model" in r.stderr and str(site) in r.stderr


def test_create_model_pretrained_matches_load_pretrained():
    model, meta = vggcifar.load_pretrained()
    same = vggcifar.create_model(meta["arch"], pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), same(x))
    other = next(a for a in vggcifar.list_models() if a != meta["arch"])
    with pytest.raises(VggCifarError, match="shipped pretrained model is"):
        vggcifar.create_model(other, pretrained=True)


def test_missing_shipped_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCIFAR_MODELS", str(tmp_path))
    with pytest.raises(VggCifarError, match="shipped model is missing"):
        vggcifar.load_pretrained()


def test_tta_is_the_mean_of_the_two_views(tiny_checkpoint):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    plain = Predictor(tiny_checkpoint, backend="torch", warmup=False)
    tta = Predictor(tiny_checkpoint, backend="torch", warmup=False, tta=True)
    one = plain.probabilities(x)
    mirrored = plain.probabilities(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(tta.probabilities(x), (one + mirrored) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(one, mirrored)  # random pixels: the views really differ
    one_view, both = plain.view_probabilities(x)
    np.testing.assert_allclose(one_view, one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both, (one + mirrored) / 2, rtol=1e-5, atol=1e-6)


def test_vgg_eval_json_matches_direct_predictions(tiny_checkpoint, cifar_batches):
    r = CliRunner().invoke(eval_main, ["--model", str(tiny_checkpoint), "--data",
                                       str(cifar_batches), "--json", "--quiet",
                                       "--batch-size", "64"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    data = vggcifar.data.load_cifar10(cifar_batches, download=False, verbose=False)
    n = len(data.test_y)
    assert res["n"] == n == 200 and res["split"] == "test"
    # The same backend as vgg-eval chose (auto: OpenVINO in bf16 on a CPU with native bf16,
    # whose rounding can flip the near-tied answers of this tiny model against torch's fp32).
    pred = Predictor(tiny_checkpoint, warmup=False)
    assert res["backend"] == pred.backend_name
    one, both = pred.view_probabilities(data.test_x)
    y = data.test_y.numpy()
    assert res["accuracy"] == pytest.approx(float((one.argmax(1) == y).mean()))
    assert res["accuracy_tta"] == pytest.approx(float((both.argmax(1) == y).mean()))
    for key in ("confusion", "confusion_tta"):
        m = np.array(res[key])
        assert m.shape == (10, 10) and m.sum() == n
        assert list(m.sum(1)) == list(np.bincount(y, minlength=10))
    assert set(res["per_class"]) == set(data.classes)
    # The tiny model learned something: better than chance on its test images.
    assert res["accuracy"] > 0.2


def test_vgg_eval_table_and_errors(tiny_checkpoint, cifar_batches, tmp_path):
    r = CliRunner().invoke(eval_main, ["--model", str(tiny_checkpoint), "--data",
                                       str(cifar_batches), "--limit", "50", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "accuracy, one view" in r.stdout and "confusion matrix" in r.stdout
    assert "50 test images" in r.stdout
    # A shipped-format copy of the same model gives the same figure through its own loader.
    manifest = pack_shipped(tiny_checkpoint, tmp_path / "shipped")
    r2 = CliRunner().invoke(eval_main, ["--model", str(manifest), "--data", str(cifar_batches),
                                        "--limit", "50", "--quiet", "--json"])
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.stdout)["n"] == 50
    bad = CliRunner().invoke(eval_main, ["--model", str(tmp_path / "nope.pt"), "--data",
                                         str(cifar_batches)])
    assert bad.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(eval_main, ["--model", str(tiny_checkpoint), "--data", str(empty),
                                         "--quiet"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
