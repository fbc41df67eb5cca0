"""Writing files so that readers never see half of one.

Every file the tool writes (manifests, signatures, metrics, snapshots, rollback
state) goes through :func:`replace_file`: a new file beside the target, written
and flushed to disk, then renamed over it.
"""

import contextlib
import os

__all__ = ["read_limited", "replace_file"]


def replace_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data`` (created with ``mode``); raise OSError on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, mode)
        try:
            os.fchmod(fd, mode)  # the umask must neither loosen nor tighten it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_limited(path: str, limit: int) -> bytes:
    """Read at most ``limit + 1`` bytes, so a caller can tell a file over its limit; raise OSError."""
    with open(path, "rb") as f:
        return f.read(limit + 1)
