"""`vgg-serve`'s Open Inference Protocol (KServe v2 REST) routes: ``tritonclient.http`` against a
real uvicorn server on 127.0.0.1, the protocol's error answers, keep-alive latency, and a fuzz test
of the /v2 endpoints."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as tc
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from test_http_api import png_bytes, wait_ready
from vggcifar.export.triton import triton_model_name
from vggcifar.serving import Predictor, load_pixels
from vggcifar.serving.http_api import create_app
from vggcifar.serving.inference_protocol import HEADER_LENGTH, ProtocolError, parse_infer

N_IMAGES = 16


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, backend="torch", device="cpu", warmup=False)


@pytest.fixture(scope="module")
def model_name(tiny_checkpoint) -> str:
    return triton_model_name(tiny_checkpoint)  # what `vgg-export --triton` would name it


@pytest.fixture(scope="module")
def server(predictor):
    """``host:port`` of a real uvicorn server (httptools, uvloop) running the app in a thread."""
    import uvicorn

    app = create_app(predictor, max_batch=8, max_wait_ms=5, queue_size=32, demo=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", http="httptools",
                            loop="uvloop")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    host = f"127.0.0.1:{sock.getsockname()[1]}"
    with httpx.Client(base_url=f"http://{host}") as c:
        deadline = time.time() + 60
        while True:
            try:
                wait_ready(c, timeout=60)
                break
            except httpx.TransportError:  # not listening yet
                assert time.time() < deadline
                time.sleep(0.05)
    yield host
    srv.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope="module")
def triton(server):
    with tc.InferenceServerClient(server) as client:
        yield client


@pytest.fixture(scope="module")
def images():
    """``(png bytes, [N, 3, 32, 32] uint8 pixels)`` of the same images."""
    datas = [png_bytes(s, (32 + s, 32)) for s in range(N_IMAGES)]
    pixels = np.stack([load_pixels(d, 32)[0].numpy() for d in datas])
    return datas, pixels


def v1_labels(server, datas) -> list[str]:
    files = [("files", (f"{i}.png", d, "image/png")) for i, d in enumerate(datas)]
    r = httpx.post(f"http://{server}/v1/predict", files=files, timeout=60)
    assert r.status_code == 200, r.text
    return [x["label"] for x in r.json()["results"]]


# ---- tritonclient ----------------------------------------------------------------------------


def test_health_and_metadata(triton, model_name):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(model_name)
    assert triton.is_model_ready(model_name, "1")
    assert not triton.is_model_ready("no-such-model")
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata(model_name)
    assert meta["name"] == model_name and meta["versions"] == ["1"]
    (inp,) = meta["inputs"]
    assert inp == {"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
    outs = {o["name"]: o for o in meta["outputs"]}
    assert outs["probabilities"]["datatype"] == "FP32"
    assert outs["probabilities"]["shape"] == [-1, 10] and outs["logits"]["shape"] == [-1, 10]
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("no-such-model")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_v1_predict(triton, server, model_name, images, predictor, binary):
    datas, pixels = images
    x = pixels.astype(np.float32) / 255  # the same images, as the model contract's floats
    inp = tc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [tc.InferRequestedOutput(o, binary_data=binary)
               for o in ("probabilities", "logits")]
    res = triton.infer(model_name, [inp], outputs=outputs)
    probs, logits = res.as_numpy("probabilities"), res.as_numpy("logits")
    assert probs.shape == (N_IMAGES, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    want = predictor.probabilities(pixels)
    assert np.allclose(probs, want, atol=1e-5)
    z = logits / predictor.info.temperature  # probabilities = softmax(logits / T)
    z -= z.max(1, keepdims=True)
    assert np.allclose(np.exp(z) / np.exp(z).sum(1, keepdims=True), probs, atol=1e-5)
    labels = [predictor.class_names[i] for i in probs.argmax(1)]
    assert labels == v1_labels(server, datas)


def test_infer_defaults_to_binary_outputs(triton, model_name, images):
    x = images[1][:2].astype(np.float32) / 255
    inp = tc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = triton.infer(model_name, [inp])  # no outputs named: all, binary (binary_data_output)
    assert res.as_numpy("probabilities").shape == (2, 10)
    assert res.as_numpy("logits").shape == (2, 10)
    assert all("binary_data_size" in o["parameters"] for o in res.get_response()["outputs"])


def test_wrong_shape_and_datatype_are_400(triton, model_name):
    for shape, dtype, arr in (([2, 3, 16, 16], "FP32", np.zeros((2, 3, 16, 16), np.float32)),
                              ([1, 3, 32, 32], "FP64", np.zeros((1, 3, 32, 32), np.float64))):
        inp = tc.InferInput("image", shape, dtype)
        inp.set_data_from_numpy(arr)
        with pytest.raises(InferenceServerException) as e:
            triton.infer(model_name, [inp])
        assert e.value.status() == "400", e.value
    inp = tc.InferInput("image", [1, 3, 32, 32], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException) as e:
        triton.infer("no-such-model", [inp])
    assert e.value.status() == "404"


def test_model_config_for_perf_analyzer(triton, model_name):
    # perf_analyzer and model_analyzer stop at once without it ("failed to get model config")
    assert "model_configuration" in triton.get_server_metadata()["extensions"]
    for version in ("", "1"):
        cfg = triton.get_model_config(model_name, version)
        assert cfg["name"] == model_name and cfg["max_batch_size"] == 32
        assert cfg["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [3, 32, 32]}]
        assert {o["name"]: o["dims"] for o in cfg["output"]} == {"probabilities": [10],
                                                                  "logits": [10]}
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_config("no-such-model")
    assert e.value.status() == "404"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(triton, model_name, images, predictor, algorithm):
    x = images[1][:3].astype(np.float32) / 255
    inp = tc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = triton.infer(model_name, [inp], request_compression_algorithm=algorithm)
    assert np.allclose(res.as_numpy("probabilities"), predictor.probabilities(images[1][:3]),
                       atol=1e-5)


def test_compressed_bodies_are_bounded_and_named(server, model_name):
    import gzip
    import zlib

    url = infer_url(server, model_name)
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")  # 64 MB of JSON in 64 kB
    raw = zlib.compressobj(wbits=-15)
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "data": [0.5] * 3072}]}).encode()
    raw_deflate = raw.compress(body) + raw.flush()
    with httpx.Client(timeout=30) as c:
        r = c.post(url, content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "once decompressed" in r.json()["error"]
        r = c.post(url, content=b"x", headers={"Content-Encoding": "br"})
        assert r.status_code == 415 and "Content-Encoding 'br'" in r.json()["error"]
        r = c.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400 and "cannot be decompressed" in r.json()["error"]
        r = c.post(url, content=gzip.compress(body)[:-20], headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400, r.text
        r = c.post(url, content=raw_deflate, headers={"Content-Encoding": "deflate"})
        assert r.status_code == 200, r.text


def test_an_inflated_body_obeys_the_request_limit(predictor, model_name):
    # a 25 kB gzip body stood for 24 MB whatever --max-request-size said
    import gzip

    app = create_app(predictor, max_batch=8, max_wait_ms=5, queue_size=32, demo=False,
                     max_file_mb=0.01, max_request_mb=0.01)  # 10 kB
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                   "data": [0.5] * 3072}]}).encode()  # about 15 kB
    with TestClient(app) as c:
        wait_ready(c, timeout=60)
        r = c.post(f"/v2/models/{model_name}/infer", content=gzip.compress(body),
                   headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "once decompressed" in r.json()["error"]


def test_health_bodies_head_and_unrouted_paths(server, model_name):
    base = f"http://{server}"
    with httpx.Client(base_url=base, timeout=30) as c:
        # KServe's v2 client reads these bodies; tritonclient reads the status
        assert c.get("/v2/health/live").json() == {"live": True}
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/").json()["name"] == "vggcifar"
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{model_name}/ready"):
            assert c.head(path).status_code == 200, path  # load balancers' probes
        r = c.get("/v2/repository/index")
        assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
        r = c.post("/v2/health/live")
        assert r.status_code == 405 and r.json()["error"] and "GET" in r.headers["allow"]
        r = c.get(f"/v2/models/{model_name}/infer")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        r = c.post("/v2")
        assert r.status_code == 405 and r.json()["error"]
        r = c.get("/v2/health/live/")  # a trailing slash: redirected, as before
        assert r.status_code == 307 and r.headers["location"].endswith("/v2/health/live")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(triton, model_name, images, predictor, binary):
    # tritonclient's class_count: top-k "value:index:label" strings, as tritonserver answers
    # for the repository vgg-export --triton writes (labels.txt)
    x = images[1][:4].astype(np.float32) / 255
    inp = tc.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = tc.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)
    got = triton.infer(model_name, [inp], outputs=[out]).as_numpy("probabilities")
    assert got.shape == (4, 3)
    probs = predictor.probabilities(images[1][:4])
    for row, p in zip(got, probs):
        fields = [(b if isinstance(b, bytes) else b.encode()).decode().split(":") for b in row]
        idx = [int(f[1]) for f in fields]
        assert idx == list(np.argsort(-p, kind="stable")[:3])
        assert [f[2] for f in fields] == [predictor.class_names[i] for i in idx]
        assert np.allclose([float(f[0]) for f in fields], p[idx], atol=1e-5)


def test_empty_outputs_means_all(server, model_name):
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
                        "data": [0.5] * 3072}], "outputs": []}
    r = httpx.post(infer_url(server, model_name), json=body, timeout=30)
    assert r.status_code == 200
    assert {o["name"] for o in r.json()["outputs"]} == {"logits", "probabilities"}


def test_live_fails_after_a_failed_warm_up(predictor):
    # the model never loads after a failed warm-up: a liveness probe must see it and restart
    app = create_app(predictor, max_batch=8, max_wait_ms=5, queue_size=32, demo=False)
    state = app.state.vgg
    state.status, state.error = "failed", "CUDA init failed"
    client = TestClient(app)  # no lifespan: no warm-up runs
    r = client.get("/v2/health/live")
    assert r.status_code == 503 and "CUDA init failed" in r.json()["error"]
    assert client.get("/v2/health/ready").status_code == 503


# ---- the protocol's answers, raw --------------------------------------------------------------


def infer_url(server, name) -> str:
    return f"http://{server}/v2/models/{name}/infer"


def test_bad_requests_get_a_json_error(server, model_name):
    url = infer_url(server, model_name)
    good = {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32]}
    head = json.dumps({"inputs": [{**good, "parameters": {"binary_data_size": 12288}}]}).encode()
    cases = [
        (b"{not json", {}, 400),
        (b"[" * 100_000, {}, 400),                                   # deeper than json allows
        (b"[1, 2]", {}, 400),
        (json.dumps({"inputs": [{**good, "data": [0.5] * 10}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**good, "data": ["x"] * 3072}]}).encode(), {}, 400),
        (head + b"\0" * 100, {HEADER_LENGTH: str(len(head))}, 400),   # short binary tensor
        (head, {HEADER_LENGTH: str(len(head) + 5)}, 400),             # header past the body
        (head, {HEADER_LENGTH: "-3"}, 400),
        (json.dumps({"inputs": [{**good, "shape": [33, 3, 32, 32], "data": [0] * 3}]}).encode(),
         {}, 413),                                                    # over the queue size
        (json.dumps({"inputs": [{**good, "data": [0.5] * 3072}],
                     "outputs": [{"name": "nope"}]}).encode(), {}, 400),
        (json.dumps({"inputs": [{**good, "data": [0.5] * 3072}], "outputs": [
            {"name": "logits", "parameters": {"classification": -2}}]}).encode(), {}, 400),
    ]
    with httpx.Client(timeout=30) as c:
        for body, headers, status in cases:
            r = c.post(url, content=body, headers=headers)
            assert r.status_code == status, (body[:80], r.text)
            assert r.json()["error"], r.text
        r = c.post(infer_url(server, "other"), content=b"{}")
        assert r.status_code == 404 and "unknown model" in r.json()["error"]
        r = c.get(f"http://{server}/v2/models/{model_name}/versions/7")
        assert r.status_code == 404


def test_header_length_must_be_ascii_digits():
    with pytest.raises(ProtocolError) as e:
        parse_infer(b"{}", "\u00b2", 32, 8)  # '²'.isdigit() is true, int('²') fails
    assert e.value.status == 400


@pytest.mark.parametrize("value", ["0.5", True, None, {"v": 0.5}], ids=["string", "bool", "null", "object"])
def test_fp32_data_must_be_json_numbers(value):
    # numpy would read "0.5" and true as numbers: FP32 data must already be numbers, as in Triton
    good = {"name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32]}
    body = json.dumps({"inputs": [{**good, "data": [value] * 3072}]}).encode()
    with pytest.raises(ProtocolError) as e:
        parse_infer(body, None, 32, 8)
    assert e.value.status == 400 and "must be numbers" in str(e.value)
    ok = json.dumps({"inputs": [{**good, "data": [[0.5] * 1024] * 3}]}).encode()  # nested: fine
    assert parse_infer(ok, None, 32, 8)[0].shape == (1, 3, 32, 32)


def test_json_outputs_as_asked(server, model_name):
    body = {"id": "req-1", "inputs": [{"name": "image", "datatype": "FP32",
                                       "shape": [1, 3, 32, 32], "data": [[0.5] * 3072]}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}
    r = httpx.post(infer_url(server, model_name), json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert HEADER_LENGTH.lower() not in r.headers
    out = r.json()
    assert out["id"] == "req-1" and out["model_name"] == model_name
    (o,) = out["outputs"]
    assert o["name"] == "probabilities" and o["shape"] == [1, 10] and len(o["data"]) == 10


def test_keep_alive_answers_without_nagle_stalls(server):
    """A delayed-ACK/Nagle stall costs ~40 ms per response on a kept-alive connection."""
    host, port = server.split(":")
    with socket.create_connection((host, int(port))) as s:
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(4096)
            head, _, body = buf.partition(b"\r\n\r\n")
            length = int(next(ln.split(b":")[1] for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length:")))
            while len(body) < length:  # the {"ready": true} body
                body += s.recv(4096)
            times.append(time.perf_counter() - t0)
            assert head.startswith(b"HTTP/1.1 200") and body == b'{"ready":true}'
    assert statistics.median(times) < 0.025, times


# ---- fuzz -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12)
tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["image", "x"]), "datatype": st.sampled_from(["FP32", "FP16", 3]),
     "shape": st.one_of(st.lists(st.integers(-2, 40), max_size=5),
                        st.just([1, 3, 32, 32]), json_values)},
    optional={"data": st.one_of(json_values, st.just([0.25] * 3072)),
              "parameters": st.one_of(json_values, st.fixed_dictionaries(
                  {"binary_data_size": st.one_of(st.integers(-1, 20000), st.just(12288),
                                                 json_values)}))})
requests_ = st.one_of(json_values, st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, max_size=2), json_values)},
    optional={"outputs": st.one_of(json_values, st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(["logits", "probabilities", "z"])},
        optional={"parameters": json_values}), max_size=3)),
        "parameters": json_values, "id": json_values}))


@pytest.fixture(scope="module")
def fuzz_client(predictor):
    app = create_app(predictor, max_batch=8, max_wait_ms=1, queue_size=32, demo=False)
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests_, tail=st.binary(max_size=64) | st.just(b"\0" * 12288),
       header=st.one_of(st.none(), st.integers(-3, 400).map(str),
                        st.text(alphabet="0123456789 -+x.", max_size=6)),
       name=st.sampled_from(["tiny", "x", "a b"]))
def test_fuzz_v2_never_500(fuzz_client, model_name, req, tail, header, name):
    head = json.dumps(req).encode()
    headers = {} if header is None else {HEADER_LENGTH: header}
    model = model_name if name == "tiny" else name
    r = fuzz_client.post(f"/v2/models/{model}/infer", content=head + tail, headers=headers)
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text[:300])
    if r.status_code != 200:
        assert isinstance(r.json()["error"], str)
    r = fuzz_client.get(f"/v2/models/{model}")
    assert r.status_code in (200, 404)
