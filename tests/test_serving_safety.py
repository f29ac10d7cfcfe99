"""Model and serving safety (issue 12): models checked against their own metadata, cached exports
verified, shipped manifests confined to their folder, strict JSON, exit codes, durable writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from test_serving import base_image, write_varied_checkpoint
from vggcifar.errors import VggCifarError
from vggcifar.serving import Predictor


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return write_varied_checkpoint(tmp_path_factory.mktemp("safety") / "best.pt")


def edited_checkpoint(src: Path, dst: Path, **changes) -> Path:
    """A copy of checkpoint ``src`` with top-level keys replaced (``preprocessing`` merged; the
    model options ``head``, ``width``, ``dropout`` set in ``model_kwargs``, format version 2)."""
    c = torch.load(src, weights_only=True)
    pre = changes.pop("preprocessing", None)
    if pre:
        c["preprocessing"] = {**c["preprocessing"], **pre}
    for k in ("head", "width", "dropout"):
        if k in changes:
            c["model_kwargs"] = {**c["model_kwargs"], k: changes.pop(k)}
    c.update(changes)
    torch.save(c, dst)
    return dst


def image_file(folder: Path) -> Path:
    path = folder / "img.png"
    base_image().save(path)
    return path


# ---- 7: models checked against their own metadata ---------------------------------------------


def test_checkpoint_class_names_must_match_outputs(ckpt, tmp_path):
    bad = edited_checkpoint(ckpt, tmp_path / "three.pt",
                            preprocessing={"class_names": ["a", "b", "c"]})
    for backend in ("torch", "onnx"):
        with pytest.raises(VggCifarError, match="3 class names for a model with 10 outputs"):
            Predictor(bad, backend=backend, device="cpu")


@pytest.mark.parametrize("changes, message", [
    ({"width": 40.0}, "width 40.0 outside"),
    ({"preprocessing": {"input_size": 20000}}, "input size 20000"),
    ({"num_classes": 10**7}, "num_classes 10000000 outside"),
    ({"arch": "resnet50"}, "unknown architecture"),
    ({"head": "attention"}, "unknown head"),
    ({"width": 0.5}, "weights do not match"),  # plausible, but the weights are width 0.25
])
def test_oversized_or_inconsistent_architecture_is_refused_before_allocating(
        changes, message, ckpt, tmp_path, monkeypatch):
    import vggcifar.checkpoint as checkpoint

    def no_build(*a, **k):
        raise AssertionError("the model was built before the checkpoint was checked")

    monkeypatch.setattr(checkpoint, "create_model", no_build)
    bad = edited_checkpoint(ckpt, tmp_path / "bad.pt", **changes)
    with pytest.raises(VggCifarError, match=message):
        checkpoint.load_checkpoint(bad)


def test_vgg_shapes_match_the_real_networks():
    from vggcifar.models import CONFIGS, create_model, vgg_shapes

    for arch in CONFIGS:
        for head in ("mlp", "linear"):
            for width in (1.0, 0.3):
                m = create_model(arch, num_classes=7, head=head, width=width)
                real = {k: tuple(v.shape) for k, v in m.state_dict().items()}
                assert vgg_shapes(arch, head, width, 7) == real, (arch, head, width)


@pytest.fixture(scope="module")
def onnx_file(ckpt, tmp_path_factory) -> Path:
    from vggcifar.export.cache import onnx_from_checkpoint

    return onnx_from_checkpoint(ckpt, tmp_path_factory.mktemp("onnx-safety"))


def with_metadata(src: Path, dst: Path, **values) -> Path:
    import onnx

    from vggcifar.runtime.contract import set_metadata

    proto = onnx.load(str(src))
    set_metadata(proto, {k: json.dumps(v) for k, v in values.items()})
    onnx.save(proto, str(dst))
    return dst


def test_onnx_outputs_must_match_class_names(ckpt, tmp_path):
    from vggcifar.export.cache import onnx_from_checkpoint

    three = edited_checkpoint(ckpt, tmp_path / "three.pt", num_classes=3,
                              preprocessing={"class_names": ["a", "b", "c"]})
    c = torch.load(three, weights_only=True)
    for k in ("classifier.0.weight", "classifier.0.bias"):
        c["state_dict"][k] = c["state_dict"][k][:3].clone()
    torch.save(c, three)
    exported = onnx_from_checkpoint(three, tmp_path)
    ten = with_metadata(exported, tmp_path / "ten-names.onnx",
                        class_names=[f"c{i}" for i in range(10)])
    with pytest.raises(VggCifarError, match="metadata names 10 classes"):
        Predictor(ten, device="cpu")


def test_onnx_input_shape_must_match_metadata(onnx_file, tmp_path):
    import warnings

    from vggcifar.runtime.contract import read_metadata, set_metadata

    small = tmp_path / "small.onnx"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, 16, 16),), str(small), dynamo=False,
                          input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}})
    import onnx

    proto = onnx.load(str(small))
    set_metadata(proto, read_metadata(onnx_file))  # says 32x32
    onnx.save(proto, str(small))
    with pytest.raises(VggCifarError, match=r"float \[N, 3, 32, 32\]"):
        Predictor(small, device="cpu")


# ---- 8: non-finite outputs ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_nan_weights_are_an_error_per_input_and_json_stays_strict(ckpt, tmp_path, backend):
    from vggcifar.serving.cli import main

    c = torch.load(ckpt, weights_only=True)
    c["state_dict"]["classifier.0.weight"][0, 0] = float("nan")
    torch.save(c, nan := tmp_path / "nan.pt")
    img = image_file(tmp_path)
    r = CliRunner().invoke(main, [str(img), "--model", str(nan), "--json", "--backend", backend])
    assert r.exit_code == 1, r.output
    rows = [json.loads(ln, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
            for ln in r.stdout.splitlines()]
    assert len(rows) == 1 and "not finite" in rows[0]["error"] and "label" not in rows[0]
    assert "nan%" not in r.output
    with pytest.raises(VggCifarError, match="not finite"):
        Predictor(nan, backend=backend, device="cpu").predict(img)


# ---- 6: cached exports -------------------------------------------------------------------------


def cache_files(stem: str) -> list[Path]:
    from vggcifar.export.cache import onnx_cache_dir

    return sorted(onnx_cache_dir().glob(f"{stem}-*.onnx"))


@pytest.fixture
def shipped_copy(ckpt, tmp_path) -> Path:
    from vggcifar.shipped import pack_shipped

    return pack_shipped(ckpt, tmp_path / "weights", name="safety-shipped", part_bytes=256 * 1024)


def test_flipped_byte_in_a_shipped_part_is_refused_by_every_backend(shipped_copy, tmp_path):
    img = image_file(tmp_path)
    Predictor(shipped_copy, backend="onnx", device="cpu").predict(img)  # builds the cache
    assert cache_files("safety-shipped")
    part = shipped_copy.parent / json.loads(shipped_copy.read_text())["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[1000] ^= 0x01
    part.write_bytes(bytes(data))
    for backend in ("auto", "onnx", "torch"):
        with pytest.raises(VggCifarError, match="sha256 mismatch"):
            Predictor(shipped_copy, backend=backend, device="cpu")


def reference(ckpt, img) -> np.ndarray:
    return np.array([p for _, p in Predictor(ckpt, backend="torch", device="cpu")
                     .predict(img, top_k=10).top_k])


def test_foreign_file_at_the_cache_name_is_not_used(ckpt, tmp_path):
    from vggcifar.export.cache import cache_sidecar, onnx_from_checkpoint

    img = image_file(tmp_path)
    model = shutil.copy(ckpt, tmp_path / "mine.pt")
    Predictor(model, backend="onnx", device="cpu")
    (cached,) = cache_files("mine")
    # Another model's valid export, dropped at the cache's name: first alone, then with a
    # sidecar forged to match its bytes. Neither may stand in for the checkpoint.
    other = edited_checkpoint(ckpt, tmp_path / "other.pt")
    c = torch.load(other, weights_only=True)
    c["state_dict"]["classifier.0.weight"].mul_(-1)
    torch.save(c, other)
    foreign = onnx_from_checkpoint(other, tmp_path).read_bytes()
    want = reference(model, img)
    for forge_sidecar in (False, True):
        cached.write_bytes(foreign)
        if forge_sidecar:
            import hashlib

            side = json.loads(cache_sidecar(cached).read_text())
            side.update(onnx_sha256=hashlib.sha256(foreign).hexdigest(), bytes=len(foreign))
            cache_sidecar(cached).write_text(json.dumps(side))
        p = Predictor(model, backend="onnx", device="cpu")
        got = np.array([q for _, q in p.predict(img, top_k=10).top_k])
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert cached.read_bytes() != foreign  # rebuilt


def test_truncated_cache_is_rebuilt(ckpt, tmp_path):
    img = image_file(tmp_path)
    model = shutil.copy(ckpt, tmp_path / "cut.pt")
    Predictor(model, backend="onnx", device="cpu")
    (cached,) = cache_files("cut")
    size = cached.stat().st_size
    cached.write_bytes(cached.read_bytes()[: size // 2])
    p = Predictor(model, backend="onnx", device="cpu")
    assert p.backend.name == "onnx" and cached.stat().st_size == size
    got = np.array([q for _, q in p.predict(img, top_k=10).top_k])
    np.testing.assert_allclose(got, reference(model, img), atol=1e-4)


def test_killed_build_leftovers_are_swept(ckpt, tmp_path):
    from vggcifar.export.cache import cached_onnx, onnx_cache_dir

    onnx_cache_dir().mkdir(parents=True, exist_ok=True)
    stale = onnx_cache_dir() / ".build-killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"\0" * 1000)
    os.utime(stale, (0, 0))
    cached, data = cached_onnx(shutil.copy(ckpt, tmp_path / "sweep.pt"), rebuild=True)
    assert not stale.exists() and cached.read_bytes() == data
    assert not list(onnx_cache_dir().glob(".*.tmp"))


# ---- 9: shipped manifest -------------------------------------------------------------------------


def edit_manifest(manifest: Path, fn) -> Path:
    m = json.loads(manifest.read_text())
    fn(m)
    manifest.write_text(json.dumps(m))
    return manifest


@pytest.mark.parametrize("name", ["../outside.part", "/etc/hostname", "sub/part", "..\\x", "."])
def test_manifest_parts_must_be_plain_names_in_its_folder(shipped_copy, name):
    import hashlib

    from vggcifar import load_checkpoint

    outside = shipped_copy.parent.parent / "outside.part"
    first = shipped_copy.parent / json.loads(shipped_copy.read_text())["parts"][0]["file"]
    outside.write_bytes(first.read_bytes())  # a real part, with the right digest, outside

    def point_outside(m):
        m["parts"][0].update(file=name, sha256=hashlib.sha256(outside.read_bytes()).hexdigest())

    edit_manifest(shipped_copy, point_outside)
    with pytest.raises(VggCifarError, match="not a plain file name"):
        load_checkpoint(shipped_copy)


@pytest.mark.parametrize("breakage", [
    lambda m: m.pop("parts"), lambda m: m.update(parts="part00"), lambda m: m.update(parts=[1]),
    lambda m: m["parts"][0].pop("file"), lambda m: m["parts"][0].pop("sha256"),
    lambda m: m["parts"][0].update(bytes="12"), lambda m: m.pop("sha256"),
    lambda m: m.update(bytes=2**40),
])
def test_malformed_manifest_is_a_clear_error(shipped_copy, breakage):
    from vggcifar import load_checkpoint

    edit_manifest(shipped_copy, breakage)
    with pytest.raises(VggCifarError, match="manifest"):
        load_checkpoint(shipped_copy)


def test_part_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    import hashlib

    from vggcifar import load_checkpoint
    from vggcifar.shipped import SHIPPED_FORMAT

    # Every digest matches, but torch.load refuses the bytes.
    blob = b"\x80\x02garbage that torch cannot load"
    (tmp_path / "m.pt.part00").write_bytes(blob)
    sha = hashlib.sha256(blob).hexdigest()
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"format": SHIPPED_FORMAT, "sha256": sha, "bytes": len(blob),
                                    "parts": [{"file": "m.pt.part00", "bytes": len(blob),
                                               "sha256": sha}]}))
    with pytest.raises(VggCifarError, match="not a readable checkpoint") as e:
        load_checkpoint(manifest)
    assert "weights_only" not in str(e.value)


# ---- 10: smaller ones ------------------------------------------------------------------------


def test_corrupt_checkpoint_error_does_not_advise_unsafe_loading(tmp_path):
    from vggcifar.checkpoint_file import read_checkpoint

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"format": "vggcifar-checkpoint", "x": RunsCode()}, code := tmp_path / "code.pt")
    text = tmp_path / "text.pt"
    text.write_text("nope")
    for path in (code, text):
        with pytest.raises(VggCifarError, match="not a readable vggcifar checkpoint") as e:
            read_checkpoint(path)
        msg = str(e.value)
        assert "weights_only" not in msg and "False" not in msg and "\n" not in msg, msg
    with pytest.raises(VggCifarError, match="GLOBAL"):
        read_checkpoint(code)  # the loader's actual finding is kept


def test_exit_codes_usage_2_internal_3():
    from vggcifar.cli_common import user_errors

    @click.command()
    @click.argument("what")
    @user_errors
    def cmd(what):
        if what == "user":
            raise VggCifarError("bad input")
        if what == "bug":
            raise KeyError("oops")
        if what == "usage":
            raise click.BadParameter("nope")

    runner = CliRunner()
    r = runner.invoke(cmd, ["user"])
    assert r.exit_code == 2 and "error: bad input" in r.stderr
    r = runner.invoke(cmd, ["bug"])
    assert r.exit_code == 3
    assert "Traceback" in r.stderr and "KeyError" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("internal error") and "please report" in last
    assert runner.invoke(cmd, ["usage"]).exit_code == 2
    assert runner.invoke(cmd, ["fine"]).exit_code == 0


def test_predict_help_documents_exit_codes():
    from vggcifar.serving.cli import main

    out = CliRunner().invoke(main, ["--help"]).output
    assert "Exit codes" in out and "internal error" in out
    for code in ("0 ", "1 ", "2 ", "3 "):
        assert f"\n    {code}" in out


def test_unreadable_subfolder_is_a_failed_input(ckpt, tmp_path, monkeypatch):
    from vggcifar.serving.cli import main

    top = tmp_path / "photos"
    (top / "locked").mkdir(parents=True)
    image_file(top)
    base_image().save(top / "locked" / "hidden.png")
    real_scandir = os.scandir

    def scandir(path="."):  # tests run as root, where chmod 000 does not stop reading
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = CliRunner().invoke(main, [str(top), "--model", str(ckpt), "--backend", "torch"])
    assert r.exit_code == 1, r.output
    assert "locked" in r.stderr and "Permission denied" in r.stderr
    assert "1 predicted, 1 failed" in r.stderr


def test_atomic_write_fsyncs_and_leaves_the_umask_alone(tmp_path, monkeypatch):
    import vggcifar.io as vio

    umask = os.umask(0o027)
    os.umask(umask)
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def no_umask(*a):
        raise AssertionError("os.umask is process-wide: not thread-safe")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "umask", no_umask)
    target = tmp_path / "out" / "file.txt"
    vio.atomic_write(target, lambda t: Path(t).write_text("hello"))
    assert target.read_text() == "hello"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert any(s.endswith(".tmp") for s in synced)  # the data, before the rename
    assert str(target.parent) in synced  # the folder entry, after it

    def crash(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        vio.atomic_write(target, crash)
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temporary left


# ---- crafted ONNX files: the graph and its metadata -----------------------------------------
def _tiny_onnx(path: Path, onnx_file: Path, batch: int | None = None, rows_one: bool = False,
               **meta) -> Path:
    """A small 32x32 graph carrying ``onnx_file``'s metadata (updated with ``meta``): a fixed
    batch of ``batch`` images, or one that answers a single row whatever the batch."""
    import warnings

    import onnx

    from vggcifar.runtime.contract import read_metadata, set_metadata

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y.sum(0, keepdim=True) if rows_one else y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net(), (torch.zeros(batch or 2, 3, 32, 32),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes=None if batch else {"image": {0: "n"}})
    proto = onnx.load(str(path))
    m = read_metadata(onnx_file)
    m.update({k: json.dumps(v) for k, v in meta.items()})
    set_metadata(proto, m)
    onnx.save(proto, str(path))
    return path


def test_crafted_onnx_graphs_are_refused(onnx_file, tmp_path):
    from vggcifar.runtime.contract import ModelFileError

    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    one_row = _tiny_onnx(tmp_path / "one-row.onnx", onnx_file, rows_one=True)
    p = Predictor(one_row, backend="onnx", device="cpu", warmup=False)
    with pytest.raises(ModelFileError, match="gave 1 rows of outputs for 3 images"):
        p.backend.outputs(x)  # answers were paired with the wrong images (or a traceback)
    huge = _tiny_onnx(tmp_path / "huge-batch.onnx", onnx_file, batch=1025)
    with pytest.raises(VggCifarError, match="batches of exactly 1025 images"):
        Predictor(huge, backend="onnx", device="cpu")  # every call padded to 1025 images
    fixed = _tiny_onnx(tmp_path / "fixed.onnx", onnx_file, batch=4)
    assert Predictor(fixed, backend="onnx", device="cpu").backend.outputs(x)[0].shape == (3, 10)


def test_crafted_onnx_metadata_is_refused_or_shown_as_unknown(onnx_file, tmp_path):
    for names in (["\x1b]0;pwned\x07"] + [f"c{i}" for i in range(9)],
                  ["a\nb"] + [f"c{i}" for i in range(9)], ["x" * 201] + [f"c{i}" for i in range(9)],
                  ["c\x9b31m"] + [f"c{i}" for i in range(9)]):
        bad = _tiny_onnx(tmp_path / "names.onnx", onnx_file, class_names=names)
        with pytest.raises(VggCifarError, match="class name"):
            Predictor(bad, backend="onnx", device="cpu")
    odd = _tiny_onnx(tmp_path / "odd.onnx", onnx_file, arch="[click](http://evil.example)",
                     precision="![](http://track.example/p.png)", test_accuracy=5.0,
                     test_accuracy_one_view=2.5)
    info = Predictor(odd, backend="onnx", device="cpu").info
    assert info.arch is None and info.precision is None
    assert info.test_accuracy is None and info.test_accuracy_tta is None


def test_served_accuracy_keeps_only_fractions():
    from vggcifar.serving.backends.base import served_accuracy

    for bad in (float("inf"), float("nan"), 5.0, -0.1, 10**400, True, "0.9"):
        assert served_accuracy({"test_accuracy_one_view": bad}) == (None, None)
    assert served_accuracy({"test_accuracy_one_view": 0.9}) == (0.9, None)


def test_demo_markdown_shows_model_strings_as_text():
    from vggcifar.serving.demo import md_text

    assert md_text("[click](http://evil) ![x](http://t/p.png)") == (
        r"\[click\]\(http\://evil\) \!\[x\]\(http\://t/p\.png\)")
    assert md_text("http://2130706433/x me@evil.example") == (
        r"http\://2130706433/x me\@evil\.example")  # no autolink, no mail link
    assert md_text("vgg16") == "vgg16"


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_an_onnx_file_with_external_data_is_refused(onnx_file, tmp_path, backend):
    # Its "weights" may name /etc/passwd, ../.. or a link; whether the runtime refuses that
    # depends on its version. vggcifar's exports are one file.
    import onnx

    pytest.importorskip("openvino") if backend == "openvino" else None
    small = _tiny_onnx(tmp_path / "w.onnx", onnx_file)
    proto = onnx.load(str(small))
    w = next(t for t in proto.graph.initializer if len(t.raw_data) or len(t.float_data))
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="/etc/passwd")
    onnx.save(proto, str(tmp_path / "ext.onnx"))
    with pytest.raises(VggCifarError, match="keeps tensor .* in an external file"):
        Predictor(tmp_path / "ext.onnx", backend=backend, device="cpu")
    # the same in a Constant(sparse_value=...) node's attribute
    proto = onnx.load(str(small))
    values = onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.0])
    values.ClearField("float_data")
    values.data_location = onnx.TensorProto.EXTERNAL
    values.external_data.add(key="location", value="../../etc/passwd")
    sparse = onnx.helper.make_sparse_tensor(
        values, onnx.helper.make_tensor("i", onnx.TensorProto.INT64, [1], [0]), [4])
    proto.graph.node.append(onnx.helper.make_node("Constant", [], ["unused"],
                                                  sparse_value=sparse))
    onnx.save(proto, str(tmp_path / "sparse.onnx"))
    with pytest.raises(VggCifarError, match="keeps tensor 'v' in an external file"):
        Predictor(tmp_path / "sparse.onnx", backend=backend, device="cpu")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk" * 10)
    with pytest.raises(VggCifarError, match="junk.onnx is not a loadable ONNX model"):
        Predictor(tmp_path / "junk.onnx", backend=backend, device="cpu")
