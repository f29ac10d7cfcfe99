"""Predictor, backends and `vgg-predict`: every image kind, torch/onnx parity, bad inputs, CLI."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vggcifar.errors import VggCifarError
from vggcifar.images import pil_to_uint8
from vggcifar.serving import Predictor, load_pixels
from vggcifar.runtime.onnx import device_session
from vggcifar.runtime.openvino import openvino_status
from vggcifar.runtime.tensorrt import tensorrt_status
from vggcifar.serving.backends import create_backend
from vggcifar.serving.cli import main as predict_cli
from vggcifar.serving.files import expand_inputs


# What ``auto`` runs an ONNX graph (or a checkpoint's export) on, on a CPU.
AUTO_CPU = "openvino" if openvino_status()[0] else "onnx"

# ---- fixtures and image makers ---------------------------------------------------------------


def write_varied_checkpoint(path: Path, arch: str = "vgg11", width: float = 0.25) -> Path:
    """A small untrained VGG whose predictions differ clearly between images.

    Freshly initialised networks give near-uniform probabilities (and the few-step tiny training
    run can too), which would make parity and "same answer" checks vacuous. BatchNorm statistics
    are set from synthetic images and the last layer is scaled up, so top-1 labels vary and
    probabilities are far from uniform.
    """
    from vggcifar.checkpoint import make_checkpoint, save_checkpoint
    from vggcifar.models import create_model
    from vggcifar.preprocessing import Preprocessing, uint8_to_input
    from vggcifar.testing import synthetic_images

    torch.manual_seed(0)
    pre = Preprocessing()
    model = create_model(arch, num_classes=10, head="linear", width=width)
    x, _ = synthetic_images(64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # running stats = plain average of this one batch
        model.train()
        model(uint8_to_input(torch.from_numpy(x), pre.mean, pre.std))
        model.eval()
        model.classifier[-1].weight.mul_(30)
    save_checkpoint(make_checkpoint(model, arch=arch, head="linear", width=width, num_classes=10,
                                    dropout=0.0, preprocessing=pre, test_accuracy=0.5), path)
    return path


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory) -> Path:
    return write_varied_checkpoint(tmp_path_factory.mktemp("varied") / "best.pt")


@pytest.fixture(scope="module")
def predictor(varied_checkpoint) -> Predictor:
    return Predictor(varied_checkpoint, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def onnx_model(varied_checkpoint, tmp_path_factory) -> Path:
    """The checkpoint exported with the real exporter (vggcifar.export)."""
    from vggcifar.export.cache import onnx_from_checkpoint

    return onnx_from_checkpoint(varied_checkpoint, tmp_path_factory.mktemp("onnx"))


def base_image(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    """A non-square RGB picture with structure (gradients, a bright block, noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 90.0)], axis=-1)
    arr[h // 5:h // 2, w // 6:w // 2] = (250, 240, 30)
    arr += rng.normal(0, 8, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> Path:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = path.with_suffix(".full.jpg")
    base_image(64, 64).save(buf, quality=90)
    data = buf.read_bytes()
    buf.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def animated_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (40, 30), c) for c in ((220, 20, 20), (20, 20, 220), (20, 200, 20))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_kind(kind: str, folder: Path) -> Path:
    """Save :func:`base_image` as ``kind``; returns the file."""
    img = base_image()
    p = folder / f"{kind}"
    if kind == "png":
        img.save(p := p.with_suffix(".png"))
    elif kind == "jpeg":
        img.save(p := p.with_suffix(".jpg"), quality=95)
    elif kind == "webp":
        img.save(p := p.with_suffix(".webp"), lossless=True)
    elif kind == "bmp":
        img.save(p := p.with_suffix(".bmp"))
    elif kind == "gif":
        img.save(p := p.with_suffix(".gif"))
    elif kind == "tiff":
        img.save(p := p.with_suffix(".tiff"))
    elif kind == "L":
        img.convert("L").save(p := p.with_suffix(".png"))
    elif kind == "P":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(p := p.with_suffix(".png"))
    elif kind == "RGBA":
        rgba = img.convert("RGBA")
        alpha = np.full((img.height, img.width), 255, np.uint8)
        alpha[:, : img.width // 2] = 0  # left half fully transparent
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(p := p.with_suffix(".png"))
    elif kind == "CMYK":
        img.convert("CMYK").save(p := p.with_suffix(".jpg"), quality=95)
    elif kind == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # full 16-bit range
        Image.fromarray(grey).save(p := p.with_suffix(".png"))
    elif kind == "I;16-tiff":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(p := p.with_suffix(".tif"))
    elif kind == "animated-gif":
        p = animated_gif(p.with_suffix(".gif"))
    else:
        raise AssertionError(kind)
    return p


KINDS = ["png", "jpeg", "webp", "bmp", "gif", "tiff", "L", "P", "RGBA", "CMYK", "I;16",
         "I;16-tiff", "animated-gif"]


# ---- decoding every kind ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_kind_decodes_and_predicts(kind, tmp_path, predictor):
    path = write_kind(kind, tmp_path)
    pixels, notes = load_pixels(path)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    want = pil_to_uint8(base_image()).int()
    got = pixels.int()
    if kind in ("png", "webp", "bmp", "tiff"):  # lossless: exactly the training pipeline's pixels
        assert torch.equal(got, want)
    elif kind in ("jpeg", "CMYK", "gif", "P"):  # lossy or palette-reduced, but the same picture
        assert (got - want).abs().float().mean() < 12
    elif kind in ("L", "I;16", "I;16-tiff"):  # greyscale: three equal channels
        assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])
        grey = pil_to_uint8(base_image().convert("L")).int()
        assert (got - grey).abs().max() <= 1  # 16-bit scaled to the full 8-bit range
    elif kind == "RGBA":  # transparent half composited on white
        assert (got[:, :, :14] >= 250).all()
        assert torch.equal(got[:, :, 18:], want[:, :, 18:])
    elif kind == "animated-gif":  # first frame (red) only, and we say so
        assert got[0].float().mean() > 180 and got[2].float().mean() < 60
        assert any("first frame" in n for n in notes)
    pred = predictor.predict(path, top_k=3)
    assert pred.ok and pred.label in predictor.class_names
    assert [lab for lab, _ in pred.top_k][0] == pred.label and len(pred.top_k) == 3
    probs = [p for _, p in pred.top_k]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert pred.ms > 0 and pred.backend.startswith("torch")
    assert (kind == "animated-gif") == bool(pred.notes)


def test_tiny_checkpoint_every_kind_in_one_batch(tiny_checkpoint, tmp_path):
    from vggcifar.checkpoint import load_checkpoint

    _, meta = load_checkpoint(tiny_checkpoint)
    p = Predictor(tiny_checkpoint)
    # Served accuracy is the one-view figure (the run's test_accuracy is its flip-TTA figure).
    assert p.info.arch == "vgg11" and p.info.test_accuracy == meta["test_accuracy_one_view"]
    assert p.info.test_accuracy_tta == meta["test_accuracy"]
    assert p.class_names == list(meta["preproc"].class_names)
    files = [write_kind(k, tmp_path) for k in KINDS]
    preds = list(p.predict_files(files, top_k=5, batch_size=4))
    assert all(x.ok for x in preds) and [x.source for x in preds] == [str(f) for f in files]
    onnx = list(Predictor(tiny_checkpoint, backend="onnx").predict_files(files, top_k=5))
    # auto picks OpenVINO in bf16 on a CPU with native bf16 (8 mantissa bits against fp32's 23)
    atol = 3e-3 if "bf16" in p.backend_name else 1e-4
    for a, b in zip(preds, onnx):
        np.testing.assert_allclose(a.probability, b.probability, atol=atol)
        if a.top_k[0][1] - a.top_k[1][1] > 3 * atol:  # a briefly trained model can have near-ties
            assert a.label == b.label


def test_exif_orientation_is_applied(tmp_path, predictor):
    upright = base_image(48, 24)  # non-square: a missed rotation changes the picture
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    stored.save(rotated := tmp_path / "rotated.jpg", quality=100, exif=exif.tobytes())
    upright.save(plain := tmp_path / "upright.jpg", quality=100)
    stored.save(ignored := tmp_path / "no-exif.jpg", quality=100)
    a, _ = load_pixels(rotated)
    b, _ = load_pixels(plain)
    c, _ = load_pixels(ignored)
    assert (a.int() - b.int()).abs().float().mean() < 3  # same picture once rotated
    assert (c.int() - b.int()).abs().float().mean() > 20  # and rotation really matters here
    pa, pb = predictor.predict(rotated), predictor.predict(plain)
    assert pa.label == pb.label
    np.testing.assert_allclose([p for _, p in pa.top_k], [p for _, p in pb.top_k], atol=0.05)


def test_pillow_image_and_bytes_sources(tmp_path, predictor):
    path = write_kind("png", tmp_path)
    by_path = predictor.predict(path)
    assert predictor.predict(path.read_bytes(), name="x.png").top_k == by_path.top_k
    assert predictor.predict(Image.open(path)).top_k == by_path.top_k


# ---- bad inputs -----------------------------------------------------------------------------


def bad_files(folder: Path) -> dict[str, Path]:
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    return {"empty": empty, "text": text, "truncated": truncated_jpeg(folder / "cut.jpg"),
            "bomb": bomb_png(folder / "bomb.png"), "missing": folder / "missing.png",
            "folder": folder}


@pytest.mark.parametrize("what, message", [
    ("empty", "empty file"), ("text", "not a readable image"), ("truncated", "truncated"),
    ("bomb", "decompression bomb"), ("missing", "no such file"), ("folder", "folder")])
def test_bad_inputs_give_one_line_errors(what, message, tmp_path, predictor):
    path = bad_files(tmp_path)[what]
    with pytest.raises(VggCifarError) as e:
        predictor.predict(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert path.name in str(e.value)


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    # If Pillow tried to decode 10^10 pixels this would allocate ~30 GB; make any decode loud.
    from PIL import PngImagePlugin

    def no_decode(*a, **k):
        raise AssertionError("decoder reached")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decode)
    with pytest.raises(VggCifarError, match="decompression bomb"):
        load_pixels(bomb_png(tmp_path / "bomb.png"))


def test_batch_keeps_going_after_failures(tmp_path, predictor):
    good = [write_kind(k, tmp_path) for k in ("png", "jpeg", "bmp")]
    bad = bad_files(tmp_path)
    order = [good[0], bad["empty"], good[1], bad["text"], bad["bomb"], good[2], bad["truncated"]]
    preds = list(predictor.predict_files(order, batch_size=2))
    assert [p.source for p in preds] == [str(p) for p in order]
    assert [p.ok for p in preds] == [True, False, True, False, False, True, False]
    singles = [predictor.predict(p) for p in good]
    for batch_pred, single in zip([preds[0], preds[2], preds[5]], singles):
        assert batch_pred.label == single.label
        np.testing.assert_allclose(batch_pred.probability, single.probability, atol=1e-5)


# ---- backends ---------------------------------------------------------------------------------


def test_torch_and_onnx_backends_agree(varied_checkpoint, onnx_model, predictor, tmp_path):
    from vggcifar.testing import synthetic_images

    x, _ = synthetic_images(48, seed=3)
    ref = predictor.probabilities(x)
    # The real export, opened by file, and the checkpoint run with --backend onnx (exported on
    # the fly) must both match PyTorch.
    for p in (Predictor(onnx_model, backend="onnx", device="cpu"),
              Predictor(varied_checkpoint, backend="onnx", device="cpu")):
        assert p.backend.name == "onnx" and "CPUExecutionProvider" in p.backend_name
        out = p.probabilities(x)
        assert out.shape == ref.shape == (48, 10)
        assert (out.argmax(1) == ref.argmax(1)).all()
        np.testing.assert_allclose(out, ref, atol=1e-4)
    assert len(set(ref.argmax(1).tolist())) > 1  # the check is not vacuous


def test_onnx_metadata_drives_classes_and_info(onnx_model, varied_checkpoint):
    p = Predictor(onnx_model, backend="onnx")
    assert p.backend.name == "onnx"
    assert p.info.format == "onnx" and p.info.arch == "vgg11"
    assert p.info.test_accuracy == pytest.approx(0.5)
    assert p.class_names[3] == "cat" and p.input_size == 32
    q = Predictor(varied_checkpoint, backend="onnx")
    assert q.info.name.endswith("/best.pt") and q.info.format == "checkpoint"


def test_auto_backend_prefers_an_onnx_runtime_on_cpu(varied_checkpoint, monkeypatch):
    from vggcifar.export import cache

    if torch.cuda.is_available():
        assert Predictor(varied_checkpoint).backend.name == "torch"
        return
    p = Predictor(varied_checkpoint)
    assert p.backend.name == AUTO_CPU and p.info.format == "checkpoint"
    assert p.info.name.endswith("best.pt") and p.info.arch == "vgg11"
    cached = list(cache.onnx_cache_dir().glob("best-*.onnx"))
    assert cached  # exported once, reused next time

    def broken(path, sha=None, rebuild=False):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(cache, "cached_onnx", broken)
    assert Predictor(varied_checkpoint).backend.name == "torch"  # falls back, no error


def test_onnx_without_vggcifar_metadata_is_refused(tmp_path):
    import warnings

    path = tmp_path / "plain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 32, 32),), str(path),
                          dynamo=False, input_names=["image"])
    with pytest.raises(VggCifarError, match="lacks the vggcifar metadata"):
        Predictor(path)


def test_onnxruntime_cuda_probe_is_quiet_and_falls_back(onnx_model, capfd):
    sess, provider = device_session(onnx_model, "auto")
    err = capfd.readouterr().err
    if not torch.cuda.is_available():
        assert provider == "CPUExecutionProvider"
        assert "libcuda" not in err and "Failed to load" not in err
        with pytest.raises(VggCifarError, match="cannot use CUDA"):
            device_session(onnx_model, "cuda")


def test_backend_and_file_mismatches_are_clear(varied_checkpoint, onnx_model, tmp_path):
    with pytest.raises(VggCifarError, match="TensorRT engine"):
        create_backend(varied_checkpoint, "tensorrt")
    with pytest.raises(VggCifarError, match="ONNX model"):
        create_backend(onnx_model, "torch")
    with pytest.raises(VggCifarError, match="unknown backend"):
        create_backend(varied_checkpoint, "jax")
    with pytest.raises(VggCifarError, match="does not exist"):
        create_backend(tmp_path / "nope.pt")
    if not torch.cuda.is_available():
        with pytest.raises(VggCifarError, match="CUDA is not available"):
            create_backend(varied_checkpoint, "torch", "cuda")


def test_tensorrt_engine_without_tensorrt_is_a_clear_error(tmp_path):
    if tensorrt_status()[0]:
        pytest.skip("tensorrt is usable here; covered by test_tensorrt_engine_matches_torch")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(VggCifarError, match="needs the tensorrt package"):
        Predictor(engine)


def test_engine_sidecar_metadata_is_understood(onnx_model, tmp_path):
    from vggcifar.runtime.contract import engine_sidecar, read_metadata
    from vggcifar.serving.backends import info_from_export_metadata

    engine = tmp_path / "model.engine"
    assert engine_sidecar(engine).name == "model.engine.json"  # what vgg-export writes
    # The exporter's sidecar: the ONNX metadata strings plus the build info.
    side = {**read_metadata(onnx_model), "tensorrt_version": "10.9.0", "precision": "fp16",
            "max_batch": "256"}
    info = info_from_export_metadata(side, engine, "tensorrt")
    assert info.class_names[0] == "airplane" and info.arch == "vgg11"
    assert info.precision == "fp16" and info.test_accuracy == pytest.approx(0.5)
    assert info.preproc.mean[0] == pytest.approx(0.4914)


def test_tensorrt_engine_matches_torch(varied_checkpoint, onnx_model, predictor, tmp_path):
    if not tensorrt_status()[0]:
        pytest.skip("tensorrt package or CUDA GPU not available")
    from vggcifar.runtime.contract import read_metadata
    from vggcifar.export.tensorrt import build_engine
    from vggcifar.testing import synthetic_images

    engine = tmp_path / "model.engine"
    build_engine(onnx_model, engine, fp16=False, max_batch=16)
    Path(f"{engine}.json").write_text(json.dumps(read_metadata(onnx_model)))
    p = Predictor(engine)
    x, _ = synthetic_images(40, seed=4)  # > max_batch: exercises chunking
    np.testing.assert_allclose(p.probabilities(x), predictor.probabilities(x), atol=2e-3)


def test_shipped_manifest_loads(varied_checkpoint, tmp_path):
    from vggcifar.shipped import pack_shipped

    manifest = pack_shipped(varied_checkpoint, tmp_path / "models")
    image = write_kind("png", tmp_path)
    by_backend = {}
    for backend in ("torch", "auto"):
        p = Predictor(manifest, backend=backend)
        assert p.info.format == "shipped" and "fp16" in p.info.describe()
        by_backend[p.backend.name] = p.predict(image)
    a, b = by_backend.values()
    assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-4)


# ---- input expansion --------------------------------------------------------------------------


def test_expand_inputs_files_folders_globs(tmp_path):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    for name in ("a/1.png", "a/sub/2.JPG", "a/readme.txt", "a/.hidden.png", "3.webp"):
        base_image().save(tmp_path / name, format="PNG") if not name.endswith(".txt") \
            else (tmp_path / name).write_text("x")
    files, problems = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.webp"),
                                     str(tmp_path / "a" / "1.png"), str(tmp_path / "empty"),
                                     str(tmp_path / "nope.png"), str(tmp_path / "*.gif")])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.png", "a/sub/2.JPG",
                                                                   "3.webp"]
    assert [(Path(a).name, r.split()[0]) for a, r in problems] == [
        ("empty", "folder"), ("nope.png", "no"), ("*.gif", "no")]


# ---- vgg-predict --------------------------------------------------------------------------------


def run_cli(*args, cwd: Path | None = None, env: dict | None = None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(predict_cli, [str(a) for a in args], env=env)
    with runner.isolated_filesystem(temp_dir=cwd):
        return runner.invoke(predict_cli, [str(a) for a in args], env=env)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    (folder / "nested").mkdir(parents=True)
    for i, kind in enumerate(("png", "jpeg", "bmp")):
        src = write_kind(kind, tmp_path)
        shutil.move(src, folder / f"img{i}{src.suffix}")
    base_image(seed=5).save(folder / "nested" / "deep.webp")
    return folder


def test_cli_table(images, varied_checkpoint, predictor):
    r = run_cli(images, "--model", varied_checkpoint, "--top-k", "2")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["file", "label", "probability", "top-k"]
    assert len(lines) == 1 + 4
    row = next(ln for ln in lines if "img0.png" in ln)
    want = predictor.predict(images / "img0.png", top_k=2)
    assert want.label in row and f"{want.probability:.1%}" in row
    assert f"backend: {AUTO_CPU}" in r.stderr and "4 predicted, 0 failed" in r.stderr  # on CPU


def test_cli_json(images, varied_checkpoint, predictor):
    r = run_cli(images / "img0.png", images / "nested", "--model", varied_checkpoint, "--json",
                "--top-k", "4", "--backend", "onnx")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [Path(x["file"]).name for x in rows] == ["img0.png", "deep.webp"]
    for row in rows:
        assert set(row) >= {"file", "label", "probability", "top_k", "backend", "ms"}
        assert len(row["top_k"]) == 4 and set(row["top_k"][0]) == {"label", "probability"}
        assert row["top_k"][0]["label"] == row["label"] and row["backend"].startswith("onnx")
    want = predictor.predict(images / "img0.png")
    assert rows[0]["label"] == want.label
    assert rows[0]["probability"] == pytest.approx(want.probability, abs=1e-4)


def test_cli_partial_failure_exits_1(images, varied_checkpoint, tmp_path):
    bad = bad_files(tmp_path)
    (tmp_path / "empty-dir").mkdir()
    r = run_cli(images / "img0.png", bad["text"], bad["bomb"], bad["missing"], bad["empty"],
                tmp_path / "empty-dir", images / "img1.jpg", "--model", varied_checkpoint,
                "--json")
    assert r.exit_code == 1
    rows = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert sum("label" in x for x in rows) == 2 and sum("error" in x for x in rows) == 5
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 5
    for needle in ("not a readable image", "decompression bomb", "no such file", "empty file",
                   "holds no image files"):
        assert any(needle in e for e in errors), needle
    assert "Traceback" not in r.stderr and "2 predicted, 5 failed" in r.stderr


def test_cli_animated_gif_note(tmp_path, varied_checkpoint):
    r = run_cli(animated_gif(tmp_path / "anim.gif"), "--model", varied_checkpoint)
    assert r.exit_code == 0
    assert "note:" in r.stderr and "first frame" in r.stderr


def test_cli_large_valid_image_is_predicted(tmp_path, varied_checkpoint):
    # ~20 MB of incompressible pixels, 6.8 Mpx: under the 40 Mpx limit, so the CLI (local files,
    # trusted) predicts it; only the pixel count guards memory here.
    rng = np.random.default_rng(0)
    big = tmp_path / "big.bmp"
    Image.fromarray(rng.integers(0, 256, (2600, 2600, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20e6
    r = run_cli(big, "--model", varied_checkpoint)
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args, message", [
    (["nope.png"], "no such file"),
    (["EMPTYDIR"], "holds no image files"),
    (["*.nothing"], "no image files match"),
])
def test_cli_nothing_to_predict_exits_2(args, message, tmp_path, varied_checkpoint):
    (tmp_path / "EMPTYDIR").mkdir()
    args = [str(tmp_path / a) for a in args]
    r = run_cli(*args, "--model", varied_checkpoint)
    assert r.exit_code == 2
    assert message in r.stderr and "nothing to predict" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_usage_errors_exit_2(images, tmp_path, varied_checkpoint):
    assert run_cli().exit_code == 2  # no images
    assert run_cli(images, "--top-k", "0", "--model", varied_checkpoint).exit_code == 2
    assert run_cli(images, "--backend", "jax", "--model", varied_checkpoint).exit_code == 2
    r = run_cli(images, "--model", tmp_path / "missing.pt")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    text = tmp_path / "model.pt"
    text.write_text("nope")
    r = run_cli(images, "--model", text)
    assert r.exit_code == 2 and "not a readable vggcifar checkpoint" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_default_model(images, varied_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("VGGCIFAR_MODELS", str(tmp_path / "no-models"))
    work = tmp_path / "work"
    (work / "runs" / "mine").mkdir(parents=True)
    monkeypatch.chdir(work)
    r = run_cli(images / "img0.png")
    assert r.exit_code == 2 and "no model found" in r.stderr
    shutil.copy(varied_checkpoint, work / "runs" / "mine" / "best.pt")
    r = run_cli(images / "img0.png")
    assert r.exit_code == 0, r.stderr
    assert "newest run checkpoint" in r.stderr and "mine/best.pt" in r.stderr


def test_cli_many_files_in_batches_with_progress(tmp_path, varied_checkpoint):
    from vggcifar.testing import write_image_folder

    root = write_image_folder(tmp_path / "many", n_train=0, n_test=150)
    r = run_cli(root / "test", "--model", varied_checkpoint, "--batch-size", "32", "--json")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 150
    assert "/150 [" in r.stderr  # the tqdm bar (more files than one batch)


def test_both_accuracies_are_read_from_the_metadata():
    from vggcifar.serving.backends import served_accuracy

    assert served_accuracy({"test_accuracy": 0.9, "test_accuracy_one_view": 0.88,
                            "config": {"tta": True}}) == (0.88, 0.9)
    assert served_accuracy({"test_accuracy": 0.9, "config": {"tta": True}}) == (None, 0.9)
    assert served_accuracy({"test_accuracy": 0.9, "config": {"tta": False}}) == (0.9, None)
    assert served_accuracy({"test_accuracy": 0.9, "test_accuracy_with_tta": True}) == (None, 0.9)
    assert served_accuracy({"test_accuracy": None}) == (None, None)


def test_exported_model_reports_both_accuracies(varied_checkpoint, tmp_path):
    from vggcifar.export.cache import onnx_from_checkpoint

    ckpt = torch.load(varied_checkpoint, weights_only=True)
    ckpt["test_accuracy"], ckpt["test_accuracy_one_view"] = 0.75, 0.5
    ckpt["config"] = {**(ckpt.get("config") or {}), "tta": True}
    torch.save(ckpt, tmp_path / "acc.pt")
    for model in (tmp_path / "acc.pt", onnx_from_checkpoint(tmp_path / "acc.pt", tmp_path)):
        info = Predictor(model).info
        assert (info.test_accuracy, info.test_accuracy_tta) == (0.5, 0.75)
        assert "50.00% (one view)" in info.describe()
        assert "75.00% (flip TTA)" in info.describe(tta=True)


def wide_image(path: Path) -> Path:
    """A 96x32 picture whose three thirds differ: squash and centre crop must disagree."""
    rng = np.random.default_rng(3)
    arr = np.concatenate([np.full((32, 32, 3), c, np.uint8) for c in (20, 128, 235)], axis=1)
    arr[:, 32:64] = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_centre_crop_keeps_the_middle_square(tmp_path, predictor):
    from vggcifar.serving import fit_image

    path = wide_image(tmp_path / "wide.png")
    with Image.open(path) as im:
        assert fit_image(im, "squash") is im
        crop = fit_image(im, "crop")
        assert crop.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(crop), np.asarray(im)[:, 32:64])
    squash, crop = (predictor.predict(path, top_k=10, fit=f) for f in ("squash", "crop"))
    assert crop.pixels.shape == (3, 32, 32)
    np.testing.assert_array_equal(crop.pixels, np.asarray(Image.open(path))[:, 32:64]
                                  .transpose(2, 0, 1))
    assert not np.array_equal(squash.pixels, crop.pixels)
    with pytest.raises(VggCifarError, match="unknown fit"):
        predictor.predict(path, fit="stretch")


def test_cli_tta_and_crop(tmp_path, varied_checkpoint):
    path = wide_image(tmp_path / "wide.png")
    r = run_cli(path, "--model", varied_checkpoint, "--json", "--top-k", "10", "--tta",
                "--fit", "crop")
    assert r.exit_code == 0, r.stderr
    assert "(flip TTA)" in r.stderr
    row = json.loads(r.stdout)
    want = Predictor(varied_checkpoint, tta=True, fit="crop").predict(path, top_k=10)
    plain = Predictor(varied_checkpoint).predict(path, top_k=10)
    assert row["label"] == want.label
    np.testing.assert_allclose([t["probability"] for t in row["top_k"]],
                               [p for _, p in want.top_k], atol=1e-4)
    assert [t["probability"] for t in row["top_k"]] != pytest.approx(
        [p for _, p in plain.top_k], abs=1e-4)
    assert "(one view)" in run_cli(path, "--model", varied_checkpoint).stderr


def test_model_kinds_and_the_backend_table():
    from vggcifar.runtime.contract import MODEL_KINDS, model_kind
    from vggcifar.serving.backends import BACKEND_TABLE
    from vggcifar.serving.names import BACKENDS

    names = ("run/best.pt", "w/vggcifar-default.json", "m.ONNX", "m.plan", "m.engine", "m.trt")
    assert [model_kind(p) for p in names] == ["checkpoint", "shipped", "onnx", "tensorrt",
                                              "tensorrt", "tensorrt"]
    assert set(BACKENDS) == {"auto", *(row.name for row in BACKEND_TABLE)}
    assert {k for row in BACKEND_TABLE for k in row.kinds} == set(MODEL_KINDS)


def test_cli_facing_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; import vggcifar.serving.names, vggcifar.export.options, "
            "vggcifar.runtime.contract, vggcifar.runtime.devices, vggcifar.io; "
            "assert not {'torch', 'onnx', 'onnxruntime'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_write_probe_and_cache_dir(tmp_path, monkeypatch):
    from vggcifar.io import cache_dir, check_writable

    assert check_writable(tmp_path / "a" / "b", "run folder").is_dir()
    assert not list((tmp_path / "a" / "b").iterdir())  # the probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(VggCifarError, match="cannot write the run folder .*--out"):
        check_writable(tmp_path / "file" / "sub", "run folder")
    monkeypatch.setenv("VGGCIFAR_CACHE", str(tmp_path / "c"))
    assert cache_dir("onnx") == tmp_path / "c" / "onnx" and cache_dir() == tmp_path / "c"
