"""Read ahead with the C reader while the calling thread hashes: both cores busy, no GIL ping-pong.

Reader threads call the extension, which opens, checks and reads a whole batch of small
files with the GIL released; the calling thread hashes batches as they arrive. One
reader is enough from the page cache (its syscalls take about as long as the hashing);
when the first batch shows the files coming from disk, more readers join. When the
small files are read, readers (and then the caller) take the large files, hashed in
chunks by the pure-Python code. Memory is bounded: at most ``DEPTH`` batches wait to
be hashed, one more per reader is being read, each in a buffer of ``BATCH_BYTES``.
"""

from __future__ import annotations

import mmap
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import speedups
from .threads import interrupt_behind

__all__ = ["BATCH_BYTES", "BATCH_FILES", "ReadBuffer", "page_buffer", "plan_batches", "run"]

BATCH_BYTES = (1 << 20) + 1
"""One buffer: the largest file read whole (1 MiB) plus the byte that notices growth."""
BATCH_FILES = 64
DEPTH = 3
"""Batches read and waiting to be hashed: enough to ride out a slow one, few enough to bound memory."""


ReadBuffer = mmap.mmap | bytearray
"""A buffer files are read into: :func:`page_buffer`'s, or (tests) any bytearray."""
Jobs = Sequence[tuple[Any, ...]]
"""(path relative to the root, inode, size, mode, ...) per file: hashing.FileCheck, or build's job."""
Consume = Callable[[list[int], list[Any], memoryview], None]
"""consume(batch, results, view): what the caller does with a batch the reader read into ``view``."""


def page_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer of ``size`` bytes that starts on a page boundary, for reading files into.

    Where it starts decides how fast the kernel copies from the page cache. On the AMD EPYC
    this was measured on (benchmarks/buffer_alignment.py), reading 62 MiB in 1 MiB chunks took
    4.6 ms into a page-aligned buffer and 24 ms into one that starts 16 bytes past a page boundary, which is where
    glibc puts the data of a malloc as large as these (a bytearray's): the copy is slow when
    its destination sits just past its source within a page. An anonymous mapping starts on
    a page, is zero without a memset, and returns its memory when it is dropped.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def plan_batches(jobs: Jobs, small: list[int]) -> list[list[int]]:
    """Cut the small files, in walk order (grouped by directory), into batches that fit one buffer."""
    batches: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in small:
        need = jobs[i][2] + 1
        if cur and (used + need > BATCH_BYTES or len(cur) >= BATCH_FILES):
            batches.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += need
    if cur:
        batches.append(cur)
    return batches


def read_batch(reader: Any, jobs: Jobs, batch: list[int], buf: ReadBuffer) -> list[Any]:
    """One call into the extension (the GIL is released inside); a seam for fault-injection tests."""
    return reader.read(jobs, batch, buf)  # type: ignore[no-any-return]


class _State:
    def __init__(self, batches: list[list[int]]) -> None:
        self.batches = batches
        self.next = 0
        self.ready: deque[tuple[list[int], list[Any], ReadBuffer]] = deque()
        self.free: list[ReadBuffer] = []
        self.cond = threading.Condition()
        self.stop = False
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def claim(self) -> tuple[list[int], ReadBuffer] | None:
        """The next batch to read and a buffer for it; None when all are claimed or on stop."""
        with self.cond:
            while len(self.ready) >= DEPTH and not self.stop:
                self.cond.wait()
            if self.stop or self.next >= len(self.batches):
                return None
            self.next += 1
            return self.batches[self.next - 1], self.free.pop() if self.free else page_buffer(BATCH_BYTES)

    def stopped(self) -> bool:
        return self.stop

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.errors.append(exc)
            self.stop = True
            self.cond.notify_all()


def _reader_loop(
    big_first: bool,
    st: _State,
    root_fd: int,
    jobs: Jobs,
    extra: int,
    start: Callable[[int], None],
    big: Callable[[Callable[[], bool]], None],
) -> None:
    reader = speedups.new_reader(root_fd)
    watch = extra > 0
    try:
        if big_first and not st.stop:  # from disk: the large files' reads start now, beside the small ones'
            big(st.stopped)
        while (claimed := st.claim()) is not None:
            batch, buf = claimed
            before = io_clock() if watch else (0.0, 0)
            results = read_batch(reader, jobs, batch, buf)
            if watch:
                watch = False  # decide once, on the first batch
                if from_disk(before, len(batch)):
                    start(extra)
            with st.cond:
                st.ready.append((batch, results, buf))
                st.cond.notify_all()
        reader.close()
        if not st.stop:
            big(st.stopped)
    except BaseException as exc:  # re-raised in the caller's thread
        st.fail(exc)
    finally:
        reader.close()


IO_BOUND_SECONDS_PER_FILE = 25e-6
"""Small files from the page cache take ~5-10 us each to read. A virtual disk backed by the host's
cache answers in ~60 us a file (2-core VM, docs/performance.md), under the 100 us this once was,
so its cold runs kept one reader; from 25 us, with blocks counted, the reads waited on storage."""


def io_clock() -> tuple[float, int]:
    """(now, blocks this thread has read from storage so far): the start of a :func:`from_disk` check."""
    return time.perf_counter(), resource.getrusage(resource.RUSAGE_THREAD).ru_inblock


def from_disk(before: tuple[float, int], files: int) -> bool:
    """Whether the files read since ``before`` came from storage rather than the page cache: slow,
    and the kernel counted blocks read. Slowness alone is not enough: on a busy machine a thread
    waiting for a CPU looks the same, and extra threads then only add memory and contention."""
    t0, blocks = before
    slow = (time.perf_counter() - t0) / max(1, files) > IO_BOUND_SECONDS_PER_FILE
    return slow and resource.getrusage(resource.RUSAGE_THREAD).ru_inblock > blocks


def run(
    root_fd: int,
    jobs: Jobs,
    batches: list[list[int]],
    readers: int,
    extra: int,
    big: Callable[[Callable[[], bool]], None],
    progress: Callable[[int], None] | None,
    consume: Consume,
) -> None:
    """Hand every batch, read, to ``consume``; run ``big(stopped)`` (the large files) on every thread once free.

    With ``readers`` 0 the caller reads and hashes alone. Raises the first exception any
    thread raised; every thread has stopped when this returns or raises (they use ``root_fd``).
    """
    st = _State(batches)

    def start(n: int) -> None:
        with st.cond:
            if st.stop:
                return
            for _ in range(n):
                # Every other extra reader starts with the large files (most of the bytes).
                args = (len(st.threads) % 2 == 0, st, root_fd, jobs, 0, start, big)
                t = threading.Thread(target=_reader_loop, args=args, daemon=True)
                t.start()
                st.threads.append(t)

    try:
        if readers == 0:
            _read_and_hash(st, root_fd, jobs, progress, consume)
        else:
            with st.cond:  # the first reader may start more: st.threads changes under the lock
                for k in range(readers):
                    t = threading.Thread(
                        target=_reader_loop,
                        args=(False, st, root_fd, jobs, extra if k == 0 else 0, start, big),
                        daemon=True,
                    )
                    t.start()
                    st.threads.append(t)
            _hash_ready(st, progress, consume)
        if not st.stop:
            big(st.stopped)
    except BaseException as exc:
        st.fail(interrupt_behind(exc))
    finally:
        with st.cond:
            st.stop = st.stop or bool(st.errors)
            st.cond.notify_all()
        _let_go(st.cond)
        while True:
            with st.cond:
                alive = [t for t in st.threads if t.is_alive()]
            if not alive:
                break
            for t in alive:
                t.join()
    # Drop the buffers now: an interrupted run's traceback keeps this frame, and ``st``, alive.
    st.free.clear()
    st.ready.clear()
    if st.errors:
        raise st.errors[0]


def _let_go(cond: threading.Condition) -> None:
    """Release every level of ``cond``'s lock this thread still holds. A KeyboardInterrupt that lands
    as ``Condition.__exit__`` starts (Python code, where signals are handled) leaves the lock held
    by the interrupted thread; the readers would then wait for it, and this thread for them, forever."""
    while True:
        try:
            cond.release()
        except RuntimeError:  # not held by this thread (any more): the usual case
            return


def _hash_ready(st: _State, progress: Callable[[int], None] | None, consume: Consume) -> None:
    for _ in range(len(st.batches)):
        with st.cond:
            while not st.ready and not st.stop:
                st.cond.wait()
            if st.stop:
                return
            batch, results, buf = st.ready.popleft()
            st.cond.notify_all()
        with memoryview(buf) as view:
            consume(batch, results, view)
        with st.cond:
            st.free.append(buf)
        if progress is not None:
            progress(len(batch))


def _read_and_hash(
    st: _State, root_fd: int, jobs: Jobs, progress: Callable[[int], None] | None, consume: Consume
) -> None:
    reader = speedups.new_reader(root_fd)
    buf = page_buffer(BATCH_BYTES)
    try:
        with memoryview(buf) as view:
            for batch in st.batches:
                consume(batch, read_batch(reader, jobs, batch, buf), view)
                if progress is not None:
                    progress(len(batch))
    finally:
        reader.close()
