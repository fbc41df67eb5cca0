"""The one place that opens the files the tool itself reads, and writes them atomically.

Every file the tool reads for its own use (manifest, signature, keys, revocation
lists, tokens, config, rollback state, snapshots) comes through :func:`read_file`:
opened non-blocking (a FIFO planted in its place cannot hang the tool), checked
with ``fstat`` to be a regular file, and read with a size limit. Files that only
this host's operator or the verifier itself may write (state, snapshots, their
locks) also go through :func:`check_private_dir` and are opened without
following symlinks, as ssh's StrictModes does for ``authorized_keys``.

Every file the tool writes (manifests, signatures, metrics, snapshots, rollback
state) goes through :func:`replace_file`: a new file beside the target, written
and flushed to disk, then renamed over it.
"""

import contextlib
import os
import stat

from .errors import IntegrityError

__all__ = [
    "UnreadableFile",
    "UnsafeLocation",
    "check_owner_and_mode",
    "check_private_dir",
    "open_private_lock",
    "read_file",
    "read_head",
    "replace_file",
]

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class UnreadableFile(IntegrityError):
    """A file the tool needs cannot be read safely: missing, not a regular file, too large, unreadable."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class UnsafeLocation(IntegrityError):
    """A file or directory others could write (or one owned by another user) where only the operator may."""


def read_file(
    path: str,
    limit: int,
    what: str,
    *,
    follow_symlinks: bool = True,
    private: bool = False,
    secret: bool = False,
    dir_fd: int | None = None,
) -> bytes:
    """Read a whole regular file of at most ``limit`` bytes; raise UnreadableFile (or UnsafeLocation).

    ``what`` names the file in messages ("signature", "public key"). With
    ``private``, the file must belong to this user or root and be writable by no
    one else (it is trusted state); with ``secret`` also readable by no one else
    (it holds a password). ``follow_symlinks=False`` refuses a symlink
    in the last component.
    """
    fd = _open(path, what, follow_symlinks, dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"{what} {path!r} is not a regular file")
        if private or secret:
            check_owner_and_mode(st, path, what, secret=secret)
        if st.st_size > limit:
            raise UnreadableFile(f"{what} {path!r} is over the {limit:,}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(limit + 1 - total, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise UnreadableFile(f"{what} {path!r} is over the {limit:,}-byte limit")
        return b"".join(chunks)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_head(path: str, limit: int, what: str, dir_fd: int | None = None) -> bytes:
    """The first ``limit`` bytes of a regular file (``path`` beneath ``dir_fd`` when given), however
    large it is (a symlink is refused)."""
    fd = _open(path, what, False, dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile(f"{what} {path!r} is not a regular file")
        return os.read(fd, limit)
    except OSError as exc:
        raise UnreadableFile(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _open(path: str, what: str, follow_symlinks: bool, dir_fd: int | None) -> int:
    """Open for reading without blocking (a FIFO cannot hang us); UnreadableFile in words if it fails."""
    flags = _READ_FLAGS | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnreadableFile(f"cannot read {what} {path!r}: no such file", missing=True) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == 40 and not follow_symlinks:  # ELOOP: the last component is a symlink
            reason = "it is a symbolic link"
        raise UnreadableFile(f"cannot read {what} {path!r}: {reason}") from None
    except ValueError:  # a NUL byte in the path
        raise UnreadableFile(f"cannot read {what} {path!r}: the path contains a NUL byte") from None


def check_owner_and_mode(st: os.stat_result, path: str, what: str, *, secret: bool = False) -> None:
    """Refuse what another non-root user owns, or what group or others may write (StrictModes);
    with ``secret``, also what group or others may read."""
    if st.st_uid not in (0, os.geteuid()):
        raise UnsafeLocation(f"{what} {path!r} is owned by another user (uid {st.st_uid}); refusing to trust it")
    if st.st_mode & 0o022:
        raise UnsafeLocation(
            f"{what} {path!r} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod go-w' on it"
        )
    if secret and st.st_mode & 0o044:
        raise UnsafeLocation(
            f"{what} {path!r} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run 'chmod 600' on it"
        )


def check_private_dir(directory: str, what: str, *, create: bool) -> None:
    """Make sure ``directory`` and every directory above it can be written only by this user or root.

    Ancestors may be world-writable only with the sticky bit (``/tmp``): then
    others cannot rename or remove what is ours. With ``create``, a missing
    directory is made with mode 0700. Raises UnsafeLocation or UnreadableFile.
    """
    directory = os.path.abspath(directory)
    if create:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise UnreadableFile(f"cannot create {what} {directory!r}: {exc.strerror or exc}") from None
    current = directory
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            raise UnreadableFile(f"{what} {directory!r} does not exist", missing=True) from None
        except OSError as exc:
            raise UnreadableFile(f"cannot use {what} {directory!r}: {exc.strerror or exc}") from None
        if stat.S_ISLNK(st.st_mode):
            # Follow a link in the chain (as /var -> /private/var), then check where it leads.
            current = os.path.realpath(current)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnreadableFile(f"{what} {directory!r}: {current!r} is not a directory")
        sticky_ok = current != directory and st.st_mode & stat.S_ISVTX
        if st.st_uid not in (0, os.geteuid()):
            raise UnsafeLocation(
                f"{what} {directory!r}: {current!r} is owned by another user (uid {st.st_uid}); refusing to use it"
            )
        if st.st_mode & 0o022 and not sticky_ok:
            raise UnsafeLocation(
                f"{what} {directory!r}: {current!r} is writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod go-w {current}'"
            )
        parent = os.path.dirname(current)
        if parent == current:
            return
        current = parent


def check_file_dirs(path: str, what: str) -> None:
    """The directories holding ``path``, as named and as resolved, must be writable by no one but root
    and this user: whoever can replace the file (or a link to it) decides what it says."""
    for directory in {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}:
        check_private_dir(directory, f"directory of {what} {path!r}", create=False)


def open_private_lock(directory: str) -> int:
    """Open (creating) ``directory/.lock`` without following a symlink; return the descriptor."""
    path = os.path.join(directory, ".lock")
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise UnreadableFile(f"cannot open lock file {path!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"lock file {path!r} is not a regular file")
        check_owner_and_mode(st, path, "lock file")
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)  # others must not even open it: flock works on a read-only descriptor
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_file(path: str, data: bytes, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``data`` (created with ``mode``); raise OSError on failure."""
    directory = os.path.dirname(os.path.abspath(path))
    # A random name: two runs in one process (threads) or two processes never share a temp file.
    # os.urandom, not secrets: importing secrets loads hashlib's OpenSSL (~3 ms of every start-up).
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(8).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
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
