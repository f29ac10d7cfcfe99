"""The Gradio page: launched on a free localhost port, queried with gradio_client and a real
headless Chromium (Playwright)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from test_serving import animated_gif, base_image, bad_files, write_varied_checkpoint
from vggcifar.serving import Predictor

gradio_client = pytest.importorskip("gradio_client")
# Gradio's queue uses pandas options that pandas 3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(url, predictor, workdir, examples, demo)`` of a demo running with the default limits
    (10 MB uploads, concurrency 2), the way `vgg-demo` launches it."""
    from vggcifar.serving.demo import build_demo, launch_demo
    from vggcifar.serving.examples import write_examples

    ckpt = write_varied_checkpoint(tmp_path_factory.mktemp("demo-model") / "best.pt")
    predictor = Predictor(ckpt, device="cpu")
    work = tmp_path_factory.mktemp("demo-work")
    examples = write_examples(work / "examples")
    demo = build_demo(predictor, top_k=5, examples=examples)
    _, url, _ = launch_demo(demo, port=free_port(), prevent_thread_lock=True,
                            allowed_paths=[str(work)], quiet=True)
    yield url, predictor, work, examples, demo
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return gradio_client.Client(served[0], verbose=False)


def predict(client, path):
    return client.predict(gradio_client.handle_file(str(path)), api_name="/predict")


def test_predict_endpoint_matches_predictor(served, client):
    _, predictor, _, examples, _ = served
    for ex in examples[:3]:
        label, details = predict(client, ex)
        want = predictor.predict(ex, top_k=5)
        assert label["label"] == want.label
        got = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert list(got) == [lab for lab, _ in want.top_k]
        np.testing.assert_allclose(list(got.values()), [p for _, p in want.top_k], atol=1e-5)
        assert " ms" in details and predictor.backend_name in details


@pytest.mark.parametrize("what, message", [
    ("empty", "empty file"), ("text", "not a readable image"), ("truncated", "truncated"),
    ("bomb", "decompression bomb")])
def test_bad_upload_is_a_clear_error_and_server_keeps_serving(what, message, served, client,
                                                              tmp_path):
    path = bad_files(tmp_path)[what]
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        predict(client, path)
    assert message in str(e.value) and path.name in str(e.value)
    assert str(Path(path).parent) not in str(e.value)  # no server paths leak into messages
    label, _ = predict(client, served[3][0])
    assert label["label"] in served[1].class_names


def test_animated_gif_uses_first_frame_and_says_so(client, tmp_path):
    label, details = predict(client, animated_gif(tmp_path / "anim.gif"))
    assert label["label"] and "first frame" in details


def test_oversized_upload_is_refused(served, client, tmp_path):
    url = served[0]
    big = tmp_path / "big.bmp"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (2600, 2600, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20e6
    # gradio_client checks the page's limit before uploading ...
    with pytest.raises(Exception, match="maximum file size"):
        predict(client, big)
    # ... and the server refuses the upload itself (413) for clients that do not.
    with open(big, "rb") as f:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.bmp", f)}, timeout=60)
    assert r.status_code == 413
    label, _ = predict(client, served[3][1])
    assert label["label"]


def test_only_its_own_folder_is_served(served, tmp_path):
    url, _, work, examples, _ = served
    assert httpx.get(f"{url}gradio_api/file={examples[0]}").status_code == 200
    secret = tmp_path / "secret.png"
    base_image().save(secret)
    for path in (secret, Path("/etc/passwd"), Path(__file__)):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code in (403, 404), path


def test_predict_endpoint_refuses_server_paths(served, client):
    """A hand-made request naming a server file instead of an upload must not be read."""
    import json

    url, _, _, _, demo = served
    fn_index = next(i for i, f in demo.fns.items() if f.api_name == "predict")
    secret = {"path": "/etc/passwd", "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(f"{url}gradio_api/queue/join", json={
        "data": [secret], "fn_index": fn_index, "session_hash": "raw-test", "event_data": None,
        "trigger_id": None})
    assert r.status_code == 200
    done = None
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": "raw-test"},
                      timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    done = msg
                    break
    assert done is not None and done["success"] is False
    assert "root:" not in json.dumps(done)  # nothing of the file came back
    label, _ = predict(client, served[3][0])  # and the server keeps serving
    assert label["label"]


def test_limits_are_configured(served):
    demo = served[4]
    assert demo.max_file_size == 10 * 1024 * 1024
    fn = next(f for f in demo.fns.values() if f.api_name == "predict")
    assert fn.concurrency_limit == 2 and not fn.preprocess
    assert demo._queue.max_size == 64


def test_concurrent_clients(served, client):
    jobs = [client.submit(gradio_client.handle_file(str(ex)), api_name="/predict")
            for ex in served[3] for _ in range(2)]
    results = [j.result(timeout=60) for j in jobs]
    assert all(r[0]["label"] in served[1].class_names for r in results)


def test_examples_are_drawn_not_shipped(served):
    examples = served[3]
    assert len(examples) >= 4
    for ex in examples:
        assert Path(ex).parent.parent == served[2]
        with Image.open(ex) as im:
            assert im.size[0] >= 64


def test_vgg_demo_command_errors(tmp_path):
    from vggcifar.serving.demo import main

    r = CliRunner().invoke(main, ["--model", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = CliRunner().invoke(main, ["--port", "0"])
    assert r.exit_code == 2


@pytest.mark.browser
def test_browser_upload_shows_label(served, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    url, predictor, _, examples, _ = served
    image = examples[2]
    want = predictor.predict(image).label
    text = tmp_path / "fake.png"
    text.write_text("not an image")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url, timeout=60_000)
            sync_api.expect(page.get_by_text("test accuracy").first).to_be_visible(timeout=60_000)
            upload = page.locator("input[type=file]").first
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(image))
            shown = page.locator('[data-testid="label-output-value"]')
            sync_api.expect(shown).to_have_text(want, timeout=30_000)
            sync_api.expect(page.locator("#prediction-details")).to_contain_text("ms")
            # A bad file: clear the image, upload a text file named .png, see the error toast.
            page.get_by_role("button", name="Remove Image").first.click()
            page.locator("input[type=file]").first.set_input_files(str(text))
            sync_api.expect(page.get_by_text("not a readable image").first).to_be_visible(
                timeout=30_000)
        finally:
            browser.close()
