"""Reading CIFAR-10 from disk: the `cifar-10-batches-py` pickles or an image-folder layout.

Decoded images are cached as one uint8 tensor file, keyed by a fingerprint of the source files,
so later runs start in about a second; a stale or corrupt cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import VggCifarError
from ..images import IMAGE_EXTENSIONS, read_image
from ..preprocessing import CIFAR10_CLASSES

CACHE_VERSION = 1
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"


@dataclass
class CifarData:
    """The whole dataset in memory.

    ``train_x``/``test_x``: ``[N, 3, 32, 32]`` uint8; ``train_y``/``test_y``: ``[N]`` int64.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    source: str
    kind: str  # "batches-py" or "image-folder"


def _batches_dir(path: Path) -> Path | None:
    for cand in (path, path / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() and (cand / TEST_FILE).is_file():
            return cand
    return None


def _image_folder_dir(path: Path) -> Path | None:
    if (path / "train").is_dir() and (path / "test").is_dir():
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    if len(subdirs) == 1:  # an archive unpacked into its own folder
        return _image_folder_dir(subdirs[0])
    return None


def detect_format(path: str | os.PathLike) -> tuple[str, Path]:
    """Return ``("batches-py" | "image-folder", root)`` for a data path.

    Raises:
        VggCifarError: the path is neither format.
    """
    path = Path(path)
    if (d := _batches_dir(path)) is not None:
        return "batches-py", d
    if (d := _image_folder_dir(path)) is not None:
        return "image-folder", d
    raise VggCifarError(
        f"{path} is not CIFAR-10 data: expected a cifar-10-batches-py folder (data_batch_1..5, "
        "test_batch) or an image folder with train/<class>/ and test/<class>/; unpack the data "
        "there or point --data at it")


def _unpickle(file: Path) -> dict:
    try:
        with open(file, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise VggCifarError(f"{file} is not a readable CIFAR-10 batch file ({e})") from e


def _read_batches(root: Path):
    xs, ys = [], []
    for name in BATCH_FILES:
        file = root / name
        if not file.is_file():
            raise VggCifarError(f"{root} lacks {name}; the cifar-10-batches-py folder is incomplete")
        d = _unpickle(file)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"], dtype=np.int64))
    t = _unpickle(root / TEST_FILE)
    classes = CIFAR10_CLASSES
    meta = root / "batches.meta"
    if meta.is_file():
        names = _unpickle(meta).get("label_names")
        if names:
            classes = tuple(names)
    return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)),
            torch.from_numpy(np.asarray(t["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)),
            torch.from_numpy(np.asarray(t["labels"], dtype=np.int64)), classes)


def _list_image_folder(root: Path):
    """Sorted class names and ``{split: [(path, label), ...]}``."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise VggCifarError(f"{root / 'train'} has no class folders")
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if test_classes != classes:
        raise VggCifarError(f"{root}: train/ and test/ have different class folders")
    files = {}
    for split in ("train", "test"):
        items = []
        for label, cls in enumerate(classes):
            for f in sorted((root / split / cls).iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    items.append((f, label))
        if not items:
            raise VggCifarError(f"{root / split} holds no images")
        files[split] = items
    return tuple(classes), files


def _decode_all(items, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    out = torch.empty((len(items), 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([lab for _, lab in items], dtype=torch.int64)

    def work(i):
        out[i] = read_image(items[i][0], size=32)

    # Pillow releases the GIL while decoding, so threads help on many small files.
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as ex:
        list(tqdm(ex.map(work, range(len(items)), chunksize=256), total=len(items),
                  desc=desc, unit="img", leave=False, mininterval=1.0))
    return out, labels


def _fingerprint(kind: str, root: Path, files=None) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}|{kind}|{root.resolve()}".encode())
    paths = ([root / n for n in BATCH_FILES + [TEST_FILE]] if kind == "batches-py"
             else [p for split in ("train", "test") for p, _ in files[split]])
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _tensor_digest(tensors) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$VGGCIFAR_CACHE`` or ``~/.cache/vggcifar``."""
    return Path(os.environ.get("VGGCIFAR_CACHE", Path.home() / ".cache" / "vggcifar"))


def _load_cache(file: Path, fingerprint: str):
    """The cached tensors, or ``(None, reason)`` when missing, stale or corrupt."""
    if not file.exists():
        return None, "no cache"
    try:
        c = torch.load(file, map_location="cpu", weights_only=True)
        if c.get("fingerprint") != fingerprint:
            return None, "stale cache (source files changed)"
        tensors = [c["train_x"], c["train_y"], c["test_x"], c["test_y"]]
        if _tensor_digest(tensors) != c.get("digest"):
            return None, "corrupt cache (checksum mismatch)"
        return c, "ok"
    except Exception as e:
        return None, f"corrupt cache ({type(e).__name__})"


def load_cifar10(path: str | os.PathLike, *, download: bool = True, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, verbose: bool = True) -> CifarData:
    """Load CIFAR-10 from ``path`` (either format, detected), downloading the batches-py version
    into ``path`` when it is missing or empty and ``download`` is true.

    Raises:
        VggCifarError: the path is neither format, or the data is missing and cannot be
            downloaded.
    """
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        if not download:
            raise VggCifarError(f"no data at {path}; pass --data pointing to CIFAR-10")
        _download(path)
    kind, root = detect_format(path)
    files = None
    if kind == "image-folder":
        classes, files = _list_image_folder(root)
    fingerprint = _fingerprint(kind, root, files)
    cache_file = Path(cache_dir or default_cache_dir()) / f"cifar10-{fingerprint[:20]}.pt"
    if cache:
        c, reason = _load_cache(cache_file, fingerprint)
        if c is not None:
            return CifarData(c["train_x"], c["train_y"], c["test_x"], c["test_y"],
                             tuple(c["classes"]), str(root), kind)
        if verbose and reason != "no cache":
            print(f"vggcifar: {reason} at {cache_file}; rebuilding it")
    if kind == "batches-py":
        train_x, train_y, test_x, test_y, classes = _read_batches(root)
    else:
        train_x, train_y = _decode_all(files["train"], "decoding train images")
        test_x, test_y = _decode_all(files["test"], "decoding test images")
    data = CifarData(train_x, train_y, test_x, test_y, tuple(classes), str(root), kind)
    if cache:
        _save_cache(cache_file, fingerprint, data, verbose)
    return data


def _save_cache(file: Path, fingerprint: str, d: CifarData, verbose: bool) -> None:
    from ..checkpoint import atomic_write

    payload = {"fingerprint": fingerprint, "classes": list(d.classes),
               "train_x": d.train_x, "train_y": d.train_y, "test_x": d.test_x, "test_y": d.test_y,
               "digest": _tensor_digest([d.train_x, d.train_y, d.test_x, d.test_y])}
    try:
        atomic_write(file, lambda tmp: torch.save(payload, tmp))
    except OSError as e:  # a read-only home must not stop training
        if verbose:
            print(f"vggcifar: could not write data cache {file} ({e}); continuing without it")


def _download(path: Path) -> None:
    try:
        from torchvision.datasets import CIFAR10

        path.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(path), train=True, download=True)
    except Exception as e:
        raise VggCifarError(
            f"no CIFAR-10 data at {path} and downloading it failed ({type(e).__name__}); "
            "without network, unpack CIFAR-10 (cifar-10-batches-py or an image folder) and pass "
            "--data PATH") from e
