"""The Gradio page: launched on a free localhost port, queried with gradio_client and a real
headless Chromium (Playwright)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
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


def predict(client, path, *args):
    """The API's outputs ``(label, JSON, details)``; ``args``: the optional fit and tta (the
    API's defaults when left out)."""
    return client.predict(gradio_client.handle_file(str(path)), *args, api_name="/predict")


def label_of(client, path) -> dict:
    return predict(client, path)[0]


def test_predict_endpoint_matches_predictor(served, client):
    _, predictor, _, examples, _ = served
    for ex in examples[:3]:
        label, as_json, details = predict(client, ex)
        want = predictor.predict(ex, top_k=5)
        assert label["label"] == want.label
        got = {c["label"]: c["confidence"] for c in label["confidences"]}
        assert list(got) == [lab for lab, _ in want.top_k]
        np.testing.assert_allclose(list(got.values()), [p for _, p in want.top_k], atol=1e-5)
        assert " ms" in details and predictor.backend_name in details
        # The JSON output has the fields of `vgg-predict --json` (Prediction.to_dict()).
        want_json = want.to_dict()
        assert set(as_json) == set(want_json)
        assert as_json["file"] == Path(ex).name and as_json["label"] == want.label
        assert as_json["top_k"] == want_json["top_k"] and as_json["notes"] == []
        assert as_json["backend"] == predictor.backend_name and as_json["ms"] > 0


def outputs(client, path, fit="squash", tta=False):
    """``(probabilities by class, model input as an array)``: the prediction, then the picture of
    the model input (the page's second event)."""
    label, as_json, _ = predict(client, path, fit, tta)
    seen = client.predict(gradio_client.handle_file(str(path)), fit, api_name="/model_input")
    with Image.open(seen) as im:
        pixels = np.asarray(im.convert("RGB"))
    return {t["label"]: t["probability"] for t in as_json["top_k"]}, pixels


def test_model_input_is_shown_enlarged(served, client):
    """The 32x32 input, enlarged 7x by whole pixels (nearest neighbour), exactly."""
    _, predictor, _, examples, _ = served
    _, seen = outputs(client, examples[0])
    assert seen.shape == (224, 224, 3)
    want = predictor.predict(examples[0]).pixels.transpose(1, 2, 0)
    np.testing.assert_array_equal(seen[::7, ::7], want)
    np.testing.assert_array_equal(seen, want.repeat(7, 0).repeat(7, 1))


def test_tta_checkbox(served, client, tmp_path):
    """TTA changes nothing for a mirror-symmetric picture; otherwise it gives what
    Predictor(tta=True) gives."""
    _, predictor, _, _, _ = served
    half = np.asarray(base_image(16, 32, seed=4))
    symmetric = tmp_path / "symmetric.png"
    Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(symmetric)
    one, _ = outputs(client, symmetric, "squash", False)
    both, _ = outputs(client, symmetric, "squash", True)
    assert list(one) == list(both)
    np.testing.assert_allclose(list(one.values()), list(both.values()), atol=1e-5)

    plain = tmp_path / "plain.png"
    base_image(32, 32, seed=7).save(plain)
    one, _ = outputs(client, plain, "squash", False)
    both, _ = outputs(client, plain, "squash", True)
    want = Predictor(predictor.info.path, device="cpu", tta=True).predict(plain, top_k=5)
    assert list(both) == [lab for lab, _ in want.top_k]
    np.testing.assert_allclose(list(both.values()), [p for _, p in want.top_k], atol=1e-5)
    assert not np.allclose([one.get(k, 0) for k in both], list(both.values()), atol=1e-4)


def test_crop_or_squash(served, client, tmp_path):
    """A non-square picture: the two choices differ and each is what the library does."""
    from vggcifar.serving import fit_image

    _, predictor, _, _, _ = served
    wide = tmp_path / "wide.png"
    base_image(96, 40, seed=2).save(wide)
    squash, seen_squash = outputs(client, wide, "squash")
    crop, seen_crop = outputs(client, wide, "crop")
    assert not np.array_equal(seen_squash, seen_crop)
    for fit, probs, seen in (("squash", squash, seen_squash), ("crop", crop, seen_crop)):
        want = predictor.predict(wide, top_k=5, fit=fit)
        np.testing.assert_array_equal(seen[::7, ::7], want.pixels.transpose(1, 2, 0))
        np.testing.assert_allclose(list(probs.values()), [p for _, p in want.top_k], atol=1e-5)
    with Image.open(wide) as im:  # the crop is the centred 40x40 square, resized
        middle = np.asarray(fit_image(im, "crop").resize((32, 32), Image.Resampling.BICUBIC,
                                                         reducing_gap=None))
    np.testing.assert_array_equal(seen_crop[::7, ::7], middle)
    with pytest.raises(gradio_client.exceptions.AppError, match="fit must be"):
        predict(client, wide, "stretch", False)


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
    assert label_of(client, served[3][0])["label"] in served[1].class_names


def test_animated_gif_uses_first_frame_and_says_so(client, tmp_path):
    label, as_json, details = predict(client, animated_gif(tmp_path / "anim.gif"))
    assert label["label"] and "first frame" in details
    assert "first frame" in as_json["notes"][0]


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
    assert label_of(client, served[3][1])["label"]


def test_only_its_own_folder_is_served(served, tmp_path):
    url, _, work, examples, _ = served
    assert httpx.get(f"{url}gradio_api/file={examples[0]}").status_code == 200
    secret = tmp_path / "secret.png"
    base_image().save(secret)
    for path in (secret, Path("/etc/passwd"), Path(__file__)):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code in (403, 404), path


@pytest.mark.parametrize("endpoint", ["predict", "model_input"])
def test_endpoints_refuse_server_paths(served, client, endpoint):
    """A hand-made request naming a server file instead of an upload must not be read, by
    either endpoint."""
    import json

    url, _, _, _, demo = served
    fn_index = next(i for i, f in demo.fns.items() if f.api_name == endpoint)
    secret = {"path": "/etc/passwd", "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}
    r = httpx.post(f"{url}gradio_api/queue/join", json={
        "data": [secret, "squash"] + ([False] if endpoint == "predict" else []),
        "fn_index": fn_index, "session_hash": f"raw-{endpoint}", "event_data": None,
        "trigger_id": None})
    assert r.status_code == 200
    done = None
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": f"raw-{endpoint}"},
                      timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    done = msg
                    break
    assert done is not None and done["success"] is False
    assert "root:" not in json.dumps(done)  # nothing of the file came back
    assert label_of(client, served[3][0])["label"]  # and the server keeps serving


def call_raw(url: str, value, timeout: float = 60) -> tuple[str, str]:
    """POST ``{"data": [value, "squash", false]}`` to ``/gradio_api/call/predict`` as any HTTP
    client can (no gradio_client, no ``meta``) and return the final ``(event, data)``:
    ``complete`` with the outputs, or ``error`` with the message."""
    r = httpx.post(f"{url}gradio_api/call/predict", json={"data": [value, "squash", False]},
                   timeout=timeout)
    assert r.status_code == 200, r.text[:200]
    text = httpx.get(f"{url}gradio_api/call/predict/{r.json()['event_id']}",
                     timeout=timeout).text
    events = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("event:")]
    data = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("data:")]
    return events[-1], data[-1]


def test_raw_request_cannot_read_server_files(served, tmp_path):
    """Issue 12, item 1: a client naming a server path (no ``meta``) gets one refusal, the same
    for an image, a folder, an empty or special file, a missing file, a URL or a symlink out of
    Gradio's upload folder; an existing server image is never classified."""
    from vggcifar.serving.received import REFUSED

    url, _, _, _, demo = served
    secret = tmp_path / "server-image.png"
    base_image().save(secret)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    link_dir = Path(demo.GRADIO_CACHE) / "vggcifar-test-link"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / "link.png"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)  # inside the upload folder, pointing out of it
    paths = [secret, "/etc", "/proc/self/environ", empty, tmp_path / "missing.png", "/etc/passwd",
             link, f"{demo.GRADIO_CACHE}/../../etc/passwd", "http://127.0.0.1:1/x.png",
             "file:///etc/passwd", f"{demo.GRADIO_CACHE}/x\0.png"]
    values = [{"path": str(p)} for p in paths] + [{"path": str(secret), "orig_name": "a.png"},
                                                  {"url": f"file://{secret}"}]
    try:
        for value in values:
            event, data = call_raw(url, value)
            assert event == "error", (value, data)
            assert json.loads(data)["error"] == REFUSED, (value, data)
        # A bare string is refused by Gradio's own validation, the same for every path.
        assert len({call_raw(url, str(p)) for p in paths[:5]}) == 1
        assert call_raw(url, str(secret))[0] == "error"
    finally:
        shutil.rmtree(link_dir, ignore_errors=True)


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_data_url_size_limit(served, tmp_path):
    """Item 2: a ``data:`` URL is held to the upload limit, decoded or not."""
    url = served[0]
    buf = io.BytesIO()
    base_image().save(buf, format="PNG")
    small = buf.getvalue()
    event, data = call_raw(url, {"url": data_url(small), "orig_name": "ok.png"})
    assert event == "complete", data
    assert json.loads(data)[1]["file"] == "ok.png"  # the JSON output, over plain HTTP too
    # A valid PNG padded after its end to just over 10 MB: the request body itself is under
    # the body limit (base64 of 10 MB plus room), so only the decoded size can refuse it.
    over = small + b"\0" * (10 * 2**20 + 1000 - len(small))
    event, data = call_raw(url, {"url": data_url(over), "orig_name": "big.png"})
    assert event == "error" and "upload limit" in data, data
    # Far over: the request body is refused before anything reads it.
    r = httpx.post(f"{url}gradio_api/call/predict",
                   json={"data": [{"url": data_url(small + b"\0" * (15 * 2**20))}, "squash",
                                  False]}, timeout=60)
    assert r.status_code == 413


def test_upload_type_is_checked_by_content(client, tmp_path):
    """Item 10: an image type the page does not list (PPM, which Pillow would decode) is
    refused with the decoder's one-line error, whatever its name says."""
    fake = tmp_path / "really-ppm.png"
    base_image().save(fake, format="PPM")
    with pytest.raises(gradio_client.exceptions.AppError, match="not a readable image"):
        predict(client, fake)


def test_limits_are_configured(served):
    demo = served[4]
    assert demo.max_file_size == 10 * 1024 * 1024
    fn = next(f for f in demo.fns.values() if f.api_name == "predict")
    assert fn.concurrency_limit == 2 and not fn.preprocess
    assert demo._queue.max_size == 64
    every, age = demo.delete_cache  # uploads do not linger for hours (issue 12, item 10)
    assert every <= 60 and age <= 600


def test_concurrent_clients(served, client):
    jobs = [client.submit(gradio_client.handle_file(str(ex)), api_name="/predict")
            for ex in served[3] for _ in range(2)]
    results = [j.result(timeout=60) for j in jobs]
    assert all(r[0]["label"] in served[1].class_names for r in results)


def test_examples_are_the_shipped_images_copied_to_the_workdir(served):
    """One real CIFAR-10 test image per class, copied from the package into the server's own
    folder (the only one besides uploads that the page reads)."""
    from vggcifar.serving.examples import EXAMPLES_DIR, example_class

    examples, predictor = served[3], served[1]
    assert [example_class(p) for p in examples] == list(predictor.class_names)
    for ex in examples:
        assert Path(ex).parent.parent == served[2]
        assert Path(ex).read_bytes() == (EXAMPLES_DIR / Path(ex).name).read_bytes()
        with Image.open(ex) as im:
            assert im.size == (32, 32) and im.format == "JPEG"


def test_vgg_demo_command_errors(tmp_path):
    from vggcifar.serving.demo_cli import main

    r = CliRunner().invoke(main, ["--model", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = CliRunner().invoke(main, ["--port", "0"])
    assert r.exit_code == 2


@pytest.mark.browser
def test_browser_examples_and_upload_show_the_label(served, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    from vggcifar.serving.examples import example_class

    url, predictor, _, examples, _ = served
    # Two examples the model labels differently, so the second answer cannot be the first's.
    labels = {example_class(ex): predictor.predict(ex).label for ex in examples}
    first = examples[0]
    second = next(ex for ex in examples if labels[example_class(ex)] != labels[example_class(first)])
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
            shown = page.locator('[data-testid="label-output-value"]')
            # The example gallery: each row is a thumbnail and its class; clicking predicts.
            gallery = page.locator("#examples")
            for ex in (first, second):
                gallery.get_by_text(example_class(ex), exact=True).first.click()
                sync_api.expect(shown).to_have_text(labels[example_class(ex)], timeout=30_000)
            sync_api.expect(page.locator("#model-input img")).to_be_visible()
            upload = page.locator("input[type=file]").first
            page.get_by_role("button", name="Remove Image").first.click()
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(image))
            sync_api.expect(shown).to_have_text(want, timeout=30_000)
            sync_api.expect(page.locator("#prediction-details")).to_contain_text("ms")
            # A bad file: clear the image, upload a text file named .png, see the error toast.
            page.get_by_role("button", name="Remove Image").first.click()
            page.locator("input[type=file]").first.set_input_files(str(text))
            sync_api.expect(page.get_by_text("not a readable image").first).to_be_visible(
                timeout=30_000)
        finally:
            browser.close()
