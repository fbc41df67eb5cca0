"""BLAKE3 over regular files, safely and in parallel.

Files are handed to a small thread pool in batches (one task per file costs
more in scheduling than it saves). Each file is opened with O_NOFOLLOW and
O_NONBLOCK, the descriptor is checked against what the walk saw, and the
descriptor is stat-ed again after reading so a file that changed while being
read is reported instead of hashed into a wrong answer. No mmap: a file
truncated under a mapping would kill the process with SIGBUS.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import NamedTuple

from blake3 import blake3

__all__ = ["HashJob", "HashResult", "default_workers", "hash_files", "hash_one"]

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOCTTY", 0)
)
# Up to this size a file is read with one os.read; above it, in chunks into a reused buffer.
SMALL_FILE = 1 << 20
CHUNK = 1 << 20
# Files at least this large are hashed one at a time with BLAKE3's own threads.
LARGE_FILE = 16 << 20
BATCHES_PER_WORKER = 8


class HashJob(NamedTuple):
    path: str
    """Absolute path to open."""
    dev: int
    ino: int
    size: int
    """Size the walk saw; used for scheduling only, the descriptor's size is what is read."""


class HashResult(NamedTuple):
    digest: str | None
    """Lowercase hex BLAKE3 digest, or None when the file could not be hashed."""
    problem: str | None
    """None, "unreadable" or "unstable"."""
    detail: str
    secret_key: bool = False
    """True when the content looks like a minisign secret key file."""


# A minisign secret key file: a comment line, then base64 of "Ed" + KDF ("Sc" or none) + "B2".
_SECRET_KEY_PREFIX = b"untrusted comment:"
_SECRET_KEY_MARKERS = (b"\nRWRTY0Iy", b"\nRWQAAEIy")


def _looks_like_secret_key(data: bytes) -> bool:
    if not data.startswith(_SECRET_KEY_PREFIX) or len(data) > 4096:
        return False
    return any(m in data for m in _SECRET_KEY_MARKERS)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _read_exact_small(fd: int, size: int) -> bytes | None:
    # Ask for one byte more than expected: getting it means the file grew.
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    if len(data) < size:
        # A short read on a regular file is legal only at EOF; read on to be sure.
        parts = [data]
        got = len(data)
        while got <= size:
            more = os.read(fd, size + 1 - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        if got == size:
            return b"".join(parts)
    return None


def hash_one(job: HashJob, buf: bytearray | None = None, threads: int = 1) -> HashResult:
    """Hash one regular file; never raises for I/O problems, reports them instead."""
    try:
        fd = os.open(job.path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.ENXIO):
            return HashResult(None, "unstable", f"replaced or removed during the check ({exc.strerror})")
        return HashResult(None, "unreadable", exc.strerror or str(exc))
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or before.st_ino != job.ino or before.st_dev != job.dev:
            return HashResult(None, "unstable", "replaced during the check")
        size = before.st_size
        if size <= SMALL_FILE:
            data = _read_exact_small(fd, size)
            if data is None:
                return HashResult(None, "unstable", "size changed while being read")
            digest = blake3(data).hexdigest()
            secret = data[:18] == _SECRET_KEY_PREFIX and _looks_like_secret_key(data)
        else:
            secret = False
            if buf is None:
                buf = bytearray(CHUNK)
            hasher = blake3(max_threads=threads)
            view = memoryview(buf)
            total = 0
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    break
                total += n
                if total > size:
                    break
                hasher.update(view[:n])
            view.release()
            if total != size:
                return HashResult(None, "unstable", "size changed while being read")
            digest = hasher.hexdigest()
        after = os.fstat(fd)
        if after.st_size != size or after.st_mtime_ns != before.st_mtime_ns:
            return HashResult(None, "unstable", "modified while being read")
        return HashResult(digest, None, "", secret)
    except OSError as exc:
        return HashResult(None, "unreadable", exc.strerror or str(exc))
    finally:
        os.close(fd)


def _run_batch(jobs: Sequence[HashJob], out: list[HashResult | None], idx: Sequence[int]) -> None:
    buf = bytearray(CHUNK)
    for i in idx:
        out[i] = hash_one(jobs[i], buf)


def hash_files(
    jobs: Sequence[HashJob],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[HashResult]:
    """Hash every job; results come back in the jobs' order."""
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ValueError("workers must be at least 1")
    out: list[HashResult | None] = [None] * len(jobs)
    big = [i for i, j in enumerate(jobs) if j.size >= LARGE_FILE]
    small = [i for i, j in enumerate(jobs) if j.size < LARGE_FILE]
    if big:
        buf = bytearray(4 * CHUNK)
        threads = workers if workers > 1 else 1
        for i in big:
            out[i] = hash_one(jobs[i], buf, threads=threads)
            if progress:
                progress(jobs[i].size)
    if workers == 1 or len(small) < 2 * workers:
        buf = bytearray(CHUNK)
        for i in small:
            out[i] = hash_one(jobs[i], buf)
        if progress:
            progress(sum(jobs[i].size for i in small))
    else:
        # Deal files out largest first, round-robin, so batches carry similar bytes.
        small.sort(key=lambda i: jobs[i].size, reverse=True)
        nbatches = min(len(small), workers * BATCHES_PER_WORKER)
        batches = [small[b::nbatches] for b in range(nbatches)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_batch, jobs, out, b) for b in batches]
            for fut, batch in zip(futures, batches, strict=True):
                fut.result()
                if progress:
                    progress(sum(jobs[i].size for i in batch))
    return [r if r is not None else HashResult(None, "unreadable", "not hashed") for r in out]
