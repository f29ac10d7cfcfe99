"""Reading CIFAR-10 from disk: the `cifar-10-batches-py` pickles or an image-folder layout.

Decoded images are cached as one uint8 tensor file, keyed by a fingerprint of the source files,
so later runs start in about a second; a stale or corrupt cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import os
import sys
import pickle
import re
import secrets
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checks import class_names_problem
from ..errors import VggCifarError
from ..io import cache_dir as default_cache_dir  # $VGGCIFAR_CACHE
from ..io import open_own_file, private_dir
from ..image_formats import IMAGE_EXTENSIONS
from ..images import read_image
from ..preprocessing import CIFAR10_CLASSES

CACHE_VERSION = 1
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
# A CIFAR image is a few KB; a data folder's image far past any photo's size is refused before
# it is opened (the decoder would read it whole first).
MAX_IMAGE_FILE_BYTES = 64 * 2**20
# How far detection follows a chain of lone subfolders (an archive unpacked into its own folder,
# perhaps twice); a deep chain of them is not CIFAR-10.
MAX_WRAPPING_FOLDERS = 3


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
    for _ in range(MAX_WRAPPING_FOLDERS + 1):
        if (path / "train").is_dir() and (path / "test").is_dir():
            return path
        subdirs = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
        if len(subdirs) != 1:
            return None
        path = subdirs[0]  # an archive unpacked into its own folder
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


class _Refused(pickle.UnpicklingError):
    """A pickle names something a CIFAR-10 batch never holds."""


class _ArrayType:
    """Stands in for ``numpy.ndarray`` in a batch pickle, where it is only ever the first argument
    of ``_reconstruct``: the real class would let a pickle call ``ndarray(shape)`` directly."""


def _reconstruct(cls, shape, dtype):
    # numpy pickles an array as _reconstruct(ndarray, (0,), 'b') followed by __setstate__ with
    # the real shape, dtype and bytes; ignoring the arguments means a pickle cannot make this
    # allocate anything, and __setstate__ checks the bytes against the shape.
    if cls is not _ArrayType:
        raise _Refused("numpy _reconstruct of something other than ndarray")
    return np.ndarray((0,), dtype=np.uint8)


def _dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:  # object arrays unpickle arbitrary Python objects
        raise _Refused("numpy arrays of Python objects")
    return dt


def _frombuffer(buf, dtype, shape, order):  # numpy's pickle protocol-5 form of an array
    return np.frombuffer(buf, dtype=_dtype(dtype)).reshape(shape, order=order)


def _latin1(text, encoding="latin1"):  # how Python 3 writes bytes into a protocol-2 pickle
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _same_dtype_state(state, own) -> bool:
    """True if ``state`` restates the dtype's ``own`` (its byte order may differ: a pickle from
    a big-endian machine)."""
    return (isinstance(state, tuple) and len(state) == len(own) and state[1] in ("<", ">", "=", "|")
            and state[:1] + state[2:] == own[:1] + own[2:])


def _load_build(unpickler) -> None:
    """The BUILD opcode (``obj.__setstate__(state)``), refusing any state that would change a
    dtype: a pickle may restate what ``numpy.dtype(...)`` made, never set flags such as
    ``hasobject`` on a ``uint8`` afterwards (that bypasses :func:`_dtype`'s check)."""
    obj, state = unpickler.stack[-2], unpickler.stack[-1]
    if isinstance(obj, np.dtype) and not _same_dtype_state(state, obj.__reduce__()[2]):
        raise _Refused(f"a change of numpy dtype {obj} after it was made (state {state!r:.80})")
    pickle._Unpickler.dispatch[pickle.BUILD[0]](unpickler)


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, strings, bytes, numbers and
    numpy arrays of plain dtypes (as written by the Python 2 originals or by Python 3). Any other
    global - ``os.system``, ``builtins.eval``, the rest of numpy - is refused before it runs,
    which ``pickle.load`` would not do, and so is any change to a dtype once made.

    The pure-Python unpickler, because only it lets an opcode be checked; a batch is a handful
    of opcodes around one large bytes object, so it is as fast as the C one here.
    """

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy < 2
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy >= 2
               ("numpy.core.numeric", "_frombuffer"): _frombuffer,
               ("numpy._core.numeric", "_frombuffer"): _frombuffer,
               ("numpy", "ndarray"): _ArrayType, ("numpy", "dtype"): _dtype,
               ("_codecs", "encode"): _latin1}

    def find_class(self, module, name):
        try:
            return self.ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"refused to unpickle {module}.{name}") from None


def _unpickle(file: Path):
    try:
        with open(file, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise VggCifarError(
            f"{file}: {e}; a CIFAR-10 batch holds only dicts, lists, strings, numbers and numpy "
            "arrays, so this file was not written as one and may be malicious: re-download "
            "CIFAR-10") from None
    except Exception as e:  # corrupt or truncated pickles raise nearly anything
        raise VggCifarError(f"{file} is not a readable CIFAR-10 batch file "
                            f"({' '.join(f'{type(e).__name__}: {e}'.split())[:200]})") from None


def _batch_arrays(d, file: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``data`` ``[N, 3, 32, 32]`` uint8 and ``labels`` ``[N]`` int64 of one unpickled batch,
    checked: an error names the file and what is wrong, instead of a reshape traceback or a
    label that silently indexes past the classes."""
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise VggCifarError(f"{file}: not a CIFAR-10 batch (expected a dict with 'data' and "
                            "'labels')")
    data, labels = d["data"], d["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        got = (f"{data.dtype} array of shape {list(data.shape)}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise VggCifarError(f"{file}: 'data' must be a uint8 array of shape [N, 3072], got {got}")
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or len(labels) != len(data):
        raise VggCifarError(f"{file}: 'labels' must be a list of one integer per image "
                            f"({len(data)} images)")
    for v in labels:
        if type(v) is not int or not 0 <= v < num_classes:
            # never repr() the value: a 5,000-digit int or a deeply nested list would raise
            found = (str(v) if type(v) is int and abs(v) < 10**12
                     else "a larger integer" if type(v) is int
                     else repr(v) if type(v) is str and len(v) <= 20 else f"a {type(v).__name__}")
            raise VggCifarError(f"{file}: labels must be integers 0..{num_classes - 1}, "
                                f"found {found}")
    labels = np.array(labels, dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _read_batches(root: Path, test_only: bool = False):
    classes = CIFAR10_CLASSES
    meta = root / META_FILE
    if meta.is_file():
        names = _unpickle(meta)
        names = names.get("label_names") if isinstance(names, dict) else None
        if names:
            if not isinstance(names, list):
                raise VggCifarError(f"{meta}: 'label_names' must be a list of class names")
            if (problem := class_names_problem(names)) is not None:
                raise VggCifarError(f"{meta}: 'label_names': {problem}")
            classes = tuple(names)
    xs, ys = [], []  # load_cifar10 has checked that every batch file is there
    if test_only:  # empty training arrays stand in for the five training batches
        xs.append(np.zeros((0, 3, 32, 32), np.uint8))
        ys.append(np.zeros(0, np.int64))
    for name in ([] if test_only else BATCH_FILES) + [TEST_FILE]:
        file = root / name
        x, y = _batch_arrays(_unpickle(file), file, len(classes))
        xs.append(x)
        ys.append(y)
    return (torch.from_numpy(np.concatenate(xs[:-1])), torch.from_numpy(np.concatenate(ys[:-1])),
            torch.from_numpy(xs[-1]), torch.from_numpy(ys[-1]), classes)


def _check_batch_files(root: Path) -> None:
    for name in BATCH_FILES + [TEST_FILE]:
        if not (root / name).is_file():
            raise VggCifarError(f"{root} lacks {name}; the cifar-10-batches-py folder is incomplete")


def _list_image_folder(root: Path):
    """Sorted class names and ``{split: [(path, label), ...]}``."""
    def class_dirs(split: str) -> list[str]:
        # Hidden folders (.ipynb_checkpoints, .DS_Store's kin) are tools' leftovers, not classes.
        return sorted(p.name for p in (root / split).iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    classes = class_dirs("train")
    if not classes:
        raise VggCifarError(f"{root / 'train'} has no class folders")
    test_classes = class_dirs("test")
    if test_classes != classes:
        only = sorted(set(classes) ^ set(test_classes))
        raise VggCifarError(
            f"{root}: train/ and test/ have different class folders (in only one of them: "
            f"{', '.join(ascii(c) for c in only[:5])}{', ...' if len(only) > 5 else ''})")
    if (problem := class_names_problem(classes)) is not None:
        raise VggCifarError(f"{root}: the class folders are the class names: {problem}")
    files = {}
    for split in ("train", "test"):
        items = []
        for label, cls in enumerate(classes):
            found = 0
            # Hidden files are tools' leftovers too: macOS writes "._x.png" beside every x.png
            # in archives it makes, and they are not images.
            for f in sorted((root / split / cls).iterdir()):
                if (f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
                        and f.is_file()):
                    if f.stat().st_size > MAX_IMAGE_FILE_BYTES:
                        raise VggCifarError(
                            f"{f}: {f.stat().st_size / 2**20:.0f} MB is not a CIFAR image (at "
                            f"most {MAX_IMAGE_FILE_BYTES // 2**20} MB); remove it from the data "
                            "folder")
                    items.append((f, label))
                    found += 1
            if not found:  # a class never seen in training, or a test class scored 0 of 0
                raise VggCifarError(f"{root / split / cls} holds no images; every class needs "
                                    "images in train/ and test/")
        files[split] = items
    return tuple(classes), files


def _decode_all(items, desc: str, verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    from tqdm.auto import tqdm

    out = torch.empty((len(items), 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([lab for _, lab in items], dtype=torch.int64)

    def work(i):
        out[i] = read_image(items[i][0], size=32)  # any decoding failure: VggCifarError

    # Pillow releases the GIL while decoding, so threads help on many small files.
    ex = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2))
    try:
        list(tqdm(ex.map(work, range(len(items)), chunksize=256), total=len(items),
                  desc=desc, unit="img", leave=False, mininterval=1.0, disable=not verbose))
    except VggCifarError as e:
        raise VggCifarError(f"{e}; fix or remove that file from the data folder") from e
    finally:
        ex.shutdown(cancel_futures=True)  # after a bad file, do not decode the rest for nothing
    return out, labels


def _fingerprint(kind: str, root: Path, files=None) -> str:
    # os.fsencode: a file name need not be valid UTF-8 (it is the same bytes when it is)
    h = hashlib.sha256(os.fsencode(f"v{CACHE_VERSION}|{kind}|{root.resolve()}"))
    if kind == "batches-py":
        paths = [root / n for n in BATCH_FILES + [TEST_FILE]]
        if (root / META_FILE).is_file():  # the class names
            paths.append(root / META_FILE)
    else:
        paths = [p for split in ("train", "test") for p, _ in files[split]]
    for p in paths:
        st = p.stat()
        h.update(os.fsencode(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n"))
    return h.hexdigest()


def _tensor_digest(tensors) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_cache(file: Path, fingerprint: str):
    """The cached tensors, or ``(None, reason)`` when missing, stale, corrupt or not ours.

    Only a regular file this user owns, in a folder only this user can write to, is read (a
    cache's name is predictable from the data's path, sizes and times); and what it holds must
    still be CIFAR-shaped data: its checksum is stored in the same file, so it proves integrity,
    not who wrote it."""
    try:
        if not private_dir(file.parent):
            return None, "cache folder not private (another user's, a link, or not a folder)"
        f = open_own_file(file)
    except FileNotFoundError:
        return None, "no cache"
    except OSError as e:
        return None, f"unusable cache ({e.strerror or e})"
    try:
        with f:
            c = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(c, dict):
            return None, "corrupt cache (not a mapping)"
        if c.get("fingerprint") != fingerprint:
            return None, "stale cache (source files changed)"
        if (problem := _cache_problem(c)) is not None:
            return None, f"corrupt cache ({problem})"
        tensors = [c["train_x"], c["train_y"], c["test_x"], c["test_y"]]
        if _tensor_digest(tensors) != c.get("digest"):
            return None, "corrupt cache (checksum mismatch)"
        return c, "ok"
    except Exception as e:
        return None, f"corrupt cache ({type(e).__name__})"


def _cache_problem(c: dict) -> str | None:
    """What makes a loaded cache anything but images ``[N, 3, 32, 32]`` uint8 with int64 labels
    ``[N]`` in range of valid class names (None when it is that)."""
    classes = c.get("classes")
    if not isinstance(classes, (list, tuple)):
        return "no class names"
    if (problem := class_names_problem(list(classes))) is not None:
        return f"class names: {problem}"
    for split in ("train", "test"):
        x, y = c.get(f"{split}_x"), c.get(f"{split}_y")
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() == 4
                and tuple(x.shape[1:]) == (3, 32, 32) and x.shape[0] > 0):
            return f"{split} images are not uint8 [N, 3, 32, 32]"
        if not (isinstance(y, torch.Tensor) and y.dtype == torch.int64 and y.dim() == 1
                and len(y) == len(x)):
            return f"{split} labels are not int64 [N] matching the images"
        if int(y.min()) < 0 or int(y.max()) >= len(classes):
            return f"{split} labels outside 0..{len(classes) - 1}"
    return None


def load_cifar10(path: str | os.PathLike, *, download: bool = True, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, verbose: bool = True,
                 test_only: bool = False) -> CifarData:
    """Load CIFAR-10 from ``path`` (either format, detected), downloading the batches-py version
    into ``path`` when ``download`` is true and ``path`` is an empty folder, or a missing one
    whose parent folder exists (a deep mistyped path is never created).

    ``test_only``: for an evaluation: the cache when there is one, else only the test images
    are read (``train_x``/``train_y`` empty, and no cache written), so a damaged training image
    cannot block it and 10,000 images are decoded instead of 60,000.

    Raises:
        VggCifarError: the path is missing or neither format; the data is missing and cannot be
            downloaded; a batch file holds anything but CIFAR-10 arrays (it is refused before
            any of it runs); an image of the folder cannot be decoded (named).
    """
    path = Path(path)
    if not path.exists():
        # A mistyped --data must not become a new folder tree and a 170 MB download: create
        # (one level) and download only into a folder whose parent exists.
        if not download or not path.parent.is_dir():
            raise VggCifarError(
                f"{path}: no such folder; pass --data the folder holding cifar-10-batches-py or "
                "train/ and test/"
                + ("" if not download else f" (a download needs an existing {path.parent})"))
        _download(path, create=True)
    elif path.is_dir() and not any(path.iterdir()):
        if not download:
            raise VggCifarError(f"no data at {path}; pass --data pointing to CIFAR-10")
        _download(path)
    try:
        kind, root = detect_format(path)
        files = None
        if kind == "image-folder":
            classes, files = _list_image_folder(root)
        else:
            _check_batch_files(root)
        fingerprint = _fingerprint(kind, root, files)
    except OSError as e:  # an unreadable folder, a link loop, a file removed meanwhile
        raise VggCifarError(f"cannot read the data at {path}: {e.strerror or e}"
                            + (f" ({e.filename})" if e.filename else "")) from None
    cache_file = Path(cache_dir or default_cache_dir()) / f"cifar10-{fingerprint[:20]}.pt"
    if cache:
        c, reason = _load_cache(cache_file, fingerprint)
        if c is not None and kind == "image-folder" and tuple(c["classes"]) != tuple(classes):
            # Same image files, other classes: a cache made when hidden folders counted.
            c, reason = None, "stale cache (class folders changed)"
        if c is not None:
            return CifarData(c["train_x"], c["train_y"], c["test_x"], c["test_y"],
                             tuple(c["classes"]), str(root), kind)
        if verbose and reason != "no cache":
            then = "reading the test images" if test_only else "rebuilding it"
            print(f"vggcifar: {reason} at {cache_file}; {then}", file=sys.stderr)
    if kind == "batches-py":
        train_x, train_y, test_x, test_y, classes = _read_batches(root, test_only)
    else:
        train_x, train_y = ((torch.zeros(0, 3, 32, 32, dtype=torch.uint8),
                             torch.zeros(0, dtype=torch.int64)) if test_only else
                            _decode_all(files["train"], "decoding train images", verbose))
        test_x, test_y = _decode_all(files["test"], "decoding test images", verbose)
    data = CifarData(train_x, train_y, test_x, test_y, tuple(classes), str(root), kind)
    if cache and not test_only:  # a cache holds the whole dataset
        _save_cache(cache_file, fingerprint, data, verbose)
    return data


# A cache file being written: ".<final name>.<pid>@<host>.<random>.tmp". The owner in the name
# lets a later run tell a killed writer's leftover (hundreds of MB) from a live writer's file.
_TMP = re.compile(r"^\.(?P<final>cifar10-[0-9a-f]+\.pt)\.(?:(?P<pid>\d+)@(?P<host>.+)\.)?\w+\.tmp$")
STALE_TMP_S = 3600  # no cache write takes an hour: older temp files are leftovers, whoever's


def _stale(tmp: Path) -> bool:
    m = _TMP.match(tmp.name)
    if m is None:
        return False  # not ours
    try:
        if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
            return True
    except OSError:
        return False
    if m["pid"] is None or m["host"] != socket.gethostname() or os.name != "posix":
        return False  # owner unknown (older name, other machine; on Windows os.kill would kill)
    try:
        os.kill(int(m["pid"]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # another user's, or a planted 30-digit pid
        return False
    return False


def _remove_stale_temps(folder: Path) -> None:
    """Delete cache temp files left by killed cache builds (SIGKILL, OOM, power loss), which no
    ``finally`` can remove."""
    for tmp in folder.glob(".cifar10-*.tmp"):
        if _stale(tmp):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # someone else's file: never a reason not to write the cache
                pass


def _write_cache_file(file: Path, write_fn) -> None:
    """Write through a temp file renamed into place; the temp file is removed on any exception
    (Ctrl-C included). Not fsynced: a torn cache fails its checksum and is rebuilt."""
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # decoded private data stays so
    if not private_dir(file.parent):
        raise PermissionError(f"{file.parent} is not a private folder (another user's, or a "
                              "link); the data cache is not written there")
    _remove_stale_temps(file.parent)
    owner = f"{os.getpid()}@{socket.gethostname()}"
    tmp = file.parent / f".{file.name}.{owner}.{secrets.token_hex(4)}.tmp"
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_cache(file: Path, fingerprint: str, d: CifarData, verbose: bool) -> None:
    payload = {"fingerprint": fingerprint, "classes": list(d.classes),
               "train_x": d.train_x, "train_y": d.train_y, "test_x": d.test_x, "test_y": d.test_y,
               "digest": _tensor_digest([d.train_x, d.train_y, d.test_x, d.test_y])}
    try:
        _write_cache_file(file, lambda tmp: torch.save(payload, tmp))
    except OSError as e:  # a read-only home must not stop training
        if verbose:
            print(f"vggcifar: could not write data cache {file} ({e}); continuing without it",
                  file=sys.stderr)


def _download(path: Path, create: bool = False) -> None:
    """Download the batches-py version into ``path``; ``create``: make ``path`` first (its parent
    exists), and remove it again when the download fails, leaving no trace of a wrong path."""
    made = False
    try:
        from torchvision.datasets import CIFAR10

        if create:
            path.mkdir()
            made = True
        CIFAR10(str(path), train=True, download=True)
    except Exception as e:
        if made:
            shutil.rmtree(path, ignore_errors=True)  # only what this call made and wrote
        raise VggCifarError(
            f"no CIFAR-10 data at {path} and downloading it failed ({type(e).__name__}); "
            "without network, unpack CIFAR-10 (cifar-10-batches-py or an image folder) and pass "
            "--data PATH") from e
