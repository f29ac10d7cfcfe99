"""Decoding image files into model-sized uint8 pixels.

Used by the image-folder dataset reader and by serving, so a file is turned into pixels the same
way in training and in prediction.

Two promises, because one bad upload or one odd file in a folder must never end a run:

- every failure while decoding or converting (Pillow raises far more than ``OSError`` on
  malformed files: ``IndexError``, ``struct.error``, ``TypeError``, ``KeyError``, ``EOFError``,
  ``ZeroDivisionError``, ``MemoryError``...) becomes that file's one-line :class:`VggCifarError`;
- memory is bounded by what a ``size`` x ``size`` model needs: JPEGs are decoded at reduced scale
  (draft), other large images are box-averaged down to a few times ``size`` *before* any mode
  conversion, and 16-bit data is converted with integer arithmetic;
- memory and time are bounded per process, whatever the files: only :data:`ACCEPTED_FORMATS` are
  opened, sizes are checked from the header before decoding, only the first frame or page is
  read, and every decode holds its estimated bytes from :data:`DECODES` while it runs.
"""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from .errors import VggCifarError
from .image_formats import ACCEPTED_FORMATS, ACCEPTED_NAMES

# Refuse images that would decode to more than this many pixels (decompression bombs): at most
# ~160 MB at 4 bytes a pixel. Checked from the header, before decoding; only JPEGs, which are
# decoded at reduced scale (draft) for a small model, may declare up to MAX_JPEG_PIXELS (a 50 MP
# photo read for a 32x32 model is decoded at 1/8 scale).
MAX_PIXELS = 40_000_000
MAX_JPEG_PIXELS = 64_000_000
# Large images are reduced to at least this multiple of the model size a side before converting:
# the final antialiased bicubic resize from there matches one from full size, and images up to
# 2x this size (255 px for 32x32) take exactly the same path as before.
REDUCE_TO = 4
# Decodes running at once in this process, and the decoded bytes they may hold together (see
# DecodeBudget); a decode waits at most DECODE_WAIT_S for its turn, then its image is refused.
MAX_DECODES = max(2, min(8, os.cpu_count() or 2))
DECODE_BUDGET_BYTES = 512 * 2**20
DECODE_WAIT_S = 30.0
# Time one decode of bytes may take once it runs: Pillow reads its input block by block while
# decoding, and a read past this refuses the image (the pixel limits bound each block's work).
DECODE_TIME_S = 10.0
# Pillow must never fill in truncated files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def image_label(source, name: str | None = None) -> str:
    """How messages name an image: ``name`` if given, else the path of a path source, else
    "image" (bytes and file objects carry no name worth showing)."""
    return name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")


@contextmanager
def _decoding(label: str):
    """Turn any exception raised inside the block into ``VggCifarError("{label}: ...")``.

    ``Exception`` on purpose: on malformed files Pillow and numpy raise nearly every built-in
    type, and no list of them survives the next Pillow release. Our own errors pass unchanged;
    ``KeyboardInterrupt`` and ``SystemExit`` are not ``Exception`` and are never swallowed.
    """
    try:
        yield
    except VggCifarError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VggCifarError(f"{label}: refused, too many pixels (possible decompression bomb)") from e
    except UnidentifiedImageError as e:
        raise VggCifarError(f"{label}: not a readable image (unknown or corrupt format; "
                            f"accepted: {ACCEPTED_NAMES})") from e
    except Exception as e:
        # Pillow's OSError/ValueError texts read well alone ("image file is truncated"); for the
        # rest ("list index out of range") the type says what kind of corruption it was.
        kind = type(e).__qualname__
        kind = kind if type(e).__module__ == "builtins" else f"{type(e).__module__}.{kind}"
        detail = str(e) if isinstance(e, (OSError, SyntaxError, ValueError)) and str(e) \
            else f"{kind}: {e}".rstrip(": ")
        detail = " ".join(detail.split())[:200]  # one line, whatever the library wrote
        raise VggCifarError(f"{label}: cannot decode image ({detail})") from e


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale -> 8-bit 'L' by scaling the full range, not clipping.

    Values in 0..65535 are read as 8- or 16-bit data (0..255 or 0..65535 -> 0..255); 32-bit
    integers outside that, and floats, are scaled from their own minimum to their maximum.
    Integer data is scaled with integer arithmetic (round half up, the same bytes as the float
    formula): a float64 copy would be 4-8x the decoded image.

    Raises:
        ValueError: float pixels that are NaN or infinite (no range to scale them by).
    """
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():  # one would turn the whole image black, then classified
            raise ValueError("NaN or infinite pixel values")
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.clip((arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0 + 0.5, 0, 255)
    else:  # "I" or "I;16*"
        arr = np.asarray(img).astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            lo, hi = 0, (65535 if hi > 255 else 255)
        # Clipping 32-bit values to 16 bits made every bright pixel 255: scale the range held.
        arr = ((arr - lo) * 255 + max(hi - lo, 1) // 2) // max(hi - lo, 1)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


def _upright(img: Image.Image):
    """The transpose the image's EXIF orientation asks for, or None. Unreadable EXIF is ignored:
    the pixels themselves are still good."""
    try:
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:
        return None
    return _ORIENTATION.get(orientation) if isinstance(orientation, int) else None


def _shrink(img: Image.Image, size: int) -> Image.Image:
    """Box-average an image larger than ``2 * REDUCE_TO * size`` on a side down to between
    ``REDUCE_TO`` and ``2 * REDUCE_TO`` times ``size``, in its own mode (16-bit included), so
    that every later conversion works on a few thousand pixels, not millions."""
    fx, fy = (max(1, n // (REDUCE_TO * size)) for n in img.size)
    if fx == fy == 1:
        return img
    if img.mode in ("1", "P", "PA"):  # palette indices and single bits cannot be averaged
        img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
    return img.resize((img.width // fx, img.height // fy), Image.Resampling.BOX)


def _to_rgb(img: Image.Image, size: int | None = None) -> Image.Image:
    """Any Pillow image -> upright 8-bit RGB: EXIF orientation applied, first frame of animations,
    transparency composited on white, CMYK/palette/greyscale/16-bit converted (shrunk towards
    ``size`` first when given)."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    # Read the orientation first (a resized copy loses TIFF tags) and apply it last: every step
    # in between works pixel by pixel, so the order does not change a single byte.
    transpose = _upright(img)
    if size:
        img = _shrink(img, size)
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img.transpose(transpose) if transpose is not None else img


def pil_to_uint8(img: Image.Image, size: int = 32, label: str | None = None) -> torch.Tensor:
    """Pillow image -> ``[3, size, size]`` uint8 tensor (antialiased resize when needed).

    Raises:
        VggCifarError: the image cannot be decoded or converted (one line naming ``label``, else
            the image's file name).
    """
    with _decoding(label or getattr(img, "filename", "") or "image"):
        img = _to_rgb(img, size)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class DecodeBudget:
    """A process-wide budget of concurrent decodes and their estimated decoded bytes.

    Decoding can cost far more memory than a file (a 5 KB palette PNG of 6300x6300 pixels
    decodes to 40 MB, and 160 MB more to convert its transparency), so memory is bounded by how
    many decodes run at once and what they hold, not by how many files arrive. One image whose
    estimate alone exceeds the budget still runs, alone. Thread-safe.
    """

    def __init__(self, max_decodes: int = MAX_DECODES, max_bytes: int = DECODE_BUDGET_BYTES):
        self.max_decodes, self.max_bytes = max_decodes, max_bytes
        self.running = self.bytes = self.peak_bytes = 0
        self._cond = threading.Condition()

    def _fits(self, nbytes: int) -> bool:
        return self.running < self.max_decodes and (
            self.running == 0 or self.bytes + nbytes <= self.max_bytes)

    @contextmanager
    def reserve(self, nbytes: int, label: str, wait_s: float = DECODE_WAIT_S):
        """Hold one decode slot and ``nbytes`` for the block, waiting up to ``wait_s`` for them.

        Raises:
            VggCifarError: the budget stayed in use for ``wait_s`` (this image is refused).
        """
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not self._fits(nbytes):
                left = deadline - time.monotonic()
                if left <= 0:
                    # also reached outside a server (a data folder's decode threads)
                    raise VggCifarError(f"{label}: busy decoding other images (the decode "
                                        f"memory budget stayed full for {wait_s:g} s); try "
                                        "again shortly")
                self._cond.wait(left)
            self.running += 1
            self.bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self.bytes -= nbytes
                self._cond.notify_all()


DECODES = DecodeBudget()

# Bytes a pixel of each mode takes once decoded (others: 4).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2,
               "I;16B": 2, "I;16N": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def _decode_cost(img: Image.Image, header_pixels: int) -> int:
    """Estimated peak bytes of decoding and converting ``img`` (already drafted): its decoded
    pixels plus twice a full-size RGBA copy (palette and bilevel images are converted before
    they can be reduced: a 6300x6300 palette PNG peaks at 7.7 bytes a pixel); progressive JPEGs
    also hold every DCT coefficient at full size."""
    w, h = img.size
    cost = w * h * (_MODE_BYTES.get(img.mode, 4) + 8)
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        cost += header_pixels * len(img.getbands()) * 2
    return cost


def _open_checked(source, label: str, size: int | None) -> tuple[Image.Image, int]:
    """Open (header only) an image of an accepted format, check its declared size and draft it:
    ``(image, estimated decode bytes)``. Nothing is decoded yet."""
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise VggCifarError(f"{label}: no such file")
        if os.path.isdir(source):
            raise VggCifarError(f"{label}: is a folder, not an image file")
        if os.path.getsize(source) == 0:
            raise VggCifarError(f"{label}: empty file")
    img = Image.open(source, formats=ACCEPTED_FORMATS)
    w, h = img.size
    jpeg = img.format in ("JPEG", "MPO") and bool(size)
    limit = MAX_JPEG_PIXELS if jpeg else MAX_PIXELS
    if w * h > limit:  # from the header, before any draft: what the decoder is asked to read
        raise VggCifarError(f"{label}: image is {w}x{h} pixels, over the {limit:,}-pixel limit "
                            "(possible decompression bomb)")
    if jpeg:
        img.draft(None, (REDUCE_TO * size, REDUCE_TO * size))
    return img, _decode_cost(img, w * h)


class _TimedBytes(io.BytesIO):
    """Image bytes that refuse to be read once :meth:`start`'s time is up."""

    deadline = float("inf")
    label = "image"

    def start(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def read(self, size: int | None = -1) -> bytes:
        if time.monotonic() > self.deadline:
            raise VggCifarError(f"{self.label}: refused, decoding took over {DECODE_TIME_S:g} s")
        return super().read(size)


@contextmanager
def decoding(source, name: str | None = None, size: int | None = None,
             budget: DecodeBudget | None = None):
    """Open and fully decode an image under the process-wide :data:`DECODES` budget, which is
    held until the block ends (convert the image inside it).

    Only the first frame or page is ever read: a TIFF of 100,000 pages costs what its first
    page costs; an image given as bytes must decode within :data:`DECODE_TIME_S`. ``size``:
    see :func:`open_image`.

    Raises:
        VggCifarError: empty, unreadable, truncated, malformed, unaccepted or oversized (bomb)
            images, or no decode budget free within ``DECODE_WAIT_S``; one line naming the file.
    """
    label = image_label(source, name)
    if isinstance(source, (bytes, bytearray)):  # what servers decode: timed
        source = _TimedBytes(source)
        source.label = label
    with _decoding(label), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img, cost = _open_checked(source, label, size)
        with (budget or DECODES).reserve(cost, label):
            if isinstance(source, _TimedBytes):
                source.start(DECODE_TIME_S)
            img.load()
            yield img


def open_image(source, name: str | None = None, size: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or file object (see :func:`decoding`,
    whose budget is released when this returns).

    Args:
        size: the model's input size, when known: JPEGs are then decoded at the smallest scale
            (1/2..1/8) that still leaves ``REDUCE_TO * size`` pixels a side, which a later
            :func:`pil_to_uint8` with the same size turns into the same pixels at a fraction of
            the memory.
    Raises:
        VggCifarError: empty, unreadable, truncated, malformed, unsupported or oversized (bomb)
            images, with a one-line message naming the file.
    """
    with decoding(source, name, size) as img:
        return img


def read_image(source, size: int = 32, name: str | None = None) -> torch.Tensor:
    """Read an image file (path, bytes or file object) -> ``[3, size, size]`` uint8 tensor.

    The one call for "file in, model pixels out": decoding is bounded in memory for ``size``.

    Raises:
        VggCifarError: any problem with the file, as one line naming it.
    """
    label = image_label(source, name)
    with decoding(source, name=label, size=size) as img:
        return pil_to_uint8(img, size=size, label=label)


def animation_note(img: Image.Image) -> str | None:
    """What to tell the user about an animated image (only its first frame is used), without
    walking its frames: the count only where the header states it (APNG, WebP)."""
    with _decoding(getattr(img, "filename", "") or "image"):
        if not getattr(img, "is_animated", False):
            return None
        # GIF and TIFF count frames by walking the whole file (98,000 pages took a minute).
        known = getattr(img, "n_frames", None) if img.format not in ("GIF", "TIFF") else None
    frames = f" with {known} frames" if isinstance(known, int) and known > 1 else ""
    return f"animated image{frames}: the first frame was used"
