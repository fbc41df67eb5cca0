"""BLAKE3 over regular files for verify and build: one way of reading, one stability rule.

**The stability rule** (the only one; docs/threat-model.md, "changes during the check"). A
file's digest counts only if

1. it was opened (O_NOFOLLOW, O_NONBLOCK, beneath the root one directory at a time) as a
   regular file with the inode the walk listed (on overlayfs: the inode its name holds now);
2. the open descriptor's fstat shows the expected size, and exactly that many bytes were read
   (one more is asked for, to notice growth);
3. its size, mtime and ctime are the same in an fstat after the read as in the open's fstat.

Otherwise there is no digest: the file is ``unstable`` (``unreadable`` when a read failed; in
verify, ``modified`` when the size is not the manifest's). The expected inode, size and mode are
the walk's and the manifest's in verify, the walk's lstat in build (where another size or mode
means the file changed between listing and opening: ``unstable``).

:func:`read_file` applies the rule in Python; the C reader (``_speedups.c``) applies it to
batches of small files when the extension is there. Both return the same results, and verify
(:func:`check_files`) and build (:func:`hash_for_build`) read only through them:

- ``int``: the content is at this offset of the buffer, and the rule held;
- ``("hashed", digest, head)``: a file over :data:`SMALL_FILE`, hashed while read in chunks
  (Python only), the rule held; ``head`` is its first :data:`SECRET_KEY_HEAD` bytes;
- ``("open", errno)``, ``("read", errno)`` (an fstat or read after the open), ``("replaced",)``,
  ``("size", actual)`` (not read), ``("changed",)`` (rules 2 or 3 broken);
- ``("mode", actual, rest)``: another mode; ``rest`` is one of the above for the same file.

:func:`_verify_unusual` and :func:`_build_result` turn them into problems.

Safety: never mapped (a file truncated under a mapping kills the process with SIGBUS).
Speed: per file, open, fstat, read, fstat, close. The calling thread works through small files
in batches; helper threads (with the extension: the C reader, outside the GIL) take the rest.
"""

from __future__ import annotations

import errno as errnos
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, cast

from blake3 import blake3

from . import readahead, speedups
from .keys import SECRET_KEY_HEAD, looks_like_secret_key
from .readahead import ReadBuffer
from .schedule import Worker, schedule, split
from .walk import DirCursor, check_resources, open_problem, open_root

__all__ = [
    "BuildHash",
    "FileCheck",
    "StatLike",
    "check_files",
    "default_workers",
    "hash_for_build",
    "looks_like_secret_key",
    "read_file",
]

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
"""The C reader's flags too (FILE_FLAGS): no symlink followed, a FIFO never waited on."""
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
"""On a 2-core VM with a cold cache, 4 threads did best of 2, 4, 8 and 16 (docs/performance.md)."""
IO_THREADS_C = int(os.environ.get("DURI_INTEGRITY_IO_THREADS", "0") or 0) or 16
"""With the C reader, reads from disk run outside the GIL: the threads reading a cold cache (see
docs/performance.md for the counts measured). DURI_INTEGRITY_IO_THREADS overrides it (benchmarks)."""
FileCheck = tuple[str, int, int, int, str]
"""A file the manifest expects and the walk found: (path relative to the root, inode the walk
saw, expected size, expected mode, expected lowercase hex BLAKE3). A plain tuple: building a
named tuple costs over a microsecond a file, 4 ms of a 3,000-file verification. Build's jobs
are the same with an empty digest."""

Problem = tuple[int, str, "str | None", "str | None"]
"""(index of the FileCheck, kind, expected, actual)."""

Result = Any
"""What reading one file gave: an int or a tuple (module docstring). Untyped: built per file."""


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _workers(workers: int | None) -> int:
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return workers


def read_file(dir_fd: int, name: str, ino: int, size: int, mode: int, buf: ReadBuffer, view: memoryview) -> Result:
    """Open ``name`` beneath ``dir_fd`` and read it under the stability rule (what the C reader does).

    A file up to :data:`SMALL_FILE` is read into ``buf`` (``view`` is a view of it) at offset 0.
    """
    try:
        fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return ("open", exc.errno or errnos.EIO)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_ino != ino and not _same_file(name, dir_fd, st)):
            return ("replaced",)
        actual = st.st_mode & 0o7777
        try:
            r = _read_stable(fd, st, size, buf, view)
        except OSError as exc:
            r = ("read", exc.errno or errnos.EIO)
        return r if actual == mode else ("mode", actual, r)
    except OSError as exc:
        return ("read", exc.errno or errnos.EIO)
    finally:
        os.close(fd)


def _read_stable(fd: int, opened: os.stat_result, size: int, buf: ReadBuffer, view: memoryview) -> Result:
    """Rules 2 and 3 for a file whose open descriptor's fstat is ``opened``."""
    if opened.st_size != size:
        return ("size", opened.st_size)
    if size <= SMALL_FILE:
        r: Result = 0 if _read_small(fd, size, buf, view) == size else None
    else:
        head = os.pread(fd, SECRET_KEY_HEAD, 0)  # for build's secret-key check; inside the window
        digest, got = _hash_chunks(fd, size, buf)
        r = ("hashed", digest, head) if got == size else None
    if r is None:
        return ("changed",)
    after = os.fstat(fd)
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (size, opened.st_mtime_ns, opened.st_ctime_ns):
        return ("changed",)
    return r


def _read_small(fd: int, size: int, buf: ReadBuffer, view: memoryview) -> int:
    """Read a file of ``size`` bytes into ``buf``; return the bytes read (more means it grew)."""
    n = os.readv(fd, [buf])
    while 0 < n < size:  # a short read is legal (signals, network filesystems)
        more = os.readv(fd, [view[n:]])
        if not more:
            break
        n += more
    return n


def _hash_chunks(fd: int, size: int, buf: ReadBuffer) -> tuple[str | None, int]:
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


def _read_job(cursor: DirCursor, job: tuple[Any, ...], buf: ReadBuffer, view: memoryview) -> Result:
    rel_dir, _, name = job[0].rpartition("/")
    try:
        dir_fd = cursor.enter(rel_dir)  # files come grouped by directory: usually the one held
    except OSError as exc:
        return ("open", exc.errno or errnos.EIO)
    return read_file(dir_fd, name, job[1], job[2], job[3], buf, view)


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


# Verify: results to problems.


def _check_batch(jobs: Sequence[FileCheck], batch: list[int], worker: Worker, out: list[Problem]) -> None:
    """Verify a batch of files read by :func:`read_file` (the pure path, and large files)."""
    buf, cursor, append = worker.buf, worker.cursor, out.append
    view = memoryview(buf)
    try:
        for i in batch:
            job = jobs[i]
            r = _read_job(cursor, job, buf, view)
            if type(r) is int:
                digest = blake3(view[r : r + job[2]]).hexdigest()
                if digest != job[4]:
                    append((i, "modified", f"blake3:{job[4]}", f"blake3:{digest}"))
            else:
                _verify_unusual(i, job, r, view, append)
    finally:
        view.release()


def _verify_read(
    jobs: Sequence[FileCheck], batch: list[int], results: list[Result], view: memoryview, out: list[Problem]
) -> None:
    """Verify a batch the C reader read into ``view`` (the common case inline, as in :func:`_check_batch`)."""
    append = out.append
    for i, r in zip(batch, results, strict=True):
        job = jobs[i]
        if type(r) is int:
            digest = blake3(view[r : r + job[2]]).hexdigest()
            if digest != job[4]:
                append((i, "modified", f"blake3:{job[4]}", f"blake3:{digest}"))
        else:
            _verify_unusual(i, job, r, view, append)


def _verify_unusual(i: int, job: FileCheck, r: Result, view: memoryview, append: Callable[[Problem], None]) -> None:
    what = r[0]
    if what == "mode":
        append((i, "mode_changed", f"{job[3]:04o}", f"{r[1]:04o}"))
        r = r[2]
        if type(r) is int:
            r = ("hashed", blake3(view[r : r + job[2]]).hexdigest(), b"")
        what = r[0]
    if what == "hashed":
        if r[1] != job[4]:
            append((i, "modified", f"blake3:{job[4]}", f"blake3:{r[1]}"))
    elif what == "open":
        kind, why = open_problem(_os_error(r[1]))
        append((i, kind, None, why))
    elif what == "read":
        check_resources(_os_error(r[1]), "reading files to hash")
        append((i, "unreadable", None, os.strerror(r[1])))
    elif what == "replaced":
        append((i, "unstable", None, "replaced during the check"))
    elif what == "size":
        append((i, "modified", f"size {job[2]}", f"size {r[1]}"))
    elif what == "changed":
        append((i, "unstable", None, "changed while being read"))
    else:  # pragma: no cover - the readers return only the kinds above
        raise AssertionError(f"unknown reader result {r!r}")


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
            _run_fast(
                root_fd,
                jobs,
                small,
                big,
                workers,
                progress,
                extra,
                lambda batch, results, view: _verify_read(jobs, batch, results, view, out),
                lambda batch, worker: _check_batch(jobs, batch, worker, out),
            )
        else:
            run_batch = lambda batch, worker: _check_batch(jobs, batch, worker, out)  # noqa: E731
            schedule(small, big, run_batch, root_fd, CHUNK, workers, progress, extra)
    finally:
        os.close(root_fd)
    return out


def _run_fast(
    root_fd: int,
    jobs: Sequence[tuple[Any, ...]],
    small: list[int],
    big: list[int],
    workers: int,
    progress: Callable[[int], None] | None,
    extra: int,
    consume: Callable[[list[int], list[Result], memoryview], None],
    one_by_one: Callable[[list[int], Worker], None],
) -> None:
    """Small files through the C reader (read ahead on helper threads, handed to ``consume``), large
    ones through :func:`read_file` (``one_by_one``), taken by whichever thread is free."""
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
                one_by_one([i], worker)
                if progress is not None:
                    progress(1)
        finally:
            if worker is not None:
                worker.cursor.close()

    batches = readahead.plan_batches(jobs, small)
    readahead.run(root_fd, jobs, batches, workers - 1, extra, big_loop, progress, consume)


# Build: results to digests.


class BuildHash(NamedTuple):
    digest: str | None
    """Lowercase hex BLAKE3, or None when the file could not be hashed."""
    problem: str | None
    """None, "unreadable" or "unstable"."""
    detail: str
    secret_key: bool = False
    """True when the content looks like a minisign secret key file."""


_BUILD_UNSTABLE = {
    "replaced": "replaced between listing and opening",
    "size": "changed between listing and opening",
    "mode": "changed between listing and opening",
    "changed": "changed while being read",
}


def _build_result(r: Result, view: memoryview, size: int) -> BuildHash:
    """A file's digest for a manifest, or why there is none (the stability rule, for build)."""
    if type(r) is int:
        content = view[r : r + size]
        # The head is looked at in place: a 4 KiB copy of each of 3,000 files is not free.
        return BuildHash(blake3(content).hexdigest(), None, "", looks_like_secret_key(content[:SECRET_KEY_HEAD]))
    what = r[0]
    if what == "hashed":
        return BuildHash(r[1], None, "", looks_like_secret_key(r[2]))
    if what == "open":
        kind, why = open_problem(_os_error(r[1]))
        return BuildHash(None, kind, why)
    if what == "read":
        check_resources(_os_error(r[1]), "reading files to hash")
        return BuildHash(None, "unreadable", os.strerror(r[1]))
    return BuildHash(None, "unstable", _BUILD_UNSTABLE[what])  # a KeyError for a kind no reader returns


class StatLike(Protocol):
    """The lstat fields build reads: an ``os.stat_result``, or the scanner's :class:`scan.Lstat`."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_size(self) -> int: ...


def hash_for_build(
    root: str,
    files: Sequence[tuple[str, StatLike]],
    workers: int | None = None,
) -> list[BuildHash]:
    """Hash (path relative to ``root``, lstat) pairs under the stability rule; results in the input order.

    With the extension, small files go through the C reader as in verify; without it, and for
    large files, through :func:`read_file`. ``workers`` None means one thread per core, as in
    verify (a reader beside the hasher); reading from disk adds none.
    """
    fast = speedups.available()
    workers = _workers(workers)
    jobs = [(rel, st.st_ino, st.st_size, st.st_mode & 0o7777) for rel, st in files]
    out: list[BuildHash | None] = [None] * len(files)

    def one_by_one(batch: list[int], worker: Worker) -> None:
        buf, cursor = worker.buf, worker.cursor
        with memoryview(buf) as view:
            for i in batch:
                out[i] = _build_result(_read_job(cursor, jobs[i], buf, view), view, jobs[i][2])

    def consume(batch: list[int], results: list[Result], view: memoryview) -> None:
        for i, r in zip(batch, results, strict=True):
            out[i] = _build_result(r, view, jobs[i][2])

    root_fd = open_root(root)
    try:
        small, big = split([j[2] for j in jobs], SMALL_FILE if fast else ROUTE)
        if fast:
            _run_fast(root_fd, jobs, small, big, workers, None, 0, consume, one_by_one)
        else:
            schedule(small, big, one_by_one, root_fd, CHUNK, workers, None)
    finally:
        os.close(root_fd)
    return cast(list[BuildHash], out)  # every index is run, or an exception raised
