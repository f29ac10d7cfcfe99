"""Test-time augmentation modes: one view, flip (2 views) and flip-shift (6 views), the same in
the Predictor, vgg-predict, vgg-eval and vgg-serve's /v1/predict."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_serving import run_cli, write_varied_checkpoint
from vggcifar.errors import VggCifarError
from vggcifar.serving import Predictor
from vggcifar.serving.views import VIEW_COUNT, shifted, tta_views
from vggcifar.testing import synthetic_images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_varied_checkpoint(tmp_path_factory.mktemp("tta") / "best.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, backend="torch", device="cpu", warmup=False)


def test_shift_moves_pixels_and_fills_zeros():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4) + 1
    right = shifted(x, 0, 1)
    assert (right[..., :, 0] == 0).all() and (right[..., :, 1:] == x[..., :, :-1]).all()
    up = shifted(x, -1, 0)
    assert (up[..., -1, :] == 0).all() and (up[..., :-1, :] == x[..., 1:, :]).all()
    views = tta_views(x, "flip-shift")
    assert len(views) == VIEW_COUNT["flip-shift"] == 6
    assert (views[1] == x[..., ::-1]).all() and all(v.flags.c_contiguous for v in views)
    assert len(tta_views(x, "none")) == 1 and len(tta_views(x, True)) == 2


def test_predictor_modes_average_the_views(predictor):
    x, _ = synthetic_images(5, seed=3)
    per_view = [predictor.probabilities(v, tta="none") for v in tta_views(x, "flip-shift")]
    np.testing.assert_allclose(predictor.probabilities(x, tta="flip"),
                               np.mean(per_view[:2], 0), atol=1e-5)
    six = predictor.probabilities(x, tta="flip-shift")
    np.testing.assert_allclose(six, np.mean(per_view, 0), atol=1e-5)
    np.testing.assert_allclose(six.sum(1), 1, atol=1e-5)
    assert predictor.probabilities(x, tta=True) == pytest.approx(
        predictor.probabilities(x, tta="flip"))
    with pytest.raises(VggCifarError, match="unknown test-time augmentation"):
        predictor.probabilities(x, tta="rotate")


def test_prediction_is_labelled_with_its_mode(predictor):
    img = Image.fromarray(synthetic_images(1, seed=4)[0][0].transpose(1, 2, 0))
    for mode in ("none", "flip", "flip-shift"):
        assert predictor.predict(img, tta=mode).to_dict()["tta"] == mode
    assert "flip+shift TTA (6 views)" in predictor.info.describe("flip-shift")


def test_cli_tta_shift(tmp_path, checkpoint):
    path = tmp_path / "img.png"
    Image.fromarray(synthetic_images(1, seed=5)[0][0].transpose(1, 2, 0)).save(path)
    r = run_cli(path, "--model", checkpoint, "--json", "--top-k", "10", "--tta-shift")
    assert r.exit_code == 0, r.stderr
    assert "flip+shift TTA (6 views)" in r.stderr
    row = json.loads(r.stdout)
    want = Predictor(checkpoint, tta="flip-shift").predict(path, top_k=10)
    assert row["tta"] == "flip-shift" and row["label"] == want.label
    np.testing.assert_allclose([t["probability"] for t in row["top_k"]],
                               [p for _, p in want.top_k], atol=1e-4)
    r = run_cli(path, "--model", checkpoint, "--json", "--top-k", "50", "--quiet")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["top_k"]) == 10
    assert "note: --top-k 50: the model has 10 classes; listing all 10" in r.stderr
    for both, said in ((["--tta", "--tta-shift"], "not both"),
                       (["--quiet", "--progress"], "--progress asks for the bar")):
        r = run_cli(path, "--model", checkpoint, *both)
        assert r.exit_code == 2 and said in r.stderr and r.stdout == "", r.output


def test_evaluation_reports_every_mode(predictor):
    from vggcifar.serving.evaluation import evaluate_predictor

    x, y = synthetic_images(12, seed=6)
    result = evaluate_predictor(predictor, torch.from_numpy(x), torch.from_numpy(y))
    for mode, suffix in (("none", ""), ("flip", "_tta"), ("flip-shift", "_flip_shift")):
        served = predictor.probabilities(x, tta=mode).argmax(1)
        assert result["accuracy" + suffix] == pytest.approx(float((served == y).mean()))
        assert "ece" + suffix in result
    assert set(result["calibration"]) >= {"one_view", "tta", "flip_shift"}


def test_http_tta_query(predictor):
    from fastapi.testclient import TestClient

    from test_http_api import wait_ready
    from vggcifar.serving.http_api import create_app

    img = synthetic_images(1, seed=7)[0][0].transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    app = create_app(predictor, max_batch=8, queue_size=16, max_files=8, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        for mode in ("none", "flip", "flip-shift"):
            r = c.post(f"/v1/predict?tta={mode}&top_k=10", content=buf.getvalue(),
                       headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            row = r.json()["results"][0]
            want = predictor.predict(buf.getvalue(), top_k=10, tta=mode)
            assert row["tta"] == mode and row["label"] == want.label
            np.testing.assert_allclose([t["probability"] for t in row["top_k"]],
                                       [p for _, p in want.top_k], atol=1e-4)
        assert c.post("/v1/predict?tta=rotate", content=buf.getvalue(),
                      headers={"content-type": "image/png"}).status_code == 422
        # 3 images x 6 views do not fit a queue of 16: refused up front, not queued forever
        files = [("files", (f"{i}.png", buf.getvalue(), "image/png")) for i in range(3)]
        r = c.post("/v1/predict?tta=flip-shift", files=files)
        assert r.status_code == 413 and "at most 2 per request" in r.json()["error"]
