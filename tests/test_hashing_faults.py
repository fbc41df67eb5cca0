"""Fault injection into hashing: reads that fail or change under us, threads that raise, sizing, leaks.

Every test goes through the public entry points (``check_files``, ``hash_for_build``,
``verify_integrity``, ``build_manifest``) on real files, on both paths: the C reader (when
built) and pure Python (the ``speedups`` switch turned off in-process). Faults are injected
by wrapping ``os`` functions as the hashing code sees them (pure Python, and the large files
the C path hashes in Python too) and through ``speedups.FAULT_HOOK`` (the C reader).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, overload

import pytest
from blake3 import blake3

from duri_integrity import build as build_mod
from duri_integrity import hashing, readahead, schedule, speedups
from duri_integrity.build import build_manifest
from duri_integrity.errors import IntegrityError, TreeError
from duri_integrity.hashing import SMALL_FILE, BuildHash, FileCheck, check_files, hash_for_build
from duri_integrity.keys import SECRET_KEY_HEAD, generate_keypair

from .conftest import Keys, build_and_sign, past_the_start

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
DEADLINE = 60.0
"""Seconds any one check may take here (they take milliseconds): a hang fails, never blocks the run."""
IO_THREADS_ENV = os.environ.get("DURI_INTEGRITY_IO_THREADS")
"""Read at collection, before the autouse fixture clears it: the C path's thread count follows it."""
C_IO_THREADS = 16
"""The C path's threads reading a cold cache (docs/performance.md)."""
UNSTABLE = "changed while being read"
REAL_READV = os.readv
"""Taken at import: inside a fault, ``os.readv`` is the fault itself."""


@pytest.fixture(params=["c", "python"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test through the C reader (skipped if not built) and through pure Python.

    Faults are injected by replacing functions of ``os``, the module the hashing code calls them
    through (``os.readv``, not a name bound at import), so the code sees them as it runs."""
    if request.param == "c":
        if not speedups.available():
            pytest.skip("C extension not built or turned off")
    else:
        monkeypatch.setattr(speedups, "_ext", None)
    return str(request.param)


def within_deadline(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a daemon thread: a hang (a loop, a lost wake-up) fails the test instead of the run."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # re-raised below, in the test's thread
            box.append(("raised", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(DEADLINE)
    if not box:
        pytest.fail(f"still running after {DEADLINE:.0f} s: a hang")
    kind, value = box[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def job_for(root: Path, rel: str, digest: str | None = None) -> FileCheck:
    """What a manifest would say about ``rel`` as it is now (or with another digest)."""
    p = root / rel
    st = p.lstat()
    return (rel, st.st_ino, st.st_size, st.st_mode & 0o7777, digest or blake3(p.read_bytes()).hexdigest())


def write(root: Path, rel: str, data: bytes, mode: int = 0o644) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    p.chmod(mode)
    os.utime(p, ns=(10**18, 10**18))  # in the past: any later write changes the mtime, however coarse the clock


def check(root: Path, jobs: Sequence[FileCheck], workers: int | None = 2, **kw: Any) -> list[tuple[Any, ...]]:
    """check_files within the deadline, problems sorted."""
    return sorted(within_deadline(lambda: check_files(str(root), jobs, workers=workers, **kw)))


def build(root: Path, names: Sequence[str], workers: int = 2) -> list[BuildHash]:
    files = [(n, (root / n).lstat()) for n in names]
    return within_deadline(lambda: hash_for_build(str(root), files, workers=workers))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class Reads:
    """``os.readv`` as the hashing code sees it: a fault on one file, and a bound on its reads.

    ``fault(call, fd, buffers)`` runs before each read of the target and may return a result
    to use instead of reading. More than ``limit`` reads of the target, or a second read at its
    end, fails the test at once: a read loop that never ends must not wait for a timeout.
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        target: Path,
        fault: Callable[[int, int, list[Any]], int | None],
        limit: int = 16,
    ) -> None:
        self.real = REAL_READV
        self.target = str(target)
        self.fault = fault
        self.limit = limit
        self.calls = 0
        self.at_end = 0
        self.c_reads = 0
        """Reads of the target by the C reader, for hooks that count them (it does not call ``os.readv``)."""
        monkeypatch.setattr(os, "readv", self.readv)

    def again(self) -> None:
        """Start over for the next check of the same file: the fault happens again, the bounds count anew."""
        self.calls = self.at_end = self.c_reads = 0

    def readv(self, fd: int, buffers: list[Any]) -> int:
        if where(fd) != self.target:
            return self.real(fd, buffers)
        self.calls += 1
        if self.calls > self.limit:
            raise AssertionError(f"{self.calls} reads of one file: a read without end")
        got = self.fault(self.calls, fd, buffers)
        n = self.real(fd, buffers) if got is None else got
        if n == 0:
            self.at_end += 1
            if self.at_end > 1:
                raise AssertionError("read again after the end of the file: a loop")
        return n


def change(target: Path, how: str) -> None:
    """Change ``target`` in place as a writer racing the check would."""
    size = target.stat().st_size
    if how == "grows":
        with open(target, "ab") as f:
            f.write(b"+" * 10)
    elif how == "shrinks":
        os.truncate(target, size // 2)
    elif how == "emptied":  # the first read is already at the end: read no more
        os.truncate(target, 0)
    else:  # rewritten: other bytes, the same size
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, bytes(b ^ 0xFF for b in target.read_bytes()[:64]), 0)
        finally:
            os.close(fd)


def change_on_first_read(monkeypatch: pytest.MonkeyPatch, target: Path, how: str) -> Reads:
    """The change happens after the open and fstat, just before the first read (both paths)."""

    def fault(call: int, fd: int, buffers: list[Any]) -> int | None:
        if call == 1:
            change(target, how)
        return None

    rel = target.name.encode()
    reads = Reads(monkeypatch, target, fault)

    def hook(stage: int, path: bytes) -> int:  # the C reader's small files (verify's, and build's too)
        if stage == speedups.STAGE_READ and path.endswith(rel):
            reads.c_reads += 1
            if reads.c_reads == 1:
                change(target, how)
        return 0

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    return reads


SIZES = {"small": 5000, "largest-small": SMALL_FILE - 1, "exactly-small": SMALL_FILE, "chunked": 3 * SMALL_FILE + 7}
"""One size per way a file is read: whole (C reader or Python), the C reader's largest, the largest
read whole by Python, and in chunks."""


# -- a read that fails after a successful open -------------------------------------------------


@pytest.mark.parametrize("size", ["small", "chunked"])
def test_read_failing_after_open_is_reported_and_the_batch_goes_on(
    tmp_path: Path, path: str, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on a read after the open: that file is 'unreadable' (strerror), the files after it are still checked."""
    write(tmp_path, "a-ok", b"fine")
    write(tmp_path, "b-bad", os.urandom(SIZES[size]))
    write(tmp_path, "c-modified", b"before")
    jobs = [job_for(tmp_path, n) for n in ("a-ok", "b-bad", "c-modified")]
    write(tmp_path, "c-modified", b"after!")

    def fault(call: int, fd: int, buffers: list[Any]) -> int | None:
        raise OSError(errno.EIO, "Input/output error")

    def hook(stage: int, p: bytes) -> int:
        return errno.EIO if stage == speedups.STAGE_READ and p == b"b-bad" else 0

    Reads(monkeypatch, tmp_path / "b-bad", fault)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    modified = ("modified", f"blake3:{jobs[2][4]}", f"blake3:{blake3(b'after!').hexdigest()}")
    assert check(tmp_path, jobs, workers=1) == [(1, "unreadable", None, "Input/output error"), (2, *modified)]
    [ok, bad] = build(tmp_path, ["a-ok", "b-bad"], workers=1)
    assert ok == BuildHash(blake3(b"fine").hexdigest(), None, "", False)
    assert bad == BuildHash(None, "unreadable", "Input/output error", False)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOMEM])
def test_out_of_resources_while_reading_is_an_error_for_the_run(
    tmp_path: Path, path: str, code: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE/ENOMEM on a read says nothing about the file: the check and the build raise TreeError."""
    write(tmp_path, "f", os.urandom(SIZES["chunked"]))
    write(tmp_path, "g", b"small")
    jobs = [job_for(tmp_path, n) for n in ("f", "g")]

    def fault(call: int, fd: int, buffers: list[Any]) -> int | None:
        raise OSError(code, os.strerror(code))

    Reads(monkeypatch, tmp_path / "f", fault)
    with pytest.raises(TreeError, match="ran out of resources while reading files to hash"):
        check(tmp_path, jobs)
    with pytest.raises(TreeError, match="ran out of resources while reading files to hash"):
        build(tmp_path, ["f", "g"])


# -- files that change while read --------------------------------------------------------------


@pytest.mark.parametrize("how", ["grows", "shrinks", "emptied", "rewritten"])
@pytest.mark.parametrize("size", list(SIZES))
def test_file_changing_while_read_is_unstable_never_a_digest(
    tmp_path: Path, path: str, size: str, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grown, shrunk, emptied or rewritten (same size) after the open: 'unstable' in check and build, never a digest."""
    write(tmp_path, "f", os.urandom(SIZES[size]))
    write(tmp_path, "z-after", b"z")
    jobs = [job_for(tmp_path, "f"), job_for(tmp_path, "z-after", "0" * 64)]
    reads = change_on_first_read(monkeypatch, tmp_path / "f", how)
    problems = check(tmp_path, jobs, workers=1)
    assert problems[0] == (0, "unstable", None, UNSTABLE)
    assert [p[:2] for p in problems[1:]] == [(1, "modified")]  # the batch went on
    write(tmp_path, "f", os.urandom(SIZES[size]))
    reads.again()
    assert build(tmp_path, ["f"], workers=1) == [BuildHash(None, "unstable", UNSTABLE, False)]


@pytest.mark.parametrize("size", ["exactly-small", "chunked"])
def test_file_ending_before_its_size_is_unstable(
    tmp_path: Path, path: str, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads that end early while fstat still says the old size (a lying filesystem): 'unstable', not a digest."""
    data = os.urandom(SIZES[size])
    write(tmp_path, "f", data)
    jobs = [job_for(tmp_path, "f")]

    def half_then_end(call: int, fd: int, buffers: list[Any]) -> int | None:
        if call == 1:
            return REAL_READV(fd, [memoryview(buffers[0])[: len(data) // 2]])
        return 0

    reads = Reads(monkeypatch, tmp_path / "f", half_then_end)
    assert check(tmp_path, jobs) == [(0, "unstable", None, UNSTABLE)]
    reads.again()
    assert build(tmp_path, ["f"]) == [BuildHash(None, "unstable", UNSTABLE, False)]


@pytest.mark.parametrize("size", ["small", "exactly-small", "chunked"])
def test_file_growing_at_every_read_is_not_read_without_end(
    tmp_path: Path, path: str, size: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that grows faster than it is read (a writer appending): given up past its size, 'unstable'."""
    write(tmp_path, "f", os.urandom(SIZES[size]))
    jobs = [job_for(tmp_path, "f")]

    def grow(call: int, fd: int, buffers: list[Any]) -> int | None:
        now = (tmp_path / "f").stat().st_size
        os.truncate(tmp_path / "f", now + 4 * SMALL_FILE)  # sparse: costs no disk
        return None

    reads = Reads(monkeypatch, tmp_path / "f", grow, limit=8)
    monkeypatch.setattr(  # the C reader reads small files itself: there the file grows once, before the read
        speedups, "FAULT_HOOK", lambda stage, p: (grow(0, -1, []) or 0) if stage == speedups.STAGE_READ else 0
    )
    assert check(tmp_path, jobs) == [(0, "unstable", None, UNSTABLE)]
    os.truncate(tmp_path / "f", SIZES[size])
    reads.again()
    assert build(tmp_path, ["f"]) == [BuildHash(None, "unstable", UNSTABLE, False)]


@pytest.mark.parametrize("size", ["small", "exactly-small", "chunked"])
def test_short_reads_are_continued(tmp_path: Path, path: str, size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads that return fewer bytes than asked (signals, network filesystems) are legal: the file still verifies."""
    data = os.urandom(SIZES[size])
    write(tmp_path, "f", data)
    jobs = [job_for(tmp_path, "f")]

    def short(call: int, fd: int, buffers: list[Any]) -> int | None:
        # One byte first (the smallest short read), then pieces, then whole reads.
        want = 1 if call == 1 else 4093 if call < 20 else len(buffers[0])
        return REAL_READV(fd, [memoryview(buffers[0])[:want]])

    reads = Reads(monkeypatch, tmp_path / "f", short, limit=64)
    assert check(tmp_path, jobs) == []
    reads.again()
    assert build(tmp_path, ["f"]) == [BuildHash(blake3(data).hexdigest(), None, "", False)]


# -- what replaces a file between the walk and the read ----------------------------------------


def test_fifo_swapped_in_is_never_waited_on(tmp_path: Path, path: str) -> None:
    """A FIFO in a file's place (no writer) is opened without blocking and refused by type, for check and build."""
    write(tmp_path, "f", b"content")
    jobs = [job_for(tmp_path, "f")]
    walked = (tmp_path / "f").lstat()
    (tmp_path / "f").unlink()
    os.mkfifo(tmp_path / "f")
    try:
        assert check(tmp_path, jobs) == [(0, "unstable", None, "replaced during the check")]
        got = within_deadline(lambda: hash_for_build(str(tmp_path), [("f", walked)], workers=1))
        assert got == [BuildHash(None, "unstable", "replaced between listing and opening", False)]
    finally:
        # Should a mutant block in open(), a writer lets it go (O_NONBLOCK: ENXIO when nobody reads).
        with contextlib.suppress(OSError):
            os.close(os.open(tmp_path / "f", os.O_WRONLY | os.O_NONBLOCK))


def test_symlink_swapped_in_is_refused_at_the_open(tmp_path: Path, path: str) -> None:
    """A symlink in a file's place is never followed (O_NOFOLLOW): the open itself fails, for check and build."""
    write(tmp_path, "f", b"content")
    write(tmp_path, "twin", b"content")  # the link's target has the expected bytes
    jobs = [job_for(tmp_path, "f")]
    walked = (tmp_path / "f").lstat()
    (tmp_path / "f").unlink()
    (tmp_path / "f").symlink_to("twin")
    race = "replaced or removed during the check (Too many levels of symbolic links)"
    assert check(tmp_path, jobs) == [(0, "unstable", None, race)]
    assert build_with(tmp_path, [("f", walked)]) == [BuildHash(None, "unstable", race, False)]


def change_listed(root: Path, how: str) -> None:
    """Change the listed file ``f`` as a writer racing the build between its walk and its open would."""
    if how == "size":
        (root / "f").write_bytes(b"listed, then longer")
    elif how == "mode":
        (root / "f").chmod(0o600)
    elif how == "mtime":
        later = (root / "f").lstat().st_mtime_ns + 10**9
        os.utime(root / "f", ns=(later, later))
    else:  # replaced by a file written beside the tree before the run, with the same bytes
        (root.parent / "g").rename(root / "f")


@pytest.mark.parametrize(
    ("change_", "refused"),
    [
        ("size", "f: unstable: changed between listing and opening"),  # the read's own check (rule 2)
        ("mode", "f: unstable: changed between listing and opening"),  # and the mode the walk listed
        ("mtime", "f: unstable: changed during the check"),  # the end-of-run check: the file's ctime
        ("replaced", ".: unstable: changed during the check"),  # the end-of-run check: its directory's ctime
    ],
)
def test_build_refuses_a_file_changed_between_listing_and_opening(
    tmp_path: Path, path: str, change_: str, refused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another size, mode, mtime or inode than the walk listed: no manifest (size, mode: not even a digest)."""
    tree = tmp_path / "tree"
    write(tree, "f", b"listed")
    write(tmp_path, "g", b"listed")
    tree.chmod(0o755)
    if change_ in ("size", "mode"):  # caught by the read itself, before a byte is hashed
        walked = (tree / "f").lstat()
        change_listed(tree, change_)
        assert build_with(tree, [("f", walked)]) == [
            BuildHash(None, "unstable", "changed between listing and opening", False)
        ]
        write(tree, "f", b"listed")
    real = hashing.hash_for_build  # what build calls

    def late_change(root: str, files: Sequence[tuple[str, os.stat_result]], workers: int | None) -> list[BuildHash]:
        past_the_start(tmp_path / "probe")  # the change is certainly during the build, not in its first tick
        change_listed(tree, change_)  # f is listed by the walk, not yet opened
        return real(root, files, workers)

    monkeypatch.setattr(build_mod, "hash_for_build", late_change)
    with pytest.raises(TreeError, match=f"problem\\(s\\): (.*; )?{re.escape(refused)}(;|$)"):
        within_deadline(lambda: build_manifest(str(tree), deployment="svc"))


def build_with(root: Path, files: list[tuple[str, os.stat_result]]) -> list[BuildHash]:
    return within_deadline(lambda: hash_for_build(str(root), files, workers=1))


@pytest.mark.parametrize("then", ["symlink", "removed"])
def test_name_changed_after_the_open_of_another_inode_is_unstable(
    tmp_path: Path, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened inode is not the one listed, and the name no longer is it (a symlink to it, or gone): unstable."""
    monkeypatch.setattr(speedups, "_ext", None)  # the fault sits between Python's open and fstat
    write(tmp_path, "f", b"content")
    rel, ino, size, mode, digest = job_for(tmp_path, "f")
    jobs: list[FileCheck] = [(rel, ino + 10**9, size, mode, digest)]  # as after an overlayfs copy-up
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        if where(fd) == str(tmp_path / "f"):
            (tmp_path / "f").rename(tmp_path / "moved")
            if then == "symlink":
                (tmp_path / "f").symlink_to("moved")  # following it would find the opened file
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    assert check(tmp_path, jobs, workers=1) == [(0, "unstable", None, "replaced during the check")]


def test_the_listed_inode_opened_is_hashed_wherever_its_name_went(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The opened file is the inode listed: hashed by inode, its name not looked up (it moved after the open)."""
    write(tmp_path, "f", b"content")
    jobs = [job_for(tmp_path, "f")]
    walked = (tmp_path / "f").lstat()
    moves: list[str] = []

    def move() -> None:  # between the open and its fstat, once per check
        if not moves:
            moves.append("f")
            (tmp_path / "f").rename(tmp_path / "moved")

    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        if where(fd) == str(tmp_path / "f"):
            move()
        return real_fstat(fd)

    def hook(stage: int, p: bytes) -> int:  # the C reader's fstat
        if stage == speedups.STAGE_FSTAT and p == b"f":
            move()
        return 0

    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    assert check(tmp_path, jobs) == []
    assert moves == ["f"]
    (tmp_path / "moved").rename(tmp_path / "f")
    moves.clear()
    assert build_with(tmp_path, [("f", walked)]) == [BuildHash(blake3(b"content").hexdigest(), None, "", False)]
    assert moves == ["f"]


def test_other_inode_than_listed_that_is_still_the_name_is_hashed(tmp_path: Path, path: str) -> None:
    """A listed inode that differs from the opened one while the name still is the opened file (copy-up): checked."""
    write(tmp_path, "f", b"content")
    rel, ino, size, mode, digest = job_for(tmp_path, "f")
    assert check(tmp_path, [(rel, ino + 10**9, size, mode, digest)]) == []
    wrong = (rel, ino + 10**9, size, mode, "0" * 64)
    assert [p[:2] for p in check(tmp_path, [wrong])] == [(0, "modified")]


# -- one batch with one of each problem --------------------------------------------------------


def test_each_problem_in_a_batch_and_every_file_after_it(tmp_path: Path, path: str) -> None:
    """Missing, FIFO, resized, re-moded, fine and modified files in one batch: each reported, none skipped."""
    names = ["a-missing", "b-fifo", "c-resized", "d-moded", "e-fine", "f-modified", "g-fine"]
    for n in names:
        write(tmp_path, n, n.encode() * 3)
    jobs = [job_for(tmp_path, n) for n in names]
    (tmp_path / "a-missing").unlink()
    (tmp_path / "b-fifo").unlink()
    os.mkfifo(tmp_path / "b-fifo")
    write(tmp_path, "c-resized", b"longer than it was")
    (tmp_path / "d-moded").chmod(0o600)
    write(tmp_path, "f-modified", b"F-MODIFIEDF-MODIFIEDF-MODIFIED")
    new = blake3(b"F-MODIFIEDF-MODIFIEDF-MODIFIED").hexdigest()
    for workers in (1, 2):
        assert check(tmp_path, jobs, workers=workers) == [
            (0, "unstable", None, "replaced or removed during the check (No such file or directory)"),
            (1, "unstable", None, "replaced during the check"),
            (2, "modified", "size 27", "size 18"),
            (3, "mode_changed", "0644", "0600"),
            (5, "modified", f"blake3:{jobs[5][4]}", f"blake3:{new}"),
        ]


def test_every_file_checked_once_whatever_its_size_and_thread(tmp_path: Path, path: str) -> None:
    """Hundreds of files of every size class in nested directories: each wrong digest reported once, progress exact."""
    route = hashing.ROUTE  # where pure Python hands files to the helper threads first
    sizes = [0, 1, 100, route - 1, route, 70_000, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1, 2 * SMALL_FILE + 3]
    rels = []
    for d in ("", "a/", "a/b/", "c/"):
        for k in range(70):
            rels.append(f"{d}f{k:02d}")
            write(tmp_path, rels[-1], os.urandom(sizes[k % len(sizes)] if k < 30 else k))
    good = [job_for(tmp_path, r) for r in rels]
    bad = [(*j[:4], "0" * 64) for j in good]
    for workers in (1, 2, 3):
        counted: list[int] = []
        assert check(tmp_path, good, workers=workers, progress=counted.append) == []
        assert sum(counted) == len(good)
        problems = check(tmp_path, bad, workers=workers)
        assert [(i, kind) for i, kind, *_ in problems] == [(i, "modified") for i in range(len(bad))]
        assert all(actual == f"blake3:{good[i][4]}" for i, _, _, actual in problems)
    assert check(tmp_path, []) == []
    res = build(tmp_path, rels, workers=3)
    assert [r.digest for r in res] == [j[4] for j in good]


def test_worker_count_below_one_is_refused(tmp_path: Path) -> None:
    """0 workers is a programming error for check and build, not a check that runs nothing."""
    write(tmp_path, "f", b"x")
    with pytest.raises(ValueError, match="workers"):
        within_deadline(lambda: check_files(str(tmp_path), [job_for(tmp_path, "f")], workers=0))
    with pytest.raises(ValueError, match="workers"):
        within_deadline(lambda: hash_for_build(str(tmp_path), [("f", (tmp_path / "f").lstat())], workers=0))


# -- an exception in a hashing thread ----------------------------------------------------------


class Bug(Exception):
    """The stand-in for a bug in a hashing thread."""


class BugInHelpers:
    """A bug met by any thread but the caller's; once helpers run, the caller waits for one of them to meet it."""

    def __init__(self) -> None:
        self.caller: threading.Thread | None = None
        self.before: set[threading.Thread] = set()
        self.waited = False
        self.raised = threading.Event()
        """Set when a thread other than the caller met the bug."""

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` (the check or build meeting this bug) within the deadline, as the caller."""

        def run() -> object:
            self.caller = threading.current_thread()
            self.before = set(threading.enumerate())
            return fn()

        within_deadline(run)

    def meet(self) -> None:
        if threading.current_thread() is self.caller:
            if not self.waited and set(threading.enumerate()) - self.before:
                # Helpers are running: let one of them meet the bug before the caller takes all the work.
                self.waited = True
                self.raised.wait(10)
        else:
            self.raised.set()
            raise Bug("bug in a hashing thread")

    def wrap(self, fn: Callable[P, R]) -> Callable[P, R]:
        """``fn``, raising Bug when a helper calls it."""

        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            self.meet()
            return fn(*args, **kwargs)

        return wrapped


class RaisingInHelpers(BugInHelpers, Sequence[T]):
    """A sequence whose items raise Bug in any thread but the caller's, which waits for that to happen."""

    def __init__(self, items: Sequence[T]) -> None:
        super().__init__()
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[T]: ...
    def __getitem__(self, i: int | slice) -> T | Sequence[T]:
        if isinstance(i, slice):
            return self.items[i]
        self.meet()
        return self.items[i]

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


def many_files(root: Path, n: int = 300, big: int = 3) -> list[str]:
    rels = []
    for k in range(n):
        rels.append(f"d{k % 3}/f{k:03d}")
        write(root, rels[-1], b"%d" % k)
    for k in range(big):
        rels.append(f"big{k}")
        write(root, rels[-1], os.urandom(SMALL_FILE + k))
    return rels


@pytest.mark.parametrize("workers", [2, 3])
def test_exception_in_a_hashing_thread_reaches_the_caller(
    tmp_path: Path, path: str, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a helper thread is raised by check_files and hash_for_build: no result with files unchecked."""
    rels = many_files(tmp_path)
    before = fd_count()
    jobs = RaisingInHelpers([job_for(tmp_path, r) for r in rels])
    with pytest.raises(Bug):
        jobs.call(lambda: check_files(str(tmp_path), jobs, workers=workers))
    assert jobs.raised.is_set()
    # Build copies its input on the caller's thread: the bug sits in reading instead, where helpers work
    # (a batch through the C reader, a file through Python's reader).
    bug = BugInHelpers()
    monkeypatch.setattr(readahead, "read_batch", bug.wrap(readahead.read_batch))
    monkeypatch.setattr(hashing, "read_file", bug.wrap(hashing.read_file))
    files = [(r, (tmp_path / r).lstat()) for r in rels]
    with pytest.raises(Bug):
        bug.call(lambda: hash_for_build(str(tmp_path), files, workers=workers))
    assert bug.raised.is_set()
    assert fd_count() == before  # every thread's descriptors closed on the way out


def test_exception_while_hashing_a_file_fails_the_verification(
    tmp_path: Path, keys: Keys, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-OS exception while a helper thread reads a large file: verify_integrity raises, never VERIFIED."""
    rels = many_files(tmp_path / "tree", n=60, big=4)
    signed = build_and_sign(tmp_path / "tree", keys)
    assert within_deadline(lambda: signed.verify(workers=2)).status == "VERIFIED"
    callers: list[threading.Thread] = []
    helper_raised = threading.Event()
    real = os.readv

    def readv(fd: int, buffers: list[Any]) -> int:
        if "/tree/big" in where(fd):
            if threading.current_thread() in callers:
                helper_raised.wait(10)
            else:
                helper_raised.set()
            raise Bug("bug while hashing")
        return real(fd, buffers)

    monkeypatch.setattr(os, "readv", readv)

    def verify() -> object:
        callers.append(threading.current_thread())
        return signed.verify(workers=2)

    with pytest.raises(Bug):
        within_deadline(verify)
    assert helper_raised.is_set() and len(rels) == 64


# -- thread sizing ---------------------------------------------------------------------------


class Census:
    """Counts the threads hashing a check. Helpers (all but one on the C path) wait at their first
    file until the caller has hashed its first batch, so every thread started by then is still
    alive to count and none has taken the work the later ones would have found."""

    def __init__(self, count_at_hash: int = 0, lead: bool = True) -> None:
        self.count_at_hash = count_at_hash
        """Count when the caller hashes the file of this number (a build has no progress callback): 0, never."""
        self.lead = lead
        """Let one helper run (the C path's caller only hashes what readers read). Pure Python's caller
        reads too: there a free helper could take all the work before the extra helpers start."""
        self.caller_hashed = 0
        self.caller = threading.current_thread()
        self.before = set(threading.enumerate())
        self.lock = threading.Lock()
        self.leader: threading.Thread | None = None
        self.counted = threading.Event()
        self.first = 0
        self.peak = 0

    def threads(self) -> int:
        return 1 + sum(1 for t in threading.enumerate() if t not in self.before)

    def hold(self) -> None:
        t = threading.current_thread()
        with self.lock:
            self.peak = max(self.peak, self.threads())
            if t is self.caller:
                return
            if self.lead:
                self.leader = self.leader or t
        if t is not self.leader:
            self.counted.wait(DEADLINE / 2)

    def hashed(self) -> None:
        """A build hashed a file (every thread that hashes calls this; only the caller's are counted)."""
        with self.lock:
            self.peak = max(self.peak, self.threads())
            if threading.current_thread() is self.caller:
                self.caller_hashed += 1
                if self.caller_hashed == self.count_at_hash:
                    self.first = self.threads()
                    self.counted.set()

    def progress(self, n: int) -> None:
        with self.lock:
            self.peak = max(self.peak, self.threads())
            if threading.current_thread() is self.caller and not self.counted.is_set():
                self.first = self.threads()
                self.counted.set()


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[FileCheck]]:
    """1,700 tiny files: more batches (of either path) than threads, so no thread runs out of work early."""
    root = tmp_path_factory.mktemp("wide")
    for k in range(1700):
        (root / f"f{k:04d}").write_bytes(b"%d" % k)
    return root, [job_for(root, f"f{k:04d}") for k in range(1700)]


def count_threads(
    wide: tuple[Path, list[FileCheck]],
    monkeypatch: pytest.MonkeyPatch,
    cores: int | None,
    workers: int | None,
    from_disk: bool,
    build: bool = False,
) -> tuple[int, int]:
    """(threads alive when the caller has hashed its first batch, most threads seen) for one check
    (or, with ``build``, one hash_for_build)."""
    root, jobs = wide
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    real_decide = readahead.from_disk

    def decide(before: tuple[float, int], files: int) -> bool:
        real_decide(before, files)  # what it is given must still be a measurement
        return from_disk

    monkeypatch.setattr(readahead, "from_disk", decide)
    monkeypatch.setattr(schedule, "from_disk", decide)

    def run() -> tuple[int, int]:
        # A build's caller is counted at the first file of its second batch (pure Python: it takes batches
        # from the back; C reader: the second batch read for it).
        batch = readahead.BATCH_FILES if speedups.available() else schedule.BATCH
        census = Census(count_at_hash=batch + 1 if build else 0, lead=speedups.available())
        real_open, real_looks = os.open, hashing.looks_like_secret_key

        def looks(head: bytes) -> bool:  # build checks every file it hashed for a secret key, on that thread
            census.hashed()
            return real_looks(head)

        def open_(p: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            if dir_fd is not None and not flags & os.O_DIRECTORY:
                census.hold()
            return real_open(p, flags, mode, dir_fd=dir_fd)

        def hook(stage: int, p: bytes) -> int:
            if stage == speedups.STAGE_OPEN:
                census.hold()
            return 0

        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
        monkeypatch.setattr(hashing, "looks_like_secret_key", looks)
        try:
            if build:
                files = [(rel, (root / rel).lstat()) for rel, *_ in jobs]
                assert [r.digest for r in hash_for_build(str(root), files, workers=workers)] == [j[4] for j in jobs]
            else:
                assert check_files(str(root), jobs, workers=workers, progress=census.progress) == []
        finally:
            monkeypatch.setattr(os, "open", real_open)
            census.counted.set()
        return census.first, census.peak

    return within_deadline(run)


@pytest.mark.parametrize(
    ("cores", "workers", "from_disk", "threads"),
    [
        (None, None, True, 1),  # cores unknown: one thread, and none to add
        (1, None, True, 1),
        (2, None, False, 2),  # one thread a core while the page cache answers
        (3, None, False, 3),
        (20, None, False, 8),  # at most 8 by default
        (2, None, True, 4),  # from disk: two threads a core...
        (3, None, True, 6),
        (20, None, True, 16),  # ...at most 16
        (2, 3, True, 3),  # a worker count given is kept, from disk too
        (2, 1, True, 1),
    ],
)
def test_python_path_threads(
    wide: tuple[Path, list[FileCheck]],
    monkeypatch: pytest.MonkeyPatch,
    cores: int | None,
    workers: int | None,
    from_disk: bool,
    threads: int,
) -> None:
    """Pure Python: one thread a core (at most 8); reading from disk adds threads up to 2 a core (at most 16)."""
    monkeypatch.setattr(speedups, "_ext", None)
    assert count_threads(wide, monkeypatch, cores, workers, from_disk) == (threads, threads)


@pytest.mark.parametrize(
    ("cores", "workers", "from_disk", "threads"),
    [
        (None, None, True, 1),
        (1, None, True, 1),  # the caller reads and hashes alone
        (2, None, False, 2),  # the caller hashes, one reader reads
        (3, None, False, 3),
        (20, None, False, 8),
        (2, None, True, C_IO_THREADS),  # from disk: readers join up to 16 threads
        (2, 3, True, 3),
        (2, 2, True, 2),
    ],
)
def test_c_path_threads(
    wide: tuple[Path, list[FileCheck]],
    monkeypatch: pytest.MonkeyPatch,
    cores: int | None,
    workers: int | None,
    from_disk: bool,
    threads: int,
) -> None:
    """C reader: the caller hashes, workers - 1 threads read; reading from disk adds readers up to 16 threads."""
    if not speedups.available():
        pytest.skip("C extension not built or turned off")
    if IO_THREADS_ENV:
        pytest.skip("DURI_INTEGRITY_IO_THREADS set: another thread count")
    assert count_threads(wide, monkeypatch, cores, workers, from_disk) == (threads, threads)


@pytest.mark.parametrize(("setting", "threads"), [(1, 2), (2, 2), (3, 3), (5, 5)])
def test_c_path_threads_from_disk_stop_at_the_setting(
    wide: tuple[Path, list[FileCheck]], monkeypatch: pytest.MonkeyPatch, setting: int, threads: int
) -> None:
    """C reader from disk: readers join up to the IO-threads setting in all, none when the workers already reach it."""
    if not speedups.available():
        pytest.skip("C extension not built or turned off")
    monkeypatch.setattr(hashing, "IO_THREADS_C", setting)
    assert count_threads(wide, monkeypatch, 2, None, True) == (threads, threads)


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [
        (None, None, 1),
        (3, None, 3),  # one thread per core by default, as in verify
        (2, 2, 2),  # a worker count given is kept...
        (2, 3, 3),
        (4, 1, 1),  # ...and reading from disk adds none
    ],
)
def test_build_threads_are_one_per_core_by_default_and_never_more_from_disk(
    wide: tuple[Path, list[FileCheck]],
    path: str,
    monkeypatch: pytest.MonkeyPatch,
    cores: int | None,
    workers: int | None,
    threads: int,
) -> None:
    """hash_for_build runs one thread per core by default (or the count given) and adds none when reading from disk."""
    assert count_threads(wide, monkeypatch, cores, workers, True, build=True) == (threads, threads)


@pytest.mark.parametrize(("value", "threads"), [("3", 3), ("", C_IO_THREADS), ("0", C_IO_THREADS)])
def test_io_threads_setting_for_benchmarks(value: str, threads: int) -> None:
    """DURI_INTEGRITY_IO_THREADS (benchmarks) sets the C path's reading threads, read at import; empty or 0: 16."""
    code = "from duri_integrity import hashing; print(hashing.IO_THREADS_C)"
    env = {**os.environ, "DURI_INTEGRITY_IO_THREADS": value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == str(threads)


# -- secret keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["small", "chunked"])
def test_secret_key_detection_reads_the_first_4096_bytes(tmp_path: Path, size: str) -> None:
    """A key whose line ends at byte 4,096 is flagged (small file or large), and one byte further too (only
    its optional "=" is cut off); two bytes further it is not looked at."""
    generate_keypair(str(tmp_path / "k.key"), str(tmp_path / "k.pub"))
    key_line = (tmp_path / "k.key").read_bytes().splitlines()[1]
    names = []
    for end in (SECRET_KEY_HEAD, SECRET_KEY_HEAD + 1, SECRET_KEY_HEAD + 2):
        comment = b"c" * (end - len(key_line) - 1)
        data = comment + b"\n" + key_line + b"\n"
        assert data.index(key_line) + len(key_line) == end
        names.append(f"key-ending-at-{end}")
        write(tmp_path, names[-1], data + b"\0" * (SIZES[size] - len(data)))
    res = build(tmp_path, names)
    assert [r.secret_key for r in res] == [True, True, False]
    assert all(r.digest == blake3((tmp_path / n).read_bytes()).hexdigest() for r, n in zip(res, names, strict=True))


def test_build_refuses_a_tree_with_a_file_changing_while_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_manifest over a file rewritten (same size) during its read: no manifest, the file named."""
    write(tmp_path / "tree", "app/main.py", b"print('v1')\n" * 100)
    write(tmp_path / "tree", "app/other.py", b"x = 1\n")
    (tmp_path / "tree" / "app").chmod(0o755)
    (tmp_path / "tree").chmod(0o755)
    change_on_first_read(monkeypatch, tmp_path / "tree" / "app" / "main.py", "rewritten")
    with pytest.raises(IntegrityError, match=f"app/main.py: unstable: {UNSTABLE}"):
        within_deadline(lambda: build_manifest(str(tmp_path / "tree"), deployment="svc"))


# -- descriptors -------------------------------------------------------------------------------


def test_no_descriptor_left_per_file_or_directory(tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checks and builds of a nested tree, passing and failing (gone, FIFO, EIO), leave no descriptor open."""
    rels = []
    for d in ("", "a/", "a/b/", "a/b/c/", "d/"):
        for k, n in enumerate([10, 5000, SMALL_FILE + 5]):
            rels.append(f"{d}f{k}")
            write(tmp_path, rels[-1], os.urandom(n))
    jobs = [job_for(tmp_path, r) for r in rels]
    build(tmp_path, rels)
    check(tmp_path, jobs)  # the first run may open what stays open (imports, caches)
    before = fd_count()
    for workers in (1, 2, 3):
        assert check(tmp_path, jobs, workers=workers) == []
        assert all(r.digest for r in build(tmp_path, rels, workers=workers))
    assert fd_count() == before
    (tmp_path / "a/b/f0").unlink()
    os.mkfifo(tmp_path / "a/b/f0")
    (tmp_path / "d/f1").unlink()

    def fault(call: int, fd: int, buffers: list[Any]) -> int | None:
        raise OSError(errno.EIO, "Input/output error")

    Reads(monkeypatch, tmp_path / "a/b/c/f2", fault)
    monkeypatch.setattr(
        speedups, "FAULT_HOOK", lambda stage, p: errno.EIO if stage == speedups.STAGE_READ and p == b"a/f1" else 0
    )
    broken = {"a/b/f0", "d/f1", "a/b/c/f2"} | ({"a/f1"} if path == "c" else set())
    for workers in (1, 2, 3):
        assert {jobs[i][0] for i, *_ in check(tmp_path, jobs, workers=workers)} == broken
    assert fd_count() == before
