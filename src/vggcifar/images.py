"""Decoding image files into model-sized uint8 pixels.

Used by the image-folder dataset reader and by serving, so a file is turned into pixels the same
way in training and in prediction.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import VggCifarError

# Refuse images larger than this many pixels before decoding them (decompression bombs).
MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow must never fill in truncated files silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale modes -> 8-bit 'L' by scaling the full range, not clipping."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or img.mode == "I":
        hi = 65535.0 if arr.max() > 255 else 255.0
        arr = arr / hi * 255.0
    elif img.mode == "F":
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0) * 255.0
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> upright 8-bit RGB: EXIF orientation applied, first frame of animations,
    transparency composited on white, CMYK/palette/greyscale/16-bit converted."""
    if getattr(img, "is_animated", False):
        img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def pil_to_uint8(img: Image.Image, size: int = 32) -> torch.Tensor:
    """Pillow image -> ``[3, size, size]`` uint8 tensor (antialiased resize when needed)."""
    img = to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def open_image(source, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or file object.

    Raises:
        VggCifarError: empty, unreadable, truncated, unsupported or oversized (bomb) images, with
            a one-line message naming the file.
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        if isinstance(source, (str, os.PathLike)):
            if not os.path.exists(source):
                raise VggCifarError(f"{label}: no such file")
            if os.path.isdir(source):
                raise VggCifarError(f"{label}: is a folder, not an image file")
            if os.path.getsize(source) == 0:
                raise VggCifarError(f"{label}: empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(source)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise VggCifarError(
                    f"{label}: image is {w}x{h} pixels, over the {MAX_PIXELS:,}-pixel limit "
                    "(possible decompression bomb)")
            img.load()
        return img
    except VggCifarError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise VggCifarError(f"{label}: refused, too many pixels (possible decompression bomb)") from e
    except UnidentifiedImageError as e:
        raise VggCifarError(f"{label}: not a readable image (unknown or corrupt format)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise VggCifarError(f"{label}: cannot decode image ({e})") from e


def read_image(source, size: int = 32, name: str | None = None) -> torch.Tensor:
    """Read an image file (path, bytes or file object) -> ``[3, size, size]`` uint8 tensor."""
    return pil_to_uint8(open_image(source, name=name), size=size)
