"""The C path's read-ahead rules: how batches are cut, when reads count as from disk, the memory bound."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from duri_integrity import hashing, readahead, speedups
from duri_integrity.hashing import SMALL_FILE, FileCheck, check_files, hash_for_build
from duri_integrity.readahead import BATCH_FILES, from_disk, io_clock, plan_batches

from .test_hashing_faults import within_deadline

MIB = 1 << 20


def sized(*sizes: int) -> list[FileCheck]:
    """Jobs that only have a size (all plan_batches reads)."""
    return [(f"f{i}", 0, n, 0o644, "") for i, n in enumerate(sizes)]


def test_batches_are_cut_at_64_files() -> None:
    """65 empty files: a batch of 64 and a batch of one, in the order given."""
    jobs = sized(*[0] * 65)
    assert plan_batches(jobs, list(range(65))) == [list(range(64)), [64]]
    assert plan_batches(jobs, list(range(64))) == [list(range(64))]


def test_each_file_needs_its_size_plus_one_byte() -> None:
    """Two files whose sizes plus one byte each fill the buffer exactly share it; one byte more and they do not."""
    half = MIB // 2
    assert plan_batches(sized(half - 1, half), [0, 1]) == [[0, 1]]  # (half) + (half + 1) = MIB + 1
    assert plan_batches(sized(half, half), [0, 1]) == [[0], [1]]
    assert plan_batches(sized(MIB), [0]) == [[0]]  # the largest file read whole fills a buffer alone
    assert plan_batches(sized(MIB, 0), [0, 1]) == [[0], [1]]
    # After a cut the new batch starts empty: 1 MiB, then two that fill the next buffer exactly.
    assert plan_batches(sized(MIB, half - 1, half), [0, 1, 2]) == [[0], [1, 2]]


def test_only_the_given_files_in_their_order() -> None:
    """plan_batches takes the indices it is given (the small files), in that order; none gives no batch."""
    jobs = sized(5, MIB * 3, 7, 9)
    assert plan_batches(jobs, [3, 0, 2]) == [[3, 0, 2]]
    assert plan_batches(jobs, []) == []


def test_from_disk_needs_slow_reads_and_blocks_read() -> None:
    """Slow alone is a busy CPU, blocks alone a fast disk: only both mean reading from storage."""
    now, blocks = io_clock()
    assert isinstance(now, float) and isinstance(blocks, int)
    assert from_disk((now, blocks), 1) is False  # fast, nothing read from storage
    assert from_disk((now - 1.0, blocks), 1) is False  # slow, nothing read from storage
    assert from_disk((now - 1.0, blocks - 1), 1) is True  # slow, and blocks were read
    assert from_disk((time.perf_counter(), blocks - 1), 10**6) is False  # blocks read, but fast per file
    assert from_disk((now - 1.0, blocks - 1), 0) is True  # no files counted: the time is not divided by zero


def test_from_disk_at_a_virtual_disk_speed() -> None:
    """~60 us a file with blocks read is a virtual disk's cold read (more readers help); ~10 us a file is
    the page cache however many blocks the kernel counted. The margins are seconds: no timing flake."""
    _, blocks = io_clock()
    files = 100_000
    assert from_disk((time.perf_counter() - files * 60e-6, blocks - 1), files) is True
    assert from_disk((time.perf_counter() - files * 10e-6, blocks - 1), files) is False


def test_readers_stay_at_most_three_batches_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the hashing thread is stalled, the reader reads at most 3 batches beyond it: memory stays bounded."""
    if not speedups.available():
        pytest.skip("C extension not built or turned off")
    for k in range(BATCH_FILES * 10):
        (tmp_path / f"f{k:04d}").write_bytes(b"%d" % k)
    jobs = [(f"f{k:04d}", 0, len(b"%d" % k), 0o644, blake3(b"%d" % k).hexdigest()) for k in range(BATCH_FILES * 10)]
    for k, job in enumerate(jobs):
        st = (tmp_path / job[0]).lstat()
        jobs[k] = (job[0], st.st_ino, job[2], st.st_mode & 0o7777, job[4])
    opened = [0]

    def hook(stage: int, path: bytes) -> int:
        if stage == speedups.STAGE_OPEN:
            opened[0] += 1
        return 0

    stalled_at: list[int] = []

    def progress(n: int) -> None:
        if stalled_at:  # only the hashing thread reports progress here (no large files)
            return
        # Stall the hashing thread after its first batch until the reader stops (or passes the bound).
        bound = 4 * 64  # the batch being hashed and three read ahead
        last, still, deadline = -1, time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline and opened[0] <= bound:
            if opened[0] != last:
                last, still = opened[0], time.monotonic()
            elif opened[0] == bound and time.monotonic() - still > 0.5:
                break
            time.sleep(0.01)
        stalled_at.append(opened[0])

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    assert within_deadline(lambda: check_files(str(tmp_path), jobs, workers=2, progress=progress)) == []
    assert stalled_at and stalled_at[0] <= 4 * 64
    assert opened[0] == len(jobs)


def test_read_ahead_never_reads_a_file_twice_or_skips_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every small file is opened exactly once by the readers, whatever the reader count."""
    if not speedups.available():
        pytest.skip("C extension not built or turned off")
    names = [f"f{k:04d}" for k in range(BATCH_FILES * 5 + 3)]
    for n in names:
        (tmp_path / n).write_bytes(n.encode())
    jobs = [(n, (tmp_path / n).lstat().st_ino, len(n), 0o644, blake3(n.encode()).hexdigest()) for n in names]
    for n in names:
        os.chmod(tmp_path / n, 0o644)
    seen: list[bytes] = []
    lock = threading.Lock()

    def hook(stage: int, path: bytes) -> int:
        if stage == speedups.STAGE_OPEN:
            with lock:
                seen.append(path)
        return 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    for workers in (1, 2, 4):
        seen.clear()
        assert within_deadline(lambda w=workers: check_files(str(tmp_path), jobs, workers=w)) == []  # type: ignore[misc]
        assert sorted(seen) == sorted(n.encode() for n in names)


def _address(buf: Any) -> int:
    """Where a writable buffer's bytes start."""
    return ctypes.addressof((ctypes.c_char * 1).from_buffer(buf))


def test_files_are_read_into_page_aligned_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a file is read into, small or in chunks, C or Python, verify or build, starts on a page:
    the kernel's copy into a buffer starting just past a page boundary (a large malloc's) ran 5x slower."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for k, n in enumerate([10, 5000, SMALL_FILE + 4097] * 3):
        (tree / f"f{k}").write_bytes(os.urandom(n))
    seen: list[int] = []
    real_batch, real_small, real_chunks = readahead.read_batch, hashing._read_small, hashing._hash_chunks

    def read_batch(reader: Any, jobs: Any, batch: list[int], buf: Any) -> list[Any]:
        seen.append(_address(buf))
        return real_batch(reader, jobs, batch, buf)

    def read_small(fd: int, size: int, buf: Any, view: memoryview) -> int:
        seen.append(_address(buf))
        return real_small(fd, size, buf, view)

    def hash_chunks(fd: int, size: int, buf: Any) -> tuple[str | None, int]:
        seen.append(_address(buf))
        return real_chunks(fd, size, buf)

    monkeypatch.setattr(readahead, "read_batch", read_batch)
    monkeypatch.setattr(hashing, "_read_small", read_small)
    monkeypatch.setattr(hashing, "_hash_chunks", hash_chunks)
    files = [(p.name, p.lstat()) for p in sorted(tree.iterdir())]
    jobs = [(n, st.st_ino, st.st_size, st.st_mode & 0o7777, "") for n, st in files]
    for workers in (1, 2):
        check_files(str(tree), jobs, workers=workers)
        built = hash_for_build(str(tree), files, workers)
        assert [r.problem for r in built] == [None] * len(files), built
    assert len(seen) >= 6  # the large files at least, on each of the four runs' first
    assert [a % mmap.PAGESIZE for a in seen] == [0] * len(seen)


def _interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batches: int, consume: Callable[[Any], readahead.Consume]
) -> Any:
    """readahead.run on three readers over ``batches`` full batches, hashing with ``consume(state)``,
    which must interrupt it: returns the run's state once KeyboardInterrupt came out (a hang fails)."""
    if not speedups.available():
        pytest.skip("C extension not built or turned off")
    names = [f"f{k:04d}" for k in range(BATCH_FILES * batches)]
    for n in names:
        (tmp_path / n).write_bytes(n.encode())
    jobs = [(n, (tmp_path / n).lstat().st_ino, len(n), 0o644, "") for n in names]
    states: list[Any] = []
    real = readahead._State

    def capture(batches: list[list[int]]) -> Any:
        states.append(real(batches))
        return states[-1]

    monkeypatch.setattr(readahead, "_State", capture)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        planned = plan_batches(jobs, list(range(len(jobs))))
        with pytest.raises(KeyboardInterrupt):
            within_deadline(lambda: readahead.run(fd, jobs, planned, 3, 0, lambda stopped: None, None, consume(states)))
    finally:
        os.close(fd)
    assert all(not t.is_alive() for t in states[0].threads)
    return states[0]


def test_an_interrupt_that_leaves_the_lock_held_does_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt can land as Condition.__exit__ starts, before it releases the lock: the
    interrupted thread still holds it. The run must still stop its readers and raise, not wait forever."""

    def consume(states: list[Any]) -> readahead.Consume:
        def hash_batch(batch: list[int], results: list[Any], view: memoryview) -> None:
            states[0].cond.acquire()  # what an interrupted __exit__ leaves behind
            raise KeyboardInterrupt

        return hash_batch

    _interrupted_run(tmp_path, monkeypatch, 6, consume)


def test_an_interrupt_turned_lock_error_reaches_the_caller_as_the_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing inside Condition.wait after it let go of the lock makes the ``with`` around it
    raise a RuntimeError about that lock: the caller (a deploy script's ``except KeyboardInterrupt``,
    the console's exit 130) must get the KeyboardInterrupt, and the readers must stop."""
    calls: list[int] = []

    def consume(states: list[Any]) -> readahead.Consume:
        def hash_batch(batch: list[int], results: list[Any], view: memoryview) -> None:
            calls.append(1)
            if len(calls) < 2:  # one batch done first: its buffer goes back to the free list
                return
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("cannot release un-acquired lock")  # noqa: B904 - as threading's own

        return hash_batch

    # Three batches for three readers: each claims one at once, so when the second is hashed the
    # first's buffer is back on the free list and the third waits, read, in the ready queue.
    st = _interrupted_run(tmp_path, monkeypatch, 3, consume)
    assert not st.free and not st.ready  # the buffers are let go of, whoever keeps the state
