"""The image decoder under malformed input: nothing but VggCifarError may escape.

One fuzzed file used to end a whole `vgg-predict` run or dataset decode with an IndexError,
struct.error or TypeError from Pillow. Two tests:

- a fast one replays ``tests/corpus/decoder/``: small files that crashed the old decoder (found
  with this module's mutation fuzzer against it);
- a slow one (about 45 s) runs a seeded mutation fuzz of PNG, JPEG, GIF, TIFF, WebP and BMP
  files generated here with Pillow.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vggcifar.errors import VggCifarError
from vggcifar.images import open_image, pil_to_uint8, read_image

CORPUS = Path(__file__).parent / "corpus" / "decoder"
# Pillow warns about much of what a fuzzer feeds it (corrupt EXIF, truncated reads): expected here.
quiet_pillow = pytest.mark.filterwarnings("ignore")
FUZZ_SECONDS = 45  # CI runs slow tests too (plain `pytest`): keep the whole fuzz under a minute


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_files() -> dict[str, bytes]:
    """Small valid files covering the decoders' main paths (modes, compressions, animation,
    EXIF), named ``<format>-<variant>``: the fuzzer mutates these."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8))
    i16 = Image.fromarray(rng.integers(0, 65536, (20, 24), dtype=np.uint16))
    flt = Image.fromarray(rng.random((20, 24)).astype(np.float32))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT), rgb.rotate(180)]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    return {
        "png-rgb": _encode(rgb, "PNG"), "png-rgba": _encode(rgba, "PNG"),
        "png-palette-trns": _encode(pal, "PNG", transparency=3), "png-16bit": _encode(i16, "PNG"),
        "png-la": _encode(rgba.convert("LA"), "PNG"), "png-1bit": _encode(rgb.convert("1"), "PNG"),
        "png-apng": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "png-exif": _encode(rgb, "PNG", exif=exif),
        "jpeg-rgb": _encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": _encode(rgb, "JPEG", progressive=True),
        "jpeg-grey": _encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif),
        "gif-single": _encode(pal, "GIF"), "gif-transparent": _encode(pal, "GIF", transparency=2),
        "gif-animated": _encode(frames[0].convert("P"), "GIF", save_all=True,
                                append_images=[f.convert("P") for f in frames[1:]], duration=50),
        "tiff-raw": _encode(rgb, "TIFF"), "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _encode(rgba, "TIFF", compression="tiff_deflate"),
        "tiff-jpeg": _encode(rgb, "TIFF", compression="jpeg"),
        "tiff-packbits": _encode(pal, "TIFF", compression="packbits"),
        "tiff-g4": _encode(rgb.convert("1"), "TIFF", compression="group4"),
        "tiff-16bit": _encode(i16, "TIFF"), "tiff-float": _encode(flt, "TIFF"),
        "tiff-pages": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "tiff-exif": _encode(rgb, "TIFF", exif=exif),
        "webp-lossy": _encode(rgb, "WEBP", quality=70),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True),
        "webp-animated": _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "bmp-rgb": _encode(rgb, "BMP"), "bmp-palette": _encode(pal, "BMP"),
        "bmp-1bit": _encode(rgb.convert("1"), "BMP"), "bmp-rgba": _encode(rgba, "BMP"),
    }


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """1-4 random edits: bit flips, interesting bytes and 16/32-bit integers (lengths, sizes and
    offsets live there), truncation, inserted random or duplicated bytes, deleted spans. Half of
    the edits hit the first 256 bytes, where headers are."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        if not b:
            break
        end = len(b) if rng.random() < 0.5 else min(len(b), 256)
        pos = int(rng.integers(0, end))
        op = int(rng.integers(0, 7))
        if op == 0:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            b[pos] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF]))
        elif op == 2:
            width = int(rng.choice([2, 4]))
            value = int(rng.choice(_INTERESTING)) & ((1 << 8 * width) - 1)
            b[pos:pos + width] = value.to_bytes(width, str(rng.choice(["big", "little"])))
        elif op == 3:
            del b[pos:]
        elif op == 4:
            b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        elif op == 5:
            src = int(rng.integers(0, len(b)))
            b[pos:pos] = b[src:src + int(rng.integers(1, 128))]
        else:
            del b[pos:pos + int(rng.integers(1, 32))]
    return bytes(b)


def decode_both_ways(data: bytes, label: str) -> None:
    """The two ways the package decodes: `read_image` (datasets) and `open_image` then
    `pil_to_uint8` (serving). Success must give model pixels; failure only VggCifarError."""
    for pixels in (lambda: read_image(data, 32, name=label),
                   lambda: pil_to_uint8(open_image(data, name=label), 32, label=label)):
        try:
            x = pixels()
        except VggCifarError as e:
            assert label in str(e) and "\n" not in str(e)
        else:
            assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_seed_files_are_valid_images():
    for name, data in seed_files().items():
        assert read_image(data, 32, name=name).shape == (3, 32, 32), name


@pytest.mark.parametrize("path", sorted(CORPUS.iterdir()), ids=lambda p: p.name)
@quiet_pillow
def test_corpus_of_old_crashes_gives_only_our_error(path):
    decode_both_ways(path.read_bytes(), path.name)
    try:  # and from the path, as a dataset folder reads it
        read_image(path)
    except VggCifarError as e:
        assert str(path) in str(e)


def test_corpus_is_small():
    files = list(CORPUS.iterdir())
    assert 0 < len(files) < 30 and sum(f.stat().st_size for f in files) < 200_000


@pytest.mark.slow
@quiet_pillow
def test_mutation_fuzz_raises_only_vggcifar_error(tmp_path):
    seeds = seed_files()
    rng = np.random.default_rng(12)
    crashes, runs = [], 0
    deadline = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < deadline and len(crashes) < 5:
        for name, seed in seeds.items():  # round robin: every format gets its share
            data = mutate(rng, seed)
            runs += 1
            try:
                decode_both_ways(data, name)
            except Exception as e:  # anything else escaping is the bug this test looks for
                out = tmp_path / f"crash-{len(crashes)}-{name}"
                out.write_bytes(data)
                crashes.append(f"{out}: {type(e).__name__}: {e}")
    assert not crashes, f"{len(crashes)} crashes in {runs} inputs:\n" + "\n".join(crashes)
    assert runs > 1000  # the fuzz really ran, even on a slow machine
