"""Review of the hardening-serving branch: each test reproduces one finding and checks that the
attack or mistake is refused (a clear error, a 4xx with a JSON error), never a traceback, a hang
or a file of ours made world-readable."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from test_serving import write_varied_checkpoint
from vggcifar.errors import VggCifarError

DEEP = "[" * 200_000  # deeper than Python's recursion limit: json.loads raises RecursionError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_varied_checkpoint(tmp_path_factory.mktemp("review") / "best.pt")


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- 1: vgg-export's chmod follows no planted link ------------------------------------------------

@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and symlinks")
def test_publish_never_chmods_through_a_planted_link(tmp_path):
    from vggcifar.export.pipeline import _publish
    from vggcifar.io import make_shared

    secret = tmp_path / "id_rsa"
    secret.write_text("key")
    secret.chmod(0o600)
    out, stage = tmp_path / "out", tmp_path / "out" / ".stage"
    stage.mkdir(parents=True)
    (stage / "model.onnx").write_bytes(b"onnx")
    (stage / "model.onnx").chmod(0o600)
    # An .onnx file has no engine sidecar: the name was chmod'ed all the same, through the link.
    os.symlink(secret, out / "model.onnx.json")
    _publish({}, [{"file": "model.onnx"}], stage, out)
    assert mode_of(secret) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert mode_of(out / "model.onnx") == 0o666 & ~umask  # what it wrote is still shared
    make_shared([out / "model.onnx.json"])  # named directly: still not followed
    assert mode_of(secret) == 0o600


# ---- 2, 3: /v2 infer: values outside [0, 1]; large parses under the decode budget ---------------

def v2_body(x: np.ndarray, binary: bool) -> tuple[bytes, dict]:
    tensor = {"name": "image", "datatype": "FP32", "shape": list(x.shape)}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode(), {}
    blob = x.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]})
    return head.encode() + blob, {"Inference-Header-Content-Length": str(len(head))}


@pytest.fixture(scope="module")
def client(ckpt):
    from fastapi.testclient import TestClient

    from test_http_api import wait_ready
    from vggcifar.serving import Predictor
    from vggcifar.serving.http_api import create_app

    p = Predictor(ckpt, backend="torch", device="cpu", warmup=False)
    with TestClient(create_app(p, max_batch=8, queue_size=16, demo=False)) as c:
        wait_ready(c)
        yield c


def test_v2_values_outside_0_1_are_a_400_naming_the_range(client):
    url = f"/v2/models/{client.app.state.vgg.model_name}/infer"
    ok = np.full((1, 3, 32, 32), 0.5, np.float32)
    for binary in (False, True):
        for bad in (3e38, 255.0, -0.5):  # 3e38: the model overflowed to NaN, a 500
            x = ok.copy()
            x[0, 1, 2, 3] = bad
            body, headers = v2_body(x, binary)
            r = client.post(url, content=body, headers=headers)
            assert r.status_code == 400, r.text
            assert "[0, 1]" in r.json()["error"] and "255" in r.json()["error"]
        x = ok.copy()
        x[0, 0, 0, :2] = (1.0 + 1e-6, -1e-6)  # rounding in the client's scaling: accepted
        body, headers = v2_body(x, binary)
        assert client.post(url, content=body, headers=headers).status_code == 200


def test_large_v2_json_parses_wait_for_the_decode_budget(client):
    from vggcifar.images import DECODE_BUDGET_BYTES, DECODES
    from vggcifar.serving.inference_protocol import INLINE_PARSE_BYTES, parse_cost

    url = f"/v2/models/{client.app.state.vgg.model_name}/infer"
    body, _ = v2_body(np.full((4, 3, 32, 32), 0.25, np.float32), binary=False)
    assert len(body) > INLINE_PARSE_BYTES
    answers = []
    with DECODES.reserve(DECODE_BUDGET_BYTES, "test"):  # the budget is all in use
        t = threading.Thread(target=lambda: answers.append(client.post(url, content=body)))
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and not answers  # the parse waits: its memory is not spent yet
    t.join(30)
    assert answers[0].status_code == 200, answers[0].text
    assert parse_cost(body, None) >= 10 * len(body)  # what it waited to hold


def test_v1_bad_query_parameters_get_the_api_error_shape(client):
    for query in ("top_k=0", "tta=bogus"):
        r = client.post(f"/v1/predict?{query}", content=b"x",
                        headers={"content-type": "image/png"})
        assert r.status_code == 422 and set(r.json()) == {"error"}, r.text
        assert query.split("=")[0] in r.json()["error"] and "bogus" not in r.json()["error"]


# ---- 4: float and 32-bit TIFFs ---------------------------------------------------------------------

def tiff(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "TIFF")
    return buf.getvalue()


def test_non_finite_float_pixels_are_refused():
    from vggcifar.images import read_image

    arr = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    assert read_image(tiff(arr)).float().std() > 50  # a good float image still works
    for bad in (np.nan, np.inf):
        arr[5, 5] = bad  # made the whole image black, and it was classified
        with pytest.raises(VggCifarError, match="NaN or infinite"):
            read_image(tiff(arr), name="f.tif")


def test_32bit_integer_pixels_are_scaled_by_their_range():
    from vggcifar.images import read_image

    v = (np.arange(32 * 32, dtype=np.int64) * 977 + 70_000).reshape(32, 32).astype(np.int32)
    x = read_image(tiff(v))[0].numpy().astype(int)  # every value > 65535 was clipped to 255
    want = np.floor((v - v.min()) / (v.max() - v.min()) * 255 + 0.5)
    assert np.abs(x - want).max() <= 1 and x.min() == 0 and x.max() == 255


# ---- 5, 7: the export cache's files: FIFOs, devices, links, deep JSON -----------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_cache_reads_no_fifo_device_link_or_deep_json(tmp_path):
    import hashlib

    from vggcifar.export.cache import CACHE_FORMAT, _read_verified, cache_sidecar

    cached, data, sha = tmp_path / "m.onnx", b"graph bytes", "a" * 64
    side = {"format": CACHE_FORMAT, "source_sha256": sha, "temperature": 1.0,
            "bytes": len(data), "onnx_sha256": hashlib.sha256(data).hexdigest()}

    def plant(onnx, sidecar):
        for p in (cached, cache_sidecar(cached)):
            p.unlink(missing_ok=True)
        onnx(cached)
        sidecar(cache_sidecar(cached))

    def write_side(**changes):
        return lambda p: p.write_text(json.dumps({**side, **changes}))

    def read():
        got = []
        t = threading.Thread(target=lambda: got.append(_read_verified(cached, sha, 1.0)),
                             daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "hung on a planted file"
        return got[0]

    plant(lambda p: p.write_bytes(data), write_side())
    assert read() == data
    for onnx, sidecar in [
        (lambda p: p.write_bytes(data), os.mkfifo),                        # FIFO sidecar
        (os.mkfifo, write_side(bytes=0, onnx_sha256=hashlib.sha256().hexdigest())),
        (lambda p: os.symlink("/dev/zero", p),                               # endless reads
         write_side(bytes=0, onnx_sha256=hashlib.sha256().hexdigest())),
        (lambda p: p.write_bytes(data), lambda p: os.symlink("/dev/zero", p)),
        (lambda p: p.write_bytes(data), lambda p: p.write_text(DEEP)),
        (lambda p: p.write_bytes(data), write_side(bytes=-1)),
    ]:
        plant(onnx, sidecar)
        assert read() is None  # rebuilt by cached_onnx, which replaces the name


def test_deep_json_is_a_clear_error_never_a_recursion_error(tmp_path):
    from vggcifar.runtime.contract import decode_metadata, read_engine_sidecar
    from vggcifar.serving.cli import main

    evil = tmp_path / "evil.json"
    evil.write_text(DEEP)
    Image.new("RGB", (8, 8)).save(img := tmp_path / "x.png")
    r = CliRunner().invoke(main, [str(img), "--model", str(evil)])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "error: " in r.stderr and "shipped-model manifest" in r.stderr
    assert decode_metadata({"arch": DEEP})["arch"] == DEEP  # kept as the plain string
    (tmp_path / "m.engine.json").write_text(DEEP)
    with pytest.raises(VggCifarError, match="not readable JSON"):
        read_engine_sidecar(tmp_path / "m.engine")


def test_manifest_fifo_is_refused_not_waited_on_and_a_link_is_followed(tmp_path):
    from vggcifar.shipped import read_manifest

    os.mkfifo(fifo := tmp_path / "model.json")
    t0 = time.monotonic()
    with pytest.raises(VggCifarError, match="not a readable shipped-model manifest"):
        read_manifest(fifo)  # before the fix: open() blocked forever waiting for a writer
    assert time.monotonic() - t0 < 5
    (real := tmp_path / "real.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "link.json").symlink_to(real)
    with pytest.raises(VggCifarError, match="is not a vggcifar shipped-model manifest"):
        read_manifest(tmp_path / "link.json")  # read through the user's link, then judged


# ---- 6: model metadata of the wrong type ----------------------------------------------------------

def test_metadata_of_the_wrong_type_is_treated_as_absent(ckpt, tmp_path):
    from vggcifar.checkpoint import load_checkpoint
    from vggcifar.preprocessing import Preprocessing
    from vggcifar.runtime.contract import build_metadata
    from vggcifar.serving import Predictor
    from vggcifar.serving.backends import info_from_export_metadata

    pre = Preprocessing()
    strings = {"class_names": json.dumps(list(pre.class_names)), "mean": json.dumps(pre.mean),
               "std": json.dumps(pre.std)}
    for meta in ({**strings, "arch": "5", "config": "[1]"},   # ONNX metadata: JSON strings
                 {**strings, "arch": 5, "config": [1]}):      # an engine's sidecar: any JSON
        info = info_from_export_metadata(meta, tmp_path / "m.onnx", "onnx")
        assert info.arch is None and "unknown arch" in info.describe()
    c = torch.load(ckpt, weights_only=True)
    c["config"] = [1]
    torch.save(c, bad := tmp_path / "config-list.pt")
    _, meta = load_checkpoint(bad)
    assert build_metadata(meta, precision="fp32", exporter="torchscript",
                          source_sha256="0" * 64)["test_accuracy_with_tta"] == "false"
    p = Predictor(bad, backend="torch", device="cpu", warmup=False)
    assert "(vgg11, " in p.info.describe()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_received_files_are_read_up_to_the_limit(tmp_path):
    from vggcifar.serving.received import REFUSED, _read_received

    root = tmp_path / "uploads"
    root.mkdir()
    (root / "a.png").write_bytes(b"x" * 100)
    os.mkfifo(root / "fifo.png")
    roots = (str(root.resolve()),)
    assert _read_received(str(root / "a.png"), roots, "a.png", 100) == b"x" * 100
    with pytest.raises(VggCifarError, match="a.png: image is over the"):
        _read_received(str(root / "a.png"), roots, "a.png", 99)
    with pytest.raises(VggCifarError, match=REFUSED):
        _read_received(str(root / "fifo.png"), roots, "fifo.png", 100)


# ---- 8: onnxruntime device strings ----------------------------------------------------------------

def test_malformed_cuda_device_is_a_clear_error(tmp_path):
    from vggcifar.runtime.onnx import device_session

    for device in ("cuda:x", "cuda:", "cuda:0:1", "cudax"):
        with pytest.raises(VggCifarError, match="unknown device"):
            device_session(tmp_path / "never-opened.onnx", device)


# ---- vgg-predict -: stdin is capped -----------------------------------------------------------------

def test_stdin_is_read_up_to_a_limit(ckpt, monkeypatch):
    from vggcifar.serving import cli

    monkeypatch.setattr(cli, "MAX_STDIN_BYTES", 1000)
    r = CliRunner().invoke(cli.main, ["-", "--model", str(ckpt), "--backend", "torch",
                                      "--device", "cpu"], input=b"\0" * 5000)
    assert r.exit_code == 1, r.output
    assert "-: over the 1,000-byte limit" in r.stderr and "Traceback" not in r.output


def test_a_gpu_index_beyond_those_present_is_a_clear_error(monkeypatch):
    # `--device cuda:1` on a one-GPU machine was "invalid device ordinal" (exit 3) at the first
    # tensor moved, after the data had loaded.
    from vggcifar.runtime.devices import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(VggCifarError, match=r"no GPU 1 here \(PyTorch sees 1: cuda:0\)"):
        resolve_device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")


def test_model_card_is_never_a_link_a_fifo_or_a_huge_file(tmp_path):
    # The demo publishes the card beside a shipped manifest: a README.md linking to a secret
    # was shown on the page, and a FIFO hung the start.
    import os
    from types import SimpleNamespace

    from vggcifar.serving.demo import MAX_CARD_BYTES, model_card

    info = SimpleNamespace(format="shipped", path=str(tmp_path / "model.json"))
    card = tmp_path / "README.md"
    card.write_text("---\nmodel_name: vgg16-x\n---\n# The card\n")
    assert model_card(info) == ("vgg16-x", "# The card")
    secret = tmp_path / "secret.txt"
    secret.write_text("PRIVATE KEY")
    card.unlink()
    card.symlink_to(secret)
    assert model_card(info) == (None, None)
    card.unlink()
    os.mkfifo(card)
    assert model_card(info) == (None, None)  # returns at once instead of blocking
    card.unlink()
    card.write_bytes(b"x" * (MAX_CARD_BYTES + 1))
    assert model_card(info) == (None, None)
    card.write_bytes(b"\xff\xfe not utf-8")
    assert model_card(info) == (None, None)


def test_a_cache_folder_link_is_followed_only_when_it_is_ours(tmp_path):
    # `$VGGCIFAR_CACHE/onnx` planted as a link to a victim's group folder: private_dir said
    # True and made that folder 0755; exports were then written into it. A link of our own
    # (a cache pointed at scratch space) is followed.
    from vggcifar.io import private_dir

    theirs = tmp_path / "group-folder"
    theirs.mkdir()
    theirs.chmod(0o2775)
    link = tmp_path / "onnx"
    link.symlink_to(theirs)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.lchown(link, 65534, 65534)  # planted by another user
        assert private_dir(link) is False
        assert theirs.stat().st_mode & 0o7777 == 0o2775
        os.lchown(link, 0, 0)
        os.chown(theirs, 65534, 65534)  # our link, their folder
        assert private_dir(link) is False
        os.chown(theirs, 0, 0)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ours = tmp_path / "cache"
    ours.symlink_to(scratch)
    assert private_dir(ours) is True
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o775)
    assert private_dir(mine) is True and mine.stat().st_mode & 0o777 == 0o755


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_cache_file_another_user_left_is_not_read(tmp_path):
    from vggcifar.io import open_own_file

    f = tmp_path / "cached.onnx"
    f.write_bytes(b"planted")
    with open_own_file(f) as h:
        assert h.read() == b"planted"
    os.chown(f, 65534, 65534)
    with pytest.raises(OSError, match="belongs to another user"):
        open_own_file(f)


def test_the_distributed_timeout_variable_is_checked(monkeypatch):
    from vggcifar.training.distributed import dist_timeout_s

    monkeypatch.delenv("VGGCIFAR_DIST_TIMEOUT", raising=False)
    assert dist_timeout_s() == 300
    monkeypatch.setenv("VGGCIFAR_DIST_TIMEOUT", "45")
    assert dist_timeout_s() == 45
    for bad in ("abc", "nan", "1e30", "0", "-5"):
        monkeypatch.setenv("VGGCIFAR_DIST_TIMEOUT", bad)
        with pytest.raises(VggCifarError, match="VGGCIFAR_DIST_TIMEOUT"):
            dist_timeout_s()


def test_an_overloaded_server_answers_json(monkeypatch):
    # Beyond uvicorn's limit_concurrency its answer was text/plain "Service Unavailable",
    # which tritonclient and KServe's client cannot read as {"error": ...}.
    import socket
    import threading

    import httpx
    import uvicorn

    from vggcifar.serving import limits

    import importlib

    for name in ("httptools_impl", "h11_impl", "zttp_impl", "zttp_h2_impl"):  # restored after
        try:
            mod = importlib.import_module(f"uvicorn.protocols.http.{name}")
        except Exception:
            continue
        if hasattr(mod, "service_unavailable"):
            monkeypatch.setattr(mod, "service_unavailable", mod.service_unavailable)
    assert limits.answer_overload_in_json() >= 2

    async def app(scope, receive, send):  # never reached: every request is over the limit
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    for http in ("h11", "httptools"):
        sock = socket.socket()  # the server closes it when it stops
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, limit_concurrency=1, log_level="error",
                                               http=http, lifespan="off"))
        t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        t.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v2/health/ready"
        for _ in range(100):
            try:
                r = httpx.get(url, timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        server.should_exit = True
        t.join(10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1", http
        assert r.json() == {"error": limits.OVERLOAD_MESSAGE}


def test_an_explicit_gpu_index_under_torchrun_is_refused(monkeypatch):
    # each rank takes cuda:LOCAL_RANK; a --device cuda:3 was replaced without a word
    from vggcifar.training import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(VggCifarError, match="under torchrun each process uses the GPU of its "
                                            r"LOCAL_RANK \(this one cuda:1\)"):
        distributed.setup(torch.device("cuda:3"))
