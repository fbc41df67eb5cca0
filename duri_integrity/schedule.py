"""The pure-Python hashing schedule: which thread takes which files.

The calling thread works through the small files in batches from the back; helper
threads take the large files first, then whatever small batches are left, from the
front. One task per file would cost more in hand-offs than it saves. When the first
batch shows the files coming from disk, more helpers join.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .readahead import from_disk, io_clock, page_buffer
from .threads import interrupt_behind, join_started
from .walk import DirCursor

__all__ = ["BATCH", "Worker", "schedule", "split"]

BATCH = 48


class Worker:
    """What one hashing thread keeps between batches: its read buffer and its directory chain."""

    __slots__ = ("buf", "cursor")

    def __init__(self, root_fd: int, buf_size: int) -> None:
        self.buf = page_buffer(buf_size)
        self.cursor = DirCursor(root_fd)


class _Work:
    """The big files one by one, then the small ones in batches; claimed from either end."""

    def __init__(self, small: list[int], big: list[int]) -> None:
        self.work = [[i] for i in big] + [small[k : k + BATCH] for k in range(0, len(small), BATCH)]
        self.lock = threading.Lock()
        self.front, self.end = 0, len(self.work)  # the next from the front, the end of the unclaimed range

    def take(self, front: bool) -> list[int] | None:
        with self.lock:
            if self.front >= self.end:
                return None
            if front:
                self.front += 1
                return self.work[self.front - 1]
            self.end -= 1
            return self.work[self.end]


def schedule(
    small: list[int],
    big: list[int],
    run_batch: Callable[[list[int], Worker], None],
    root_fd: int,
    buf_size: int,
    workers: int,
    progress: Callable[[int], None] | None,
    extra_when_io_bound: int = 0,
) -> None:
    """Run every index: helpers take big files first from the front, the caller small batches from the back.

    With ``extra_when_io_bound``, the caller times its batches; if small files take
    far longer than hashing from the page cache would (a cold cache, a slow disk),
    that many more helpers join: waiting on a disk wants more threads than cores.
    """
    take = _Work(small, big).take
    errors: list[BaseException] = []
    helpers: list[threading.Thread] = []

    def start_helpers(n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=loop, args=(True,), daemon=True)
            try:
                t.start()
            except RuntimeError as exc:
                if interrupt_behind(exc) is not exc:  # interrupted in start(): it runs, and is waited for
                    helpers.append(t)
                raise
            helpers.append(t)

    def loop(front: bool) -> None:
        worker = Worker(root_fd, buf_size)
        watch = not front and extra_when_io_bound > 0
        try:
            while not errors and (batch := take(front)) is not None:  # an error or interrupt stops all
                before = io_clock() if watch else (0.0, 0)
                run_batch(batch, worker)
                if watch:
                    watch = False  # decide once, on the first batch
                    if from_disk(before, len(batch)):
                        start_helpers(extra_when_io_bound)
                if progress is not None:
                    progress(len(batch))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
        finally:
            worker.cursor.close()

    try:
        start_helpers(workers - 1)
    except BaseException as exc:  # an interrupt while a helper started: stop the ones that did
        errors.append(interrupt_behind(exc))
    if not errors:
        loop(not helpers)
    for t in list(helpers):
        join_started(t)
    if errors:
        raise errors[0]


def split(sizes: Sequence[int], route: int) -> tuple[list[int], list[int]]:
    """(files under ``route`` bytes in their given order, the others largest first).

    Small files keep the walk's order, which groups them by directory, so a batch
    opens few directories.
    """
    big = sorted((i for i, n in enumerate(sizes) if n >= route), key=sizes.__getitem__, reverse=True)
    small = [i for i, n in enumerate(sizes) if n < route]
    return small, big
