"""Files and folders: durable writes (a crash or power cut never leaves a half-written file under
its name), the one write-probe for output folders, the one ``$VGGCIFAR_CACHE`` lookup, bounded
reads of plain files, and the permissions of what is published or trusted."""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from .errors import VggCifarError


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush ``path``'s data (or a folder's entries) to the disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # folders cannot be opened on some systems (Windows): nothing to flush
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on folders; the file is what matters
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call ``write_fn(tmp_path)``, flush it to disk, then rename ``tmp_path`` to ``path``.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and is
    created with mode 0o666 minus the process umask, like any new file; the umask is never
    changed (``os.umask`` is process-wide, so reading it that way is not thread-safe). The file is
    fsynced before the rename and the folder after it, so after a crash ``path`` holds either the
    old or the new content, never a truncated one. On any error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # 48 random bits: practically never
            continue
    try:
        write_fn(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    _fsync(path.parent, directory=True)


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` (and its parents) if needed and prove a file can be made in it, so a
    long job fails at its start rather than at its first save.

    The probe is a uniquely named temporary file (``mkstemp``), removed at once, so concurrent
    jobs writing to the same folder never trip over each other's probe.

    Args:
        what: how messages name the folder ("run folder", "study folder", ...).
    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    Raises:
        VggCifarError: it cannot be created or written (the message points at ``--out``).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise VggCifarError(f"cannot write the {what} {folder} ({e.strerror or e}); "
                            "choose a writable --out") from e
    return folder


class NotRegularFile(VggCifarError, OSError):
    """A path that is a FIFO, device, socket or folder (or a link, where links are not
    followed) where a file was expected: a user error to some callers, an unreadable file
    (``OSError``) to others."""


def open_regular(path: str | os.PathLike, follow_links: bool = True):
    """Open ``path`` for binary reading, refusing anything but a regular file, so a planted
    FIFO or device costs nothing: opening a FIFO does not wait for a writer (``O_NONBLOCK``),
    and the file opened is the one checked. Without ``follow_links`` a link is refused too
    (``O_NOFOLLOW``): for files vggcifar wrote itself, where a link was planted; a path the
    user named may be a link.

    Raises:
        NotRegularFile: not a regular file.
        OSError: missing, unreadable, or (without ``follow_links``) a link.
    """
    nofollow = 0 if follow_links else getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0)
                 | getattr(os, "O_BINARY", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(f"{path} is not a regular file")
    return os.fdopen(fd, "rb")


def read_plain_file(path: str | os.PathLike, max_bytes: int, follow_links: bool = False) -> bytes:
    """At most ``max_bytes + 1`` bytes of the regular file ``path`` (:func:`open_regular`; more
    than ``max_bytes``: the file is over the caller's limit). Links are not followed unless
    ``follow_links``.

    Raises:
        OSError: missing, unreadable, a link, or not a regular file (:class:`NotRegularFile`).
    """
    with open_regular(path, follow_links) as f:
        return f.read(max_bytes + 1)


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (links followed), at most ``max_bytes``.

    Raises:
        VggCifarError: not a regular file, or larger than ``max_bytes``.
        OSError: missing or unreadable.
    """
    data = read_plain_file(path, max_bytes, follow_links=True)
    if len(data) > max_bytes:
        raise VggCifarError(f"{path} is over {max_bytes / 2**20:g} MB: not a file vggcifar wrote")
    return data


def cache_dir(sub: str | None = None) -> Path:
    """``$VGGCIFAR_CACHE`` (default ``~/.cache/vggcifar``), or its subfolder ``sub``: decoded
    datasets live at the top, cached ONNX exports under ``onnx``. Not created here."""
    root = Path(os.environ.get("VGGCIFAR_CACHE") or Path.home() / ".cache" / "vggcifar")
    return root / sub if sub else root


def private_dir(folder: Path) -> bool:
    """True when only we can write to ``folder``, as ssh and pip require of what they trust: a
    folder of ours, or a link of ours to one (a link another user planted at a cache's name
    would point our writes, and the chmod below, at a folder of the planter's choosing). A
    group- or world-writable one, e.g. made under umask 002, is made private first; files
    others left in it meanwhile are refused by :func:`open_own_file`. On Windows the user's
    profile is private."""
    if os.name != "posix":
        return True
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        # a link of ours (a cache pointed at scratch space) is followed; a planted one is not
        if st.st_uid != os.geteuid():
            return False
        st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    if st.st_mode & 0o022:
        os.chmod(folder, st.st_mode & 0o755)
    return True


def open_own_file(path: str | os.PathLike):
    """:func:`open_regular` without following links, for what vggcifar reads back from its own
    caches: a file another user owns (left in a cache folder while it was shared) is refused.

    Raises:
        OSError: missing, unreadable, a link, not a regular file, or another user's
            (:class:`NotRegularFile`).
    """
    f = open_regular(path, follow_links=False)
    if os.name == "posix" and os.fstat(f.fileno()).st_uid != os.geteuid():
        f.close()
        raise NotRegularFile(f"{path} belongs to another user")
    return f


def make_shared(paths) -> None:
    """Give published files and folders the usual permissions (0o666/0o777 minus the umask):
    staged files (``mkstemp``, ``mkdtemp``) are owner-only, but exports are meant to be read by
    serving code running as another user. Missing paths, links and anything else that is not
    a plain file or folder are skipped.

    Reads the umask by setting it, which is process-wide: call this from one thread at a time.
    """
    umask = os.umask(0)
    os.umask(umask)
    # Links are never followed: one planted at a published name (an engine's sidecar name next
    # to an .onnx file) made any file of ours world-readable. lstat skips them; where chmod can
    # refuse to follow one (not Linux), a link planted after the lstat is not followed either.
    nofollow = {"follow_symlinks": False} if os.chmod in os.supports_follow_symlinks else {}
    for p in paths:
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(mode):
            os.chmod(p, 0o777 & ~umask, **nofollow)
        elif stat.S_ISREG(mode):
            os.chmod(p, 0o666 & ~umask, **nofollow)


def remove_empty_dirs(dirs) -> None:
    """Remove ``dirs`` (deepest first, e.g. the folders a failed start created) while they are
    empty; stop at the first that is not."""
    for d in dirs:
        try:
            Path(d).rmdir()
        except OSError:
            break


LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive lock on a folder that one job writes (a run folder, a study folder), so that
    a second job started on it (a ``--resume`` while the first still runs, or a process left
    behind by a killed parent) is refused instead of interleaving its checkpoints with the
    first's.

    ``flock`` on ``folder/.lock``, which holds the owner's pid: the kernel releases it when the
    process dies however it dies, so a stale lock never blocks. A planted link is not followed
    (``O_NOFOLLOW``). Without ``fcntl`` (Windows) it does nothing.

    Raises:
        VggCifarError: another process holds the lock, or ``.lock`` is not a plain file.
    """

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path, self.fd = Path(folder) / LOCK_NAME, None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one job per folder is up to the user
            return
        not_plain = "; remove it if it is not a plain file"
        for _ in range(5):  # a lock file removed by its owner between our open and flock: again
            fd = self._open_locked(folder, what, not_plain, fcntl)
            if fd is None:  # unlinked by its holder between our open and fstat
                continue
            st = os.fstat(fd)
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                break
            os.close(fd)  # we locked a file that is no longer the lock: its owner released it
        else:
            raise VggCifarError(f"cannot lock the {what} {folder}: {self.path} keeps being "
                                "replaced; is another job starting and stopping there?")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def _open_locked(self, folder, what: str, not_plain: str, fcntl) -> int | None:
        """The lock file opened (never through a link, a FIFO or a second hard link) and
        flock'ed; None when its holder removed it meanwhile (try again); raises when another
        process holds it."""
        try:  # O_NONBLOCK: a planted FIFO must not hang the open
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK
                         | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise VggCifarError(f"cannot lock the {what} {folder}: {self.path} "
                                f"({e.strerror or e}){not_plain}") from None
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 0:
            os.close(fd)
            return None
        # a hard link planted at the name would have us truncate the file it links to
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise VggCifarError(f"cannot lock the {what} {folder}: {self.path} is not a "
                                f"plain file{not_plain}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise VggCifarError(
                f"another process{f' (pid {owner})' if owner.isdigit() else ''} is writing the "
                f"{what} {folder}; wait for it to finish or stop it, then run this again"
            ) from None
        return fd

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
