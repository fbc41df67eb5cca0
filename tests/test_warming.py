"""The metadata warming (``_speedups.Warming``): what it looks at, what it never touches, and its bounds.

It only ever makes a cold run faster, so what is tested is what it must not do: follow a
symlink, open anything but a directory, leave its device, run past its budget, keep
descriptors, outlive stop(), change a verdict, or run under the fault-injection hook.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import compare, scan, speedups, verify_integrity

from .conftest import Keys, build_and_sign, make_tree

pytestmark = pytest.mark.skipif(not speedups.available(), reason="C extension not built or turned off")


def _ext() -> Any:
    return importlib.import_module("duri_integrity._speedups")  # by name: mypy needs no compiled module


def _warm(root: Path, *, threads: int = 2, budget: int = 1 << 20, watch: bool = False) -> Any:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _ext().Warming(fd, threads, budget, watch)
    finally:
        os.close(fd)


def _finish(w: Any, deadline: float = 10.0) -> None:
    """Wait (bounded) for every thread of ``w`` to end; earlier Warmings' threads too."""
    end = time.monotonic() + deadline
    while w.running():
        assert time.monotonic() < end, "warming threads did not end"
        time.sleep(0.001)


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    """No test starts while threads of an earlier Warming (a verification's) still run: none would start."""
    end = time.monotonic() + 10
    while _ext().Warming.live():
        assert time.monotonic() < end, "warming threads of an earlier test did not end"
        time.sleep(0.001)
    yield


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty directory of its own (``tmp_path`` also holds the suite's working directory)."""
    (tmp_path / "t").mkdir()
    return tmp_path / "t"


def _tree(root: Path, dirs: int, files: int) -> int:
    """``dirs`` nested and sibling directories with ``files`` files each; returns the entries."""
    for d in range(dirs):
        sub = root / f"d{d % 7}" / f"e{d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x")
    return sum(1 for _ in root.rglob("*"))


def test_every_entry_is_looked_at_once(root: Path) -> None:
    total = _tree(root, 40, 30)
    w = _warm(root)
    _finish(w)
    assert w.visited() == total


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_any_thread_count_covers_the_tree(root: Path, threads: int) -> None:
    total = _tree(root, 60, 5)
    w = _warm(root, threads=threads)
    _finish(w)
    assert w.visited() == total


def test_deep_and_wide_trees_are_bounded_in_descriptors(root: Path) -> None:
    """A chain 60 deep and 200 siblings: no descriptor is left behind, however the stack filled."""
    deep = root / "deep"
    p = deep
    for k in range(60):
        p = p / f"l{k}"
    p.mkdir(parents=True)
    for k in range(200):
        (root / "wide" / f"s{k}").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    w = _warm(root)
    _finish(w)
    assert len(os.listdir("/proc/self/fd")) == before
    assert 0 < w.visited() <= 60 + 1 + 200 + 1


def test_symlinks_and_special_files_are_not_followed_or_opened(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _tree(outside, 5, 20)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    os.mkfifo(tree / "fifo")  # opening it for reading would block; it is only lstat-ed
    (tree / "f").write_bytes(b"x")
    w = _warm(tree)
    _finish(w)
    assert w.visited() == 3


def test_the_budget_bounds_the_entries(root: Path) -> None:
    _tree(root, 20, 50)
    w = _warm(root, budget=100)
    _finish(w)
    assert w.visited() == 100
    w = _warm(root, budget=0)
    _finish(w)
    assert w.visited() == 0


def test_stop_ends_the_threads_early(root: Path) -> None:
    total = _tree(root, 40, 250)
    w = _warm(root)
    w.stop()
    _finish(w, deadline=5.0)
    assert w.visited() < total


def test_a_warm_cache_stops_it_early_when_watched(root: Path) -> None:
    total = _tree(root, 40, 50)
    _finish(_warm(root))  # everything is cached now
    w = _warm(root, watch=True)
    _finish(w)
    assert w.visited() < total


def test_bad_arguments_and_non_directories(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        w = _ext().Warming(fd, 2, 10, False)
        assert (w.running(), w.visited()) == (0, 0)
    finally:
        os.close(fd)
    for threads, budget in ((0, 1), (9, 1), (2, -1)):
        with pytest.raises(ValueError):
            _warm(tmp_path, threads=threads, budget=budget)


def test_another_filesystem_inside_the_tree_is_not_entered(root: Path) -> None:
    (root / "mnt").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "mnt")], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        _tree(root / "mnt", 5, 20)
        w = _warm(root)
        _finish(w)
        assert w.visited() == 1
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=False)


def test_access_times_of_the_tree_are_left_alone(root: Path) -> None:
    """Listing with O_NOATIME (as the owner): an excluded directory's atime stays as it was."""
    _tree(root, 10, 3)
    old = 1_000_000_000
    dirs = [root, *(p for p in root.rglob("*") if p.is_dir())]
    for d in dirs:
        os.utime(d, (old, old))
    w = _warm(root)
    _finish(w)
    assert [d.stat().st_atime for d in dirs] == [old] * len(dirs)


def _signed_tree(tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> Path:
    tree = make_tree(tmp_path / "tree")
    build_and_sign(tree, keys)
    monkeypatch.setenv("DURI_INTEGRITY_STATE_DIR", str(tmp_path / "state"))
    return tree


def test_verify_warms_then_stops_at_the_end_of_the_walk(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verification starts one warming and stops it once the walk is over: the verdicts are its own."""
    tree = _signed_tree(tmp_path, keys, monkeypatch)
    events: list[str] = []
    made: list[Any] = []
    real_warming, real_walk = speedups.warming, compare._walk_any

    class Spy:
        def __init__(self, *args: int) -> None:
            made.append(real_warming(*args))
            events.append("started")

        def stop(self) -> None:
            events.append("stopped")
            made[-1].stop()

    def walk(*args: Any) -> Any:
        records = real_walk(*args)
        events.append("walked")
        return records

    def hashing(self: Any, *args: Any) -> None:
        events.append("hashing")
        real_hash(self, *args)

    real_hash = compare._Comparison.hash
    monkeypatch.setattr(speedups, "warming", Spy)
    monkeypatch.setattr(compare, "_walk_any", walk)
    monkeypatch.setattr(compare._Comparison, "hash", hashing)
    r = verify_integrity(tree, public_keys=str(keys.public), deployment="svc", use_config_file=False)
    assert r.status == "VERIFIED", r.summary
    assert events[:4] == ["started", "walked", "stopped", "hashing"] and len(made) == 1
    _finish(made[0])
    (tree / "added").write_bytes(b"x")
    r = verify_integrity(tree, public_keys=str(keys.public), deployment="svc", use_config_file=False)
    assert r.status == "FAILED" and [p.kind for p in r.problems] == ["added"]


def test_no_warming_under_the_fault_hook_or_without_the_extension(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speedups, "FAULT_HOOK", lambda stage, path: 0)
    assert scan.warm_metadata(str(tmp_path)) is scan.not_warming
    monkeypatch.setattr(speedups, "FAULT_HOOK", None)
    monkeypatch.setattr(speedups, "available", lambda: False)
    assert scan.warm_metadata(str(tmp_path)) is scan.not_warming
    monkeypatch.setattr(speedups, "available", lambda: True)
    assert scan.warm_metadata(str(tmp_path / "missing")) is scan.not_warming


def test_no_warming_when_the_caller_chose_the_thread_count(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _signed_tree(tmp_path, keys, monkeypatch)
    made: list[int] = []
    monkeypatch.setattr(speedups, "warming", lambda *args: made.append(1))
    r = verify_integrity(tree, public_keys=str(keys.public), deployment="svc", use_config_file=False, workers=2)
    assert r.status == "VERIFIED", r.summary
    assert made == []


def test_stopped_threads_close_what_waited_to_be_listed(root: Path) -> None:
    """Stopped early, the threads close every descriptor they held, even while the object lives on
    (an interrupted run's traceback may keep it for as long as the caller keeps the exception)."""
    for k in range(300):
        (root / f"d{k}" / "e").mkdir(parents=True)
    before = sorted(os.listdir("/proc/self/fd"))
    w = _warm(root)
    w.stop()
    _finish(w)
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert w.visited() < 600


def test_a_child_forked_while_threads_run_warms_afresh(root: Path, tmp_path: Path) -> None:
    """The threads do not survive fork(): a child must not wait for them to end, and never warm."""
    _tree(root, 40, 250)
    small = tmp_path / "small"
    total = _tree(small, 3, 3)
    w = _warm(root)
    if not _ext().Warming.live():
        pytest.skip("the warming ended before the fork")
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        ok = _ext().Warming.live() == 0
        child = _warm(small)
        end = time.monotonic() + 10
        while child.running() and time.monotonic() < end:
            time.sleep(0.001)
        os._exit(0 if ok and child.visited() == total else 1)
    _, status = os.waitpid(pid, 0)
    _finish(w)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_threads_run_below_the_caller(root: Path) -> None:
    """Ten nice levels below the caller (19 at most), whatever the caller's own."""
    _tree(root, 40, 250)
    code = (
        "import os, sys, time, importlib\n"
        "ext = importlib.import_module('duri_integrity._speedups')\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "w = ext.Warming(fd, 2, 1 << 20, False)\n"
        "seen = set()\n"
        "while w.running():\n"
        "    for tid in os.listdir('/proc/self/task'):\n"
        "        if int(tid) != os.getpid():\n"
        "            try:\n"
        "                seen.add(int(open(f'/proc/self/task/{tid}/stat').read().rsplit(')', 1)[1].split()[16]))\n"
        "            except (OSError, IndexError):\n"
        "                pass\n"
        "print(' '.join(map(str, sorted(seen))))\n"
    )
    for caller, want in ((0, 10), (15, 19)):
        out = subprocess.run(
            ["nice", "-n", str(caller), sys.executable, "-c", code, str(root)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seen = {int(v) for v in out.split()}
        # A thread may be seen at the caller's level just before it lowers its own.
        assert want in seen and seen <= {caller, want}, out
