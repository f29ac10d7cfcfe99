"""Reading data safely: no pickle executed, one bad image is a named error, bounded decoding
memory, no folder created for a mistyped --data, no cache temp file left behind."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vggcifar.data import load_cifar10
from vggcifar.errors import VggCifarError
from vggcifar.images import pil_to_uint8, read_image
from vggcifar.testing import write_batches_py, write_image_folder

CORPUS = Path(__file__).parent / "corpus" / "decoder"


# ---- CIFAR batch pickles ---------------------------------------------------------------------

class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious batch file carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _batches(tmp_path: Path) -> Path:
    return write_batches_py(tmp_path / "data", n_train=50, n_test=10)


def _rewrite(file: Path, change) -> None:
    with open(file, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    change(d)
    with open(file, "wb") as f:
        pickle.dump(d, f, protocol=2)


def _evil_folder(tmp_path: Path, func, *args) -> Path:
    folder = _batches(tmp_path)
    _rewrite(folder / "data_batch_3", lambda d: d.update(batch_label=_Payload(func, *args)))
    return folder


@pytest.mark.parametrize("how", ["os.system", "exec"])
def test_batch_pickle_with_a_payload_is_refused_unrun(tmp_path, how):
    marker = tmp_path / "pwned"
    folder = (_evil_folder(tmp_path, os.system, f"touch '{marker}'") if how == "os.system"
              else _evil_folder(tmp_path, exec, f"open({str(marker)!r}, 'w').close()"))
    with pytest.raises(VggCifarError, match=r"data_batch_3: refused to unpickle .*malicious"):
        load_cifar10(folder, download=False, cache=False)
    assert not marker.exists()


def test_vgg_train_refuses_a_malicious_batch_with_exit_2(tmp_path):
    from vggcifar.training.cli import main

    marker = tmp_path / "pwned"
    folder = _evil_folder(tmp_path, exec, f"open({str(marker)!r}, 'w').close()")
    r = CliRunner().invoke(main, ["--data", str(folder), "--out", str(tmp_path / "runs"),
                                  "--device", "cpu", "--epochs", "1", "--width", "0.125",
                                  "--quiet", "--no-download"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "data_batch_3" in lines[0]
    assert not marker.exists()


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the published CIFAR-10 files are (Python 2 cPickle, numpy 1.x:
    ``numpy.core.multiarray._reconstruct`` and byte strings as ``str``), opcode by opcode."""
    n, d = data.shape
    raw = data.tobytes()
    return (b"\x80\x02}(U\x04data"
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
            + b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", d) + b"\x86"
            + b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff"
              b"\xff\xffK\x00tb"
            + b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
            + b"U\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu.")


@pytest.mark.parametrize("protocol", ["python2", 0, 2, 4, 5])
def test_real_batch_pickles_of_every_protocol_still_load(tmp_path, protocol):
    folder = _batches(tmp_path)
    with open(folder / "data_batch_2", "rb") as f:
        want = pickle.load(f, encoding="latin1")
    x, y = want["data"], want["labels"]
    raw = (_py2_batch(x, y) if protocol == "python2"
           else pickle.dumps({"data": x, "labels": y, "batch_label": "b2"}, protocol=protocol))
    (folder / "data_batch_2").write_bytes(raw)
    d = load_cifar10(folder, download=False, cache=False)
    assert torch.equal(d.train_x[10:20].reshape(10, -1), torch.from_numpy(x))
    assert d.train_y[10:20].tolist() == y


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(data=d["data"].astype(np.float32)),
     r"uint8 array of shape \[N, 3072\], got float32"),
    (lambda d: d.update(data=d["data"][:, :100]), r"got uint8 array of shape \[10, 100\]"),
    (lambda d: d.update(data=d["data"].tolist()), "got list"),
    (lambda d: d["labels"].__setitem__(0, 12), r"labels must be integers 0\.\.9, found 12"),
    (lambda d: d["labels"].__setitem__(0, -1), "found -1"),
    (lambda d: d["labels"].__setitem__(0, "cat"), "found 'cat'"),
    (lambda d: d["labels"].pop(), "one integer per image"),
    (lambda d: d.pop("labels"), "expected a dict with 'data' and 'labels'"),
])
def test_batch_contents_are_checked(tmp_path, change, message):
    folder = _batches(tmp_path)
    _rewrite(folder / "data_batch_4", change)
    with pytest.raises(VggCifarError, match=message) as e:
        load_cifar10(folder, download=False, cache=False)
    assert "data_batch_4" in str(e.value) and "\n" not in str(e.value)


def test_object_arrays_in_a_batch_are_refused(tmp_path):
    folder = _batches(tmp_path)
    _rewrite(folder / "test_batch", lambda d: d.update(data=np.array([1, "x"], dtype=object)))
    with pytest.raises(VggCifarError, match="test_batch: .*Python objects"):
        load_cifar10(folder, download=False, cache=False)



class _FlaggedUint8:
    """Pickles as ``numpy.dtype('u1')`` followed by a ``__setstate__`` that sets the object
    flags (``hasobject``) on it: what issue 21 found passing the "no object arrays" guard."""

    def __reduce__(self):
        return np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, 0x3F)


class _ArrayOf:
    """Pickles as numpy does an array (``_reconstruct`` then ``__setstate__``), with ``dtype``."""

    def __init__(self, dtype, n):
        self.dtype, self.n = dtype, n

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (self.n, 3072), self.dtype, False, bytes(self.n * 3072)))


@pytest.mark.parametrize("where", ["array", "alone"])
def test_dtype_flag_changes_in_a_batch_are_refused(tmp_path, where):
    folder = _batches(tmp_path)
    _rewrite(folder / "test_batch", lambda d: d.update(
        data=_ArrayOf(_FlaggedUint8(), 10) if where == "array" else d["data"],
        labels=[0] * 10 if where == "array" else d["labels"],
        **({"batch_label": _FlaggedUint8()} if where == "alone" else {})))
    with pytest.raises(VggCifarError, match=r"test_batch: a change of numpy dtype uint8 .*"
                                            r"malicious"):
        load_cifar10(folder, download=False, cache=False)

# ---- one bad image ---------------------------------------------------------------------------

@pytest.mark.parametrize("exc, shown", [
    (IndexError("list index out of range"), "IndexError: list index out of range"),
    (struct.error("unpack requires a buffer"), "struct.error: unpack requires a buffer"),
    (TypeError("no int"), "TypeError: no int"), (KeyError(296), "KeyError: 296"),
    (ZeroDivisionError("by zero"), "ZeroDivisionError: by zero"), (EOFError(), "EOFError"),
    (MemoryError(), "MemoryError"),
    (RecursionError("deep\nand\nlong"), "RecursionError: deep and long"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "")
def test_every_decoder_exception_becomes_the_files_one_line_error(tmp_path, monkeypatch, exc,
                                                                   shown):
    from PIL import PngImagePlugin

    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)

    def broken(self, *a, **k):
        raise exc

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", broken)
    with pytest.raises(VggCifarError) as e:
        read_image(path)
    assert str(e.value) == f"{path}: cannot decode image ({shown})"


def test_conversion_failures_are_the_files_error_too(monkeypatch):
    img = Image.new("RGBA", (8, 8))

    def broken(self, *a, **k):
        raise TypeError("unsupported conversion")

    monkeypatch.setattr(Image.Image, "convert", broken)
    with pytest.raises(VggCifarError, match=r"up\.png: cannot decode image \(TypeError"):
        pil_to_uint8(img, 32, label="up.png")


def _folder_with_one_bad_image(tmp_path: Path) -> Path:
    root = write_image_folder(tmp_path / "imgs", n_train=20, n_test=10)
    crasher = CORPUS / "gif-IndexError-1.gif"  # an IndexError from Pillow in the old decoder
    shutil.copy(crasher, root / "train" / "cat" / "bad.gif")
    return root


def test_one_bad_image_in_a_data_folder_is_a_named_error(tmp_path):
    root = _folder_with_one_bad_image(tmp_path)
    with pytest.raises(VggCifarError, match=r"bad\.gif: cannot decode image.*fix or remove") as e:
        load_cifar10(root, download=False, cache=False)
    assert "\n" not in str(e.value)


def test_vgg_train_on_a_folder_with_a_bad_image_exits_2(tmp_path):
    from vggcifar.training.cli import main

    root = _folder_with_one_bad_image(tmp_path)
    r = CliRunner().invoke(main, ["--data", str(root), "--out", str(tmp_path / "runs"),
                                  "--device", "cpu", "--epochs", "1", "--width", "0.125",
                                  "--quiet", "--no-download"])
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("error: ") and "bad.gif: cannot decode image" in last
    assert "Traceback" not in r.stderr


# ---- bounded decoding memory -----------------------------------------------------------------

def test_16bit_images_convert_with_exact_rounding():
    v = (np.arange(1024, dtype=np.uint32) * 64 + 63).astype(np.uint16).reshape(32, 32)
    buf = io.BytesIO()
    Image.fromarray(v).save(buf, "PNG")
    x = read_image(buf.getvalue())
    want = np.floor(v / 65535 * 255 + 0.5).astype(np.uint8)  # the float formula of before
    assert all(np.array_equal(x[c].numpy(), want) for c in range(3))


_MEASURE = textwrap.dedent("""
    import resource, sys, time
    from vggcifar.images import read_image

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (
            1 << 20 if sys.platform == "darwin" else 1 << 10)

    read_image(sys.argv[1])  # warm up: lazy imports and plugin set-up are not the decode
    base = peak_mb()
    for path in sys.argv[2:]:  # in order of need: the peak after each is that image's
        t0 = time.perf_counter()
        x = read_image(path)
        assert tuple(x.shape) == (3, 32, 32)
        print(f"{path} {time.perf_counter() - t0:.2f} s {peak_mb() - base:.0f} MB")
""")


@pytest.mark.skipif(sys.platform == "win32", reason="ru_maxrss is POSIX")
def test_big_images_decode_in_bounded_memory_and_time(tmp_path):
    # A 6300x6300 16-bit PNG compresses to ~100 KB and took ~1 GB to decode (float64 copies);
    # a 50 MP JPEG photo was refused outright.
    a = np.zeros((6300, 6300), np.uint16)
    a[::7] = 40000
    a[:, ::5] = 1000
    Image.fromarray(a).save(tmp_path / "big16.png")
    del a
    photo = Image.new("L", (8200, 6150), 60)
    photo.paste(200, (1000, 1000, 5000, 4000))
    photo.save(tmp_path / "photo50mp.jpg", quality=80)
    del photo
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "small.png"),
                        str(tmp_path / "big16.png"), str(tmp_path / "photo50mp.jpg")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for line in r.stdout.splitlines():
        _, seconds, _, peak_mb, _ = line.split()
        assert float(seconds) < 10 and float(peak_mb) < 300, r.stdout


# ---- --data paths ----------------------------------------------------------------------------

def test_mistyped_data_path_is_neither_created_nor_downloaded(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: calls.append(a))
    for download in (True, False):
        with pytest.raises(VggCifarError, match="dta/cifar10: no such folder; pass --data"):
            load_cifar10(tmp_path / "dta" / "cifar10", download=download)
    assert not (tmp_path / "dta").exists() and not calls


def test_failed_download_removes_the_folder_it_made(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, *a, **k):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(VggCifarError, match="downloading it failed"):
        load_cifar10(tmp_path / "cifar10")
    assert not (tmp_path / "cifar10").exists()
    (tmp_path / "empty").mkdir()  # a folder the user made is kept, whatever happens
    with pytest.raises(VggCifarError, match="downloading it failed"):
        load_cifar10(tmp_path / "empty")
    assert (tmp_path / "empty").is_dir()


# ---- cache temp files ------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys, torch
    from vggcifar.data import load_cifar10

    def save_then_die(obj, file):  # SIGKILL mid-write: no finally, no except runs
        with open(file, "wb") as f:
            f.write(b"x" * 100_000)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    load_cifar10(sys.argv[1], cache_dir=sys.argv[2], download=False, verbose=False)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_cache_build_leaves_no_temp_file_for_long(tmp_path):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(folder), str(cache)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert len(list(cache.glob("*.tmp"))) == 1  # the leftover of the killed build
    load_cifar10(folder, cache_dir=cache, download=False)  # the next build sweeps it
    assert not list(cache.glob("*.tmp")) and len(list(cache.glob("*.pt"))) == 1


def test_stale_temps_are_swept_live_ones_and_others_kept(tmp_path):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    cache.mkdir()
    hours_ago = time.time() - 7200
    old = cache / ".cifar10-0123abcd.pt.k2j3_x9q.tmp"  # an older, owner-less name, 2 h old
    live = cache / f".cifar10-0123abcd.pt.{os.getpid()}@{socket.gethostname()}.0123abcd.tmp"
    other = cache / "notes.tmp"
    for f in (old, live, other):
        f.write_bytes(b"x")
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    load_cifar10(folder, cache_dir=cache, download=False)
    assert not old.exists() and live.exists() and other.exists()


def test_interrupted_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    # Ctrl-C during the write (also handled before; kept as a guard).
    folder, cache = _batches(tmp_path), tmp_path / "cache"

    def save_then_interrupt(obj, file):
        Path(file).write_bytes(b"x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        load_cifar10(folder, cache_dir=cache, download=False)
    assert list(cache.iterdir()) == []


# ---- hostile data folders (review of 2026-12-08) ---------------------------------------------

def _load(path):
    return load_cifar10(path, download=False, cache=False, verbose=False)


def _small_folder(tmp_path: Path, classes=("a", "b")) -> Path:
    root = tmp_path / "imgs"
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (10, 20, 30)).save(root / split / c / "0.png")
    return root


def test_an_incomplete_batches_folder_is_a_clear_error(tmp_path):
    folder = _batches(tmp_path)
    (folder / "data_batch_2").unlink()  # an interrupted download; the fingerprint stat()ed it
    with pytest.raises(VggCifarError, match="lacks data_batch_2"):
        load_cifar10(folder, download=False, verbose=False)
    (folder / "data_batch_2").symlink_to("data_batch_2")  # a link loop
    with pytest.raises(VggCifarError, match="lacks data_batch_2"):
        load_cifar10(folder, download=False, verbose=False)


@pytest.mark.parametrize("label, shown", [(10**5000, "a larger integer"), ("7" * 50, "a str"),
                                          ([[[]]], "a list"), (12, "12")],
                         ids=["huge-int", "long-string", "list", "too-large"])
def test_a_bad_label_is_named_without_printing_it_whole(tmp_path, label, shown):
    folder = _batches(tmp_path)
    _rewrite(folder / "test_batch", lambda d: d["labels"].__setitem__(0, label))
    with pytest.raises(VggCifarError, match=f"labels must be integers 0..9, found {shown}$"):
        _load(folder)


@pytest.mark.parametrize("names, message", [
    (["ok", "ok"] + [f"c{i}" for i in range(8)], "appears twice"),
    (["two\nlines"] + [f"c{i}" for i in range(9)], "control characters"),
    (["bad\udcff"] + [f"c{i}" for i in range(9)], "not valid UTF-8"),
])
def test_bad_label_names_in_batches_meta_are_refused(tmp_path, names, message):
    # they would break per_class.csv after the whole training (or merge two classes' rows)
    folder = _batches(tmp_path)
    _rewrite(folder / "batches.meta", lambda d: d.update(label_names=names))
    with pytest.raises(VggCifarError, match=message):
        _load(folder)


def test_the_cache_notices_new_class_names_in_batches_meta(tmp_path):
    folder = _batches(tmp_path)
    assert load_cifar10(folder, download=False, verbose=False).classes[0] == "airplane"
    _rewrite(folder / "batches.meta",
             lambda d: d.update(label_names=[f"new{i}" for i in range(10)]))
    assert load_cifar10(folder, download=False, verbose=False).classes[0] == "new0"


def test_odd_file_names_load(tmp_path):
    root = _small_folder(tmp_path)
    bad = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    shutil.copy(root / "train" / "a" / "0.png", root / "train" / "a" / bad)
    data = load_cifar10(root, download=False, verbose=False)  # the cache's fingerprint too
    assert len(data.train_y) == 3


def test_class_folder_problems_are_clear_errors(tmp_path):
    root = _small_folder(tmp_path)
    (root / "train" / "a" / "0.png").unlink()
    with pytest.raises(VggCifarError, match=r"train/a holds no images"):
        _load(root)  # a class the model would never see
    root = _small_folder(tmp_path / "2")
    (root / "test" / "c").mkdir()
    with pytest.raises(VggCifarError, match=r"different class folders \(in only one of them: "
                                            r"'c'\)"):
        _load(root)
    root = _small_folder(tmp_path / "3", classes=[f"k{i:04d}" for i in range(1001)])
    with pytest.raises(VggCifarError, match="1001 classes; a model has 1 to 1000"):
        _load(root)  # refused up front, not by the checkpoint check after the training


def test_hidden_files_are_skipped_and_huge_files_refused(tmp_path, monkeypatch):
    root = _small_folder(tmp_path)
    (root / "train" / "a" / "._0.png").write_bytes(b"\0\5\26\7 macOS AppleDouble")
    assert len(_load(root).train_y) == 2
    import vggcifar.data.sources as sources
    monkeypatch.setattr(sources, "MAX_IMAGE_FILE_BYTES", 50)
    with pytest.raises(VggCifarError, match=r"0\.png: 0 MB is not a CIFAR image"):
        _load(root)


def test_a_deep_chain_of_lone_folders_is_not_data(tmp_path):
    deep = tmp_path / "d"
    levels = [deep]
    for _ in range(1200):  # recursed once per level before (os.makedirs would too)
        levels.append(levels[-1] / "d")
    try:
        for p in levels:
            p.mkdir()
        with pytest.raises(VggCifarError, match="is not CIFAR-10 data"):
            _load(deep)
    finally:  # bottom-up: pytest's own clean-up of tmp_path would recurse too
        for p in reversed(levels):
            if p.is_dir():
                p.rmdir()
    nested = tmp_path / "n"
    shutil.copytree(_small_folder(tmp_path / "s"), nested / "x" / "y")
    assert len(_load(nested).classes) == 2  # an archive unpacked into its own folder(s)


# ---- the decoded-data cache as a place others may have written to ------------------------------
def _recrafted(cache_file: Path, change) -> None:
    """Rewrite a cache with ``change(payload)`` applied and a matching checksum (the checksum
    lives in the same file, so anyone who can write the file can make it match)."""
    from vggcifar.data import sources

    c = torch.load(cache_file, weights_only=True)
    change(c)
    c["digest"] = sources._tensor_digest([c["train_x"], c["train_y"], c["test_x"], c["test_y"]])
    torch.save(c, cache_file)


@pytest.mark.parametrize("change, reason", [
    (lambda c: c.update(train_y=c["train_y"] + 10), "train labels outside 0..9"),
    (lambda c: c.update(test_x=c["test_x"].double()), "test images are not uint8"),
    (lambda c: c.update(train_x=c["train_x"][:, :, :2, :2]), "train images are not uint8"),
    (lambda c: c.update(classes=["a"] * 10), "class names: "),
    (lambda c: c.update(test_y=c["test_y"][:-1]), "test labels are not int64 [N] matching"),
])
def test_a_crafted_cache_with_a_matching_checksum_is_not_used(tmp_path, capsys, change, reason):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    real = load_cifar10(folder, cache_dir=cache, download=False)
    _recrafted(next(cache.glob("*.pt")), change)
    again = load_cifar10(folder, cache_dir=cache, download=False)
    assert f"corrupt cache ({reason}" in capsys.readouterr().err
    assert torch.equal(again.train_y, real.train_y) and torch.equal(again.test_x, real.test_x)
    assert again.classes == real.classes


def test_the_cache_is_private_and_never_a_link_a_fifo_or_another_users(tmp_path, capsys):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    real = load_cifar10(folder, cache_dir=cache, download=False)
    file = next(cache.glob("*.pt"))
    # decoded data of a private folder is readable by its owner only
    assert cache.stat().st_mode & 0o077 == 0 and file.stat().st_mode & 0o077 == 0
    # a FIFO at the cache's name: no hang, rebuilt over
    file.unlink()
    os.mkfifo(file)
    assert torch.equal(load_cifar10(folder, cache_dir=cache, download=False).test_x, real.test_x)
    assert "unusable cache" in capsys.readouterr().err and file.is_file()
    # a link at the cache's name (to a cache crafted elsewhere) is not followed
    elsewhere = tmp_path / "crafted.pt"
    shutil.copy(file, elsewhere)
    _recrafted(elsewhere, lambda c: c.update(train_y=(c["train_y"] + 1) % 10))
    file.unlink()
    file.symlink_to(elsewhere)
    assert torch.equal(load_cifar10(folder, cache_dir=cache, download=False).train_y,
                       real.train_y)
    # the cache folder itself a link another user planted: neither read nor written through
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        target = tmp_path / "their-folder"
        target.mkdir()
        target.chmod(0o775)  # group-writable: private_dir would have made it private
        shutil.rmtree(cache)
        cache.symlink_to(target)
        os.lchown(cache, 65534, 65534)
        load_cifar10(folder, cache_dir=cache, download=False)
        assert list(target.iterdir()) == [] and target.stat().st_mode & 0o777 == 0o775
        cache.unlink()
    # a link of our own (the cache on scratch space) is used
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if cache.exists() or cache.is_symlink():
        shutil.rmtree(cache) if cache.is_dir() and not cache.is_symlink() else cache.unlink()
    cache.symlink_to(scratch)
    load_cifar10(folder, cache_dir=cache, download=False)
    assert len(list(scratch.glob("*.pt"))) == 1
    capsys.readouterr()
    load_cifar10(folder, cache_dir=cache, download=False)
    assert "rebuilding" not in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_cache_file_of_another_user_is_not_used(tmp_path, capsys):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    real = load_cifar10(folder, cache_dir=cache, download=False)
    file = next(cache.glob("*.pt"))
    _recrafted(file, lambda c: c.update(train_y=(c["train_y"] + 1) % 10))
    os.chown(file, 65534, 65534)  # as if planted by nobody while the folder was shared
    again = load_cifar10(folder, cache_dir=cache, download=False)
    assert "belongs to another user" in capsys.readouterr().err
    assert torch.equal(again.train_y, real.train_y)


def test_a_planted_temp_name_with_a_huge_pid_is_left_alone(tmp_path):
    folder, cache = _batches(tmp_path), tmp_path / "cache"
    cache.mkdir(mode=0o700)
    planted = cache / f".cifar10-0123abcd.pt.{'9' * 30}@{socket.gethostname()}.x.tmp"
    planted.write_bytes(b"x")  # os.kill(10**30 - 1, 0) was an OverflowError traceback
    load_cifar10(folder, cache_dir=cache, download=False)
    assert planted.exists() and len(list(cache.glob("*.pt"))) == 1


def test_an_evaluation_reads_only_the_test_images(tmp_path, tiny_checkpoint):
    # vgg-eval decoded the training images too: one damaged training image blocked it, and the
    # first evaluation of an image folder decoded 60,000 images instead of 10,000.
    from vggcifar.serving.eval_cli import main as eval_main

    root = write_image_folder(tmp_path / "imgs", n_train=30, n_test=20)
    bad = next((root / "train").rglob("*.png"))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)  # a damaged training image
    cache = tmp_path / "cache"
    with pytest.raises(VggCifarError, match="cannot|decode|damaged|read"):
        load_cifar10(root, cache_dir=cache, download=False, verbose=False)  # training: refused
    d = load_cifar10(root, cache_dir=cache, download=False, verbose=False, test_only=True)
    assert len(d.train_x) == 0 and d.train_x.shape[1:] == (3, 32, 32) and len(d.test_x) == 20
    assert not list(cache.glob("*.pt"))  # a partial load is never cached as the dataset
    r = CliRunner().invoke(eval_main, ["--model", str(tiny_checkpoint), "--data", str(root),
                                       "--backend", "torch", "--quiet", "--json"],
                           env={"VGGCIFAR_CACHE": str(cache)})
    assert r.exit_code == 0, r.output
    assert json_loads_last(r.stdout)["n"] == 20
    batches = load_cifar10(_batches(tmp_path), cache_dir=cache, download=False, test_only=True)
    assert len(batches.train_y) == 0 and len(batches.test_y) == 10


def json_loads_last(text: str) -> dict:
    import json

    return json.loads(text.strip().splitlines()[-1])
