"""What a client sent the demo page: the one file-access rule, launched or mounted.

A Gradio handler receives an image as a FileData dict naming a path. Only files Gradio received
as uploads (or the page's own examples) may be read; any other path or URL is refused with
:data:`REFUSED`, the same text whatever the reason, so the server's files cannot be probed, and
before Gradio itself copies the file into its cache (:func:`upload_only_image`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import warnings
from pathlib import Path

from ..errors import VggCifarError
from ..image_formats import ACCEPTED_FORMATS, ACCEPTED_NAMES
from ..io import read_plain_file

# The one answer for anything that is not an upload or a data URL: the same text whether the
# path exists, is a folder, is empty or unreadable, so the server's files cannot be probed.
REFUSED = "no uploaded image received; upload the picture again"


def _display_name(name) -> str:
    """A client-supplied file name made safe to show: its last part, printable, short."""
    name = Path(str(name)).name if name else ""
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or "image"


def _decode_data_url(url: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL, refused above ``max_bytes`` (the encoded length is
    checked first, so an oversized one is never decoded)."""
    head, sep, encoded = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise VggCifarError(REFUSED)
    if len(encoded) > 4 * (max_bytes // 3 + 1):
        raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB upload limit")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise VggCifarError(f"{name}: not a readable image (bad data URL)") from e
    if len(data) > max_bytes:
        raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB upload limit")
    return data


def received_path(path, roots: tuple[str, ...]) -> str:
    """The real path (symlinks resolved) of ``path`` if it names a regular file inside one of
    ``roots``; anything else raises :data:`REFUSED`, the same whatever the reason. Only
    ``stat`` is called: nothing is opened, so a FIFO or ``/dev/zero`` costs nothing."""
    if not isinstance(path, str) or not path:
        raise VggCifarError(REFUSED)
    try:
        real = os.path.realpath(path)
        if not any(real.startswith(root + os.sep) for root in roots):
            raise VggCifarError(REFUSED)
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise VggCifarError(REFUSED)
    except (OSError, ValueError) as e:  # missing, unreadable, an embedded NUL byte
        raise VggCifarError(REFUSED) from e
    return real


def _read_received(path: str, roots: tuple[str, ...], name: str, max_bytes: int) -> bytes:
    """The bytes of ``path`` if :func:`received_path` accepts it, at most ``max_bytes`` long.
    Anything else raises :data:`REFUSED`, the same whatever the reason."""
    real = received_path(path, roots)
    try:  # the file opened is the one checked: a link or FIFO swapped in since is refused
        data = read_plain_file(real, max_bytes)
    except OSError as e:
        raise VggCifarError(REFUSED) from e
    if len(data) > max_bytes:
        raise VggCifarError(f"{name}: image is over the {max_bytes / 2**20:g} MB upload limit")
    return data


def upload_only_image(roots, **kwargs):
    """A ``gr.Image`` input that lets Gradio take in only files it received itself.

    For each file a request names, Gradio copies it into its cache *before* any handler runs
    (hashing it on the event loop: ``/dev/zero`` never ends), and under ``mount_gradio_app`` it
    does not check where the file is. This component refuses, at that very step, every path
    :func:`received_path` refuses, with :data:`REFUSED`: one rule whether the page is launched
    (``vgg-demo``) or mounted (``vgg-serve``), and nothing copied.

    ``roots``: a list, filled in once the page knows its folders (see :func:`build_demo`).
    """
    import gradio as gr

    image = gr.Image(**kwargs)
    copy_to_cache = image.async_move_resource_to_block_cache

    async def checked_copy_to_cache(url_or_file_path):
        # URLs too: Gradio would download them, and the page never sends one.
        if url_or_file_path is not None:
            try:
                received_path(str(url_or_file_path), tuple(roots))
            except VggCifarError as e:
                raise gr.Error(REFUSED, print_exception=False) from e
        return await copy_to_cache(url_or_file_path)

    # On the instance, not in a subclass: Gradio writes a .pyi next to any module defining a
    # component class, and would draw an unknown component name as nothing.
    image.async_move_resource_to_block_cache = checked_copy_to_cache
    return image


def check_image_type(data: bytes, name: str) -> None:
    """Refuse content that Pillow does not identify as one of :data:`ACCEPTED_FORMATS` (only
    the header is read), so no other image plugin ever parses what a client sent; damaged or
    oversized images of an accepted type are left to the decoder, which says what is wrong."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise VggCifarError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bomb warning: the decoder refuses it
            Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).close()
    except UnidentifiedImageError as e:
        raise VggCifarError(f"{name}: not a readable image (unknown or corrupt format; "
                            f"accepted: {ACCEPTED_NAMES})") from e
    except Exception:  # noqa: BLE001 - an accepted type, but damaged: open_image reports it
        pass


def received_image(payload, roots, max_bytes: int) -> tuple[bytes, str]:
    """The image a client sent, from the Image component's raw value (a FileData dict, or a
    plain path; ``preprocess=False`` so Pillow never sees it before we do).

    Args:
        payload: ``{"path", "url", "orig_name", ...}`` or a path string.
        roots: real paths of the folders holding what Gradio received (its upload folder) and
            the app's own examples; a path is read only if it lies inside one.
        max_bytes: the upload limit.
    Returns:
        ``(image bytes, display name)``: the bytes are at most ``max_bytes`` and of an
        accepted image type.
    Raises:
        VggCifarError: :data:`REFUSED` for any other path or URL; a one-line reason for an
            oversized, empty or non-image upload.
    """
    if isinstance(payload, str):
        payload = {"path": payload}
    if not isinstance(payload, dict):
        raise VggCifarError(REFUSED)
    path, url = payload.get("path"), payload.get("url")
    name = _display_name(payload.get("orig_name") or (path if isinstance(path, str) else None))
    if isinstance(path, str) and path:
        data = _read_received(path, tuple(roots), name, max_bytes)
    elif isinstance(url, str) and url.startswith("data:"):
        data = _decode_data_url(url, name, max_bytes)
    else:
        raise VggCifarError(REFUSED)
    check_image_type(data, name)
    return data, name
