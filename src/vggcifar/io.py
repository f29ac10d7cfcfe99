"""Durable file writes: a crash or power cut never leaves a half-written file under its name."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


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
