"""Issue 21: property test of `vgg-serve`'s request parsing. Random bodies, content types,
headers, query strings and multipart shapes sent to ``/v1/predict`` and the Open Inference
Protocol's infer route never give a 5xx other than 503 (busy), nor an unhandled exception, and
every refusal is a JSON error."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from vggcifar.serving import Predictor
from vggcifar.serving.http_api import create_app


def _png(size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
CONTENTS = st.one_of(st.just(PNG), st.just(PNG[:40]), st.binary(max_size=300),
                     st.just(b""), st.just(PNG + b"\0" * 60_000))
TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@st.composite
def multipart(draw) -> tuple[bytes, str]:
    """``(body, boundary)``: random parts, sometimes malformed on purpose."""
    boundary = draw(st.sampled_from(["b0undary", "x" * 70, "a b", ""]))
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["files", "other", "", 'fi"les']) | TEXT)
        head = f'Content-Disposition: form-data; name="{name}"'
        if draw(st.booleans()):
            head += f'; filename="{draw(TEXT)}"'
        if draw(st.booleans()):
            head += f"\r\nContent-Type: {draw(st.sampled_from(['image/png', 'text/plain']))}"
        out += f"--{boundary}\r\n{head}\r\n\r\n".encode("latin-1") + draw(CONTENTS) + b"\r\n"
    if draw(st.booleans()):
        out += f"--{boundary}--\r\n".encode()
    return out + draw(st.binary(max_size=40)), boundary


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40)
                           | st.floats(allow_nan=False) | TEXT,
                           lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(TEXT, kids, max_size=4), max_leaves=20)


@st.composite
def v2_request(draw) -> bytes:
    """An Open Inference Protocol infer body, shaped right or wrong."""
    shape = draw(st.lists(st.integers(-1, 40), max_size=5))
    n = draw(st.integers(0, 64))
    tensor = {"name": draw(st.sampled_from(["input", "x", ""])), "shape": shape,
              "datatype": draw(st.sampled_from(["UINT8", "FP32", "BYTES", "INT64", "bogus"])),
              "data": draw(st.lists(st.integers(-300, 300) | st.floats(allow_nan=False),
                                    min_size=n, max_size=n))}
    body = {"inputs": draw(st.sampled_from([[tensor], [], [tensor, tensor], tensor]))}
    if draw(st.booleans()):
        body["parameters"] = draw(JSON_VALUES)
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    predictor = Predictor(tiny_checkpoint, backend="torch", device="cpu", warmup=False)
    app = create_app(predictor, max_batch=8, max_wait_ms=1, queue_size=64, max_file_mb=0.05,
                     max_files=4, demo=False)
    with TestClient(app, raise_server_exceptions=True) as c:
        for _ in range(600):
            if c.get("/healthz").status_code == 200:
                break
        yield c


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_random_requests_never_give_a_server_error(client, data):
    route = data.draw(st.sampled_from(["/v1/predict", "/v2/models/{}/infer"]))
    if "{}" in route:
        name = client.app.state.vgg.model_name if data.draw(st.booleans()) else data.draw(TEXT)
        route = route.format(name or "m")
    kind = data.draw(st.sampled_from(["multipart", "raw", "json", "v2", "bytes"]))
    headers = {}
    if kind == "multipart":
        body, boundary = data.draw(multipart())
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif kind == "raw":
        body = data.draw(CONTENTS)
        headers["Content-Type"] = data.draw(st.sampled_from(["image/png", "image/x-bogus",
                                                             "application/octet-stream"]))
    elif kind == "json":
        body = json.dumps(data.draw(JSON_VALUES)).encode()
        headers["Content-Type"] = "application/json"
    elif kind == "v2":
        body = data.draw(v2_request())
        headers["Content-Type"] = data.draw(st.sampled_from(["application/json", ""]))
    else:
        body = data.draw(st.binary(max_size=500))
        headers["Content-Type"] = data.draw(TEXT)
    for key, value in data.draw(st.dictionaries(
            st.sampled_from(["Accept", "X-Junk", "Inference-Header-Content-Length",
                             "Content-Encoding", "Transfer-Encoding-Junk"]), TEXT, max_size=3)
            ).items():
        headers[key] = value
    query = data.draw(st.sampled_from(["", "?top_k=2", "?top_k=0", "?top_k=abc",
                                       "?filename=%00x"]) | TEXT.map(lambda t: "?" + t))
    r = client.post(route + query, content=body, headers=headers)
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        json.loads(r.content)
