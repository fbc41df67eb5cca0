"""BLAKE3 over regular files: safely, and fast on trees of many small files.

Safety: files are opened with O_NOFOLLOW and O_NONBLOCK, never mapped (a file
truncated under a mapping kills the process with SIGBUS), and the descriptor's
fstat must show a regular file with the inode the walk saw.

Speed: per-file cost on the hot path is four syscalls (open, fstat, read,
close). The calling thread works through small files in batches; helper threads
take the large files first, then whatever small batches are left, from the
other end. One task per file would cost more in hand-offs than it saves.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import NamedTuple, cast

from blake3 import blake3

from . import readahead, speedups
from .keys import SECRET_KEY_HEAD, looks_like_secret_key
from .schedule import Worker, schedule, split
from .walk import check_resources, open_problem, open_root

__all__ = [
    "BuildHash",
    "FileCheck",
    "check_files",
    "default_workers",
    "hash_for_build",
    "looks_like_secret_key",
]

OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)
SMALL_FILE = 1 << 20
"""Up to this size a file is read whole into the thread's buffer; above it, in chunks."""
CHUNK = SMALL_FILE + 1
"""Each thread's one read buffer: a small file, plus one byte to notice growth, fits in one read."""
ROUTE = 64 << 10
"""Pure Python: files from this size go to the helper threads first, the caller takes the smaller
ones (whose BLAKE3 calls are too short to gain from a second thread under the GIL). 64 KiB did
best of 16 KiB, 64 KiB and 1 MiB (docs/performance.md)."""
HUGE_FILE = 256 << 20
"""From this size one file is hashed with several BLAKE3 threads."""
IO_THREADS_PER_CORE = 2
IO_THREADS_C = int(os.environ.get("DURI_INTEGRITY_IO_THREADS", "0") or 0) or 16
"""With the C reader, reads from disk run outside the GIL: the threads reading a cold cache (see
docs/performance.md for the counts measured). DURI_INTEGRITY_IO_THREADS overrides it (benchmarks)."""
"""On a 2-core VM with a cold cache, 4 threads did best of 2, 4, 8 and 16 (docs/performance.md)."""


# A minisign secret key: base64 of "Ed" + KDF ("Sc" scrypt, or two zero bytes) + "B2" + ...
def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _workers(workers: int | None) -> int:
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return workers


def _read_small(fd: int, size: int, buf: bytearray, view: memoryview) -> int:
    """Read a file of ``size`` bytes into ``buf``; return the bytes read (more means it grew)."""
    n = os.readv(fd, [buf])
    while 0 < n < size:  # a short read is legal (signals, network filesystems)
        more = os.readv(fd, [view[n:]])
        if not more:
            break
        n += more
    return n


FileCheck = tuple[str, int, int, int, str]
"""A file the manifest expects and the walk found: (path relative to the root, inode the walk
saw, expected size, expected mode, expected lowercase hex BLAKE3). A plain tuple: building a
named tuple costs over a microsecond a file, 4 ms of a 3,000-file verification."""


Problem = tuple[int, str, "str | None", "str | None"]
"""(index of the FileCheck, kind, expected, actual)."""


def _hash_chunks(fd: int, size: int, buf: bytearray) -> tuple[str | None, int]:
    """Hash a large file in chunks; return (hex digest, bytes read) or (None, bytes read) if it grew."""
    hasher = blake3(max_threads=blake3.AUTO if size >= HUGE_FILE else 1)
    view = memoryview(buf)
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
            if total > size:
                return None, total
            hasher.update(view[:n])
    finally:
        view.release()
    return hasher.hexdigest(), total


def _check_batch(jobs: Sequence[FileCheck], batch: list[int], worker: Worker, out: list[Problem]) -> None:
    """Check a batch of files. The loop is written flat, with local names, because it is
    the innermost loop of verification: each file costs four syscalls and little else."""
    os_open, os_fstat, os_close = os.open, os.fstat, os.close
    buf, cursor = worker.buf, worker.cursor
    view = memoryview(buf)
    s_isreg, flags, small_limit, append = stat.S_ISREG, OPEN_FLAGS, SMALL_FILE, out.append
    cur_dir: str | None = None
    dir_fd = -1
    try:
        for i in batch:
            rel, ino, size, mode, want = jobs[i]
            rel_dir, _, name = rel.rpartition("/")
            try:
                if rel_dir != cur_dir:  # files come grouped by directory: this is rarely true
                    cur_dir = None
                    dir_fd = cursor.enter(rel_dir)
                    cur_dir = rel_dir
                fd = os_open(name, flags, dir_fd=dir_fd)
            except OSError as exc:
                kind, why = open_problem(exc)
                append((i, kind, None, why))
                continue
            try:
                st = os_fstat(fd)
                st_mode = st.st_mode
                if not s_isreg(st_mode) or (st.st_ino != ino and not _same_file(name, dir_fd, st)):
                    append((i, "unstable", None, "replaced during the check"))
                    continue
                if st_mode & 0o7777 != mode:
                    append((i, "mode_changed", f"{mode:04o}", f"{st_mode & 0o7777:04o}"))
                if st.st_size != size:
                    append((i, "modified", f"size {size}", f"size {st.st_size}"))
                    continue
                if size <= small_limit:
                    # Into the thread's reused buffer: no allocation per file.
                    n = _read_small(fd, size, buf, view)
                    digest = blake3(view[:n]).hexdigest() if n == size else None
                else:
                    digest, got = _hash_chunks(fd, size, buf)
                    if got != size:
                        digest = None
                if digest == want:
                    continue
                # A mismatch: was the file changing under us, or was it already different?
                after = os_fstat(fd)
                if digest is None or (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                ):
                    append((i, "unstable", None, "changed while being read"))
                else:
                    append((i, "modified", f"blake3:{want}", f"blake3:{digest}"))
            except OSError as exc:
                check_resources(exc, "reading files to hash")
                append((i, "unreadable", None, exc.strerror or str(exc)))
            finally:
                os_close(fd)
    finally:
        view.release()


def _same_file(name: str, dir_fd: int, opened: os.stat_result) -> bool:
    """Whether ``name`` is still the inode that was opened, although the walk listed another.

    On overlayfs a metadata-only copy-up gives a file a new inode between the directory
    entry and the open; asking the name again tells that apart from a replacement.
    """
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_ino, now.st_dev) == (opened.st_ino, opened.st_dev)


def check_files(
    root: str,
    jobs: Sequence[FileCheck],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Problem]:
    """Check mode, size and BLAKE3 of every job under ``root`` (an absolute real path).

    Returns only the problems, in no particular order. With ``workers`` left as
    None, one thread per core, plus more if the files turn out to come from disk.
    """
    elastic = workers is None
    workers = _workers(workers)
    out: list[Problem] = []
    if not jobs:  # quick mode with nothing changed: no threads to start and stop
        return out
    fast = speedups.available()
    small, big = split([j[2] for j in jobs], SMALL_FILE if fast else ROUTE)
    io_threads = IO_THREADS_C if fast else min(16, IO_THREADS_PER_CORE * (os.cpu_count() or 1))
    extra = max(0, io_threads - workers) if elastic and workers > 1 else 0
    root_fd = open_root(root)
    try:
        if fast:
            _check_fast(root_fd, jobs, small, big, workers, progress, extra, out)
        else:
            schedule(
                small,
                big,
                lambda batch, worker: _check_batch(jobs, batch, worker, out),
                root_fd,
                CHUNK,
                workers,
                progress,
                extra,
            )
    finally:
        os.close(root_fd)
    return out


def _check_fast(
    root_fd: int,
    jobs: Sequence[FileCheck],
    small: list[int],
    big: list[int],
    workers: int,
    progress: Callable[[int], None] | None,
    extra: int,
    out: list[Problem],
) -> None:
    """Small files through the C reader (read ahead on helper threads), large ones as in pure Python."""
    lock = threading.Lock()
    pending = big[::-1]  # largest last: pop() takes the largest first

    def big_loop(stopped: Callable[[], bool]) -> None:
        worker: Worker | None = None
        try:
            while not stopped():
                with lock:
                    if not pending:
                        return
                    i = pending.pop()
                worker = worker or Worker(root_fd, CHUNK)
                _check_batch(jobs, [i], worker, out)
                if progress is not None:
                    progress(1)
        finally:
            if worker is not None:
                worker.cursor.close()

    batches = readahead.plan_batches(jobs, small)
    readahead.run(root_fd, jobs, batches, workers - 1, extra, big_loop, progress, out)


class BuildHash(NamedTuple):
    digest: str | None
    """Lowercase hex BLAKE3, or None when the file could not be hashed."""
    problem: str | None
    """None, "unreadable" or "unstable"."""
    detail: str
    secret_key: bool = False
    """True when the content looks like a minisign secret key file."""


def _hash_for_build(worker: Worker, rel: str, walk: os.stat_result) -> BuildHash:
    """Hash a file for a manifest: the bytes must be stable from before the open to after the read."""
    rel_dir, _, name = rel.rpartition("/")
    try:
        fd = os.open(name, OPEN_FLAGS, dir_fd=worker.cursor.enter(rel_dir))
    except OSError as exc:
        kind, why = open_problem(exc)
        return BuildHash(None, kind, why)
    try:
        before = os.fstat(fd)
        seen = (walk.st_ino, walk.st_dev, walk.st_size, walk.st_mtime_ns)
        if (
            not stat.S_ISREG(before.st_mode)
            or (
                before.st_ino,
                before.st_dev,
                before.st_size,
                before.st_mtime_ns,
            )
            != seen
        ):
            return BuildHash(None, "unstable", "changed between listing and opening")
        size = before.st_size
        if size <= SMALL_FILE:
            with memoryview(worker.buf) as view:
                got = _read_small(fd, size, worker.buf, view)
                digest: str | None = blake3(view[:got]).hexdigest()
                secret = looks_like_secret_key(bytes(view[: min(got, SECRET_KEY_HEAD)]))
        else:
            secret = looks_like_secret_key(os.pread(fd, SECRET_KEY_HEAD, 0))
            digest, got = _hash_chunks(fd, size, worker.buf)
        after = os.fstat(fd)
        if got != size or (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            size,
            before.st_mtime_ns,
            before.st_ctime_ns,
        ):
            return BuildHash(None, "unstable", "changed while being read")
        return BuildHash(digest, None, "", secret)
    except OSError as exc:
        check_resources(exc, "reading files to hash")
        return BuildHash(None, "unreadable", exc.strerror or str(exc))
    finally:
        os.close(fd)


def hash_for_build(
    root: str,
    files: Sequence[tuple[str, os.stat_result]],
    workers: int | None = None,
) -> list[BuildHash]:
    """Hash (path relative to ``root``, lstat) pairs; results in the input order."""
    workers = _workers(workers)
    out: list[BuildHash | None] = [None] * len(files)
    root_fd = open_root(root)

    def batch_of(batch: list[int], worker: Worker) -> None:
        for i in batch:
            out[i] = _hash_for_build(worker, files[i][0], files[i][1])

    try:
        small, big = split([st.st_size for _, st in files], ROUTE)
        schedule(small, big, batch_of, root_fd, CHUNK, workers, None)
    finally:
        os.close(root_fd)
    return cast(list[BuildHash], out)  # _schedule runs every index or raises
