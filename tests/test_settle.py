"""One instant for a run (duri_integrity/settle.py): what changed between a run's start and its end."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity import build as build_mod
from duri_integrity import compare as compare_mod
from duri_integrity import settle, speedups
from duri_integrity import verify as verify_mod
from duri_integrity.build import build_manifest
from duri_integrity.errors import TreeError
from duri_integrity.report import Report

from .conftest import Signed, build_and_sign, make_tree, past_the_start


@pytest.fixture(params=["scanner", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C scanner and reader (when built), and the pure-Python walk and hasher."""
    if request.param == "python":
        monkeypatch.setattr(speedups, "_ext", None)
    return str(request.param)


def kinds(r: Report) -> set[tuple[str, str]]:
    return {(p.path, p.kind) for p in r.problems}


def _evil_copy(signed: Signed, name: str = "app") -> Path:
    """A copy of ``name`` beside the tree made of hard links to the released files (same inodes,
    old ctimes) plus one file the release does not have."""
    evil = signed.root.parent / f"evil-{name}"
    shutil.copytree(signed.root / name, evil, copy_function=os.link)
    (evil / "backdoor.py").write_text("import os\n")
    return evil


def _swap(a: Path, b: Path) -> None:
    """Exchange two directories by renaming (what an attacker with write access to the tree can do)."""
    tmp = a.with_name(a.name + ".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def test_directory_swapped_in_after_it_was_read_is_unstable(signed: Signed, walker: str) -> None:
    """A directory exchanged after every file was read (files are hard links: no file ctime moves) is not VERIFIED."""
    evil = _evil_copy(signed)
    swapped: list[bool] = []

    def progress(done: int, total: int) -> None:
        if done == total and not swapped:  # once: a second look (see assert_caught) counts again
            _swap(signed.root / "app", evil)
            swapped.append(True)

    r = signed.verify(progress=progress)
    assert_caught(r)
    assert (signed.root / "app" / "backdoor.py").exists()  # the tree as it now stands is not the release


def test_directory_swapped_in_and_back_out_is_unstable(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bad directory is in place before and after the run and the good one only while it is read."""
    evil = _evil_copy(signed)
    _swap(signed.root / "app", evil)  # the tree is bad before the run
    swaps: list[int] = []

    def progress(done: int, total: int) -> None:
        if done == total and len(swaps) == 1:
            _swap(signed.root / "app", evil)  # and bad again after it
            swaps.append(2)

    real_mark = settle.start_mark

    def start() -> settle.Mark:
        mark = real_mark()
        if not swaps:
            _swap(signed.root / "app", evil)  # good while it is read
            swaps.append(1)
        return mark

    monkeypatch.setattr(verify_mod, "start_mark", start)  # the moment the run begins
    monkeypatch.setattr(settle, "start_mark", start)  # and a second look's
    r = signed.verify(progress=progress)
    assert swaps == [1, 2]
    assert_caught(r)


def assert_caught(r: Report) -> None:
    """The swap attack failed: the run saw the swaps (unstable), or, when their stamps could not be
    placed on the clocks, looked again after a wait and found the bad directory in place."""
    assert r.status == "FAILED", r
    found = kinds(r)
    assert found and ({k for _, k in found} == {"unstable"} or ("app/backdoor.py", "added") in found), r.problems


def test_a_change_the_clocks_cannot_place_is_looked_at_again(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every stamp of the swaps falls between the start's coarse and fine clocks (the fine one is
    set ahead here): none is certainly from the run, so the run is made again after a wait, and
    the bad directory left in place is found. Trusting such stamps as "before the run" would
    give VERIFIED."""
    evil = _evil_copy(signed)
    _swap(signed.root / "app", evil)
    marks: list[settle.Mark] = []
    real_mark, real_changed = settle.start_mark, settle.changed_since

    def start() -> settle.Mark:
        mark = real_mark()
        if not marks:
            mark = mark._replace(fine=mark.fine + 10**10)
            _swap(signed.root / "app", evil)  # good while it is read
        marks.append(mark)
        return mark

    def progress(done: int, total: int) -> None:
        if done == total and len(marks) == 1:
            _swap(signed.root / "app", evil)  # and bad again after it

    checks: list[tuple[list[tuple[int, str]], bool]] = []

    def changed_since(root: str, mark: settle.Mark, *rest: Any, **kw: Any) -> tuple[list[tuple[int, str]], bool]:
        checks.append(real_changed(root, mark, *rest, **kw))
        return checks[-1]

    monkeypatch.setattr(verify_mod, "start_mark", start)
    monkeypatch.setattr(settle, "start_mark", start)
    monkeypatch.setattr(compare_mod, "changed_since", changed_since)
    r = signed.verify(progress=progress)
    assert checks == [([], True)]  # the first look: nothing certain, something unplaced
    assert len(marks) == 2 and r.status == "FAILED" and ("app/backdoor.py", "added") in kinds(r), r.problems


def test_an_untouched_tree_is_looked_at_once_without_a_wait(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing changed within a tick of the start: one look, and no wait for the coarse clock."""
    time.sleep(0.05)

    def no_wait(mark: settle.Mark, root: str | None = None) -> settle.Mark:
        raise AssertionError("waited")

    monkeypatch.setattr(settle, "wait_past", no_wait)
    assert signed.verify().status == "VERIFIED"
    assert signed.verify(quick=True).status == "VERIFIED"


def test_files_rewritten_in_turn_are_unstable(signed: Signed, walker: str) -> None:
    """Two files rewritten after they were read, each back to released bytes before its read: not VERIFIED."""
    target = signed.root / "app" / "main.py"
    data = target.read_bytes()

    def progress(done: int, total: int) -> None:
        if done == total:
            target.write_bytes(b"X" * len(data))

    r = signed.verify(progress=progress)
    # Unstable; or, when the write fell in the start's clock tick, modified on a second look.
    assert r.status == "FAILED" and kinds(r) & {("app/main.py", "unstable"), ("app/main.py", "modified")}, r.problems


def test_root_replaced_after_reading_is_not_verified(signed: Signed, walker: str) -> None:
    """The whole root renamed away and a copy with an extra file put in its place during the run."""
    root = signed.root
    copy = root.parent / "copy"
    shutil.copytree(root, copy, symlinks=True, copy_function=os.link)
    (copy / "extra.py").write_text("x = 1\n")

    def progress(done: int, total: int) -> None:
        if done == total and copy.exists():  # once: a second look counts again
            root.rename(root.parent / "gone")
            copy.rename(root)

    r = signed.verify(progress=progress)
    assert r.status != "VERIFIED", r
    assert (".", "unstable") in kinds(r) or ("extra.py", "added") in kinds(r), r.problems
    assert [p.path for p in r.problems].count(".") <= 1, r.problems  # the root once, however many looks saw it


def test_unchanged_tree_still_verifies(signed: Signed, walker: str) -> None:
    """The end-of-run check passes a tree nobody touched, with and without quick mode."""
    assert signed.verify().status == "VERIFIED"
    assert signed.verify(quick=True).status == "VERIFIED"


def test_a_change_just_after_the_mark_is_always_later_than_it(tmp_path: Path) -> None:
    """After wait_past(mark), any change gets a ctime after mark (the coarse clock's lag is covered)."""
    marks = []
    for i in range(50):
        mark = settle.wait_past(settle.start_mark())
        # New files, and no one asks for their times until the end: the kernel stamps them from
        # its coarse clock (a file stat-ed since its last change may get a fine stamp instead).
        (tmp_path / f"f{i}").write_text(str(i))
        marks.append(mark)
    early = [i for i, mark in enumerate(marks) if (tmp_path / f"f{i}").stat().st_ctime_ns <= mark.fine]
    assert early == []
    assert settle.changed_since(str(tmp_path), marks[-1], ["f49"]) == ([(0, "changed during the check")], False)


def test_any_change_after_the_start_is_at_least_its_coarse_clock(tmp_path: Path) -> None:
    """Without a wait, a change made after the start never carries a stamp before its coarse clock:
    it is either certainly later (after the fine clock) or one that cannot be placed, never "before"."""
    for i in range(50):
        mark = settle.start_mark()
        (tmp_path / f"f{i}").write_text(str(i))
        assert mark.coarse <= mark.fine
        assert (tmp_path / f"f{i}").stat().st_ctime_ns >= mark.coarse
        changed, unplaced = settle.changed_since(str(tmp_path), mark, [f"f{i}"])
        assert changed == [(0, "changed during the check")] or (changed == [] and unplaced)


def test_a_change_before_the_mark_is_not_later_than_it(tmp_path: Path) -> None:
    """A file written just before the run began does not count as changed during it."""
    for i in range(30):
        (tmp_path / "f").write_text(str(i))
        mark = settle.start_mark()
        assert settle.changed_since(str(tmp_path), mark, ["f"])[0] == []  # perhaps unplaced; never changed


def test_stuck_coarse_clock_fails_closed(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the kernel's coarse clock never passes the start, the run is an ERROR, not a VERIFIED without the check."""
    monkeypatch.setattr(settle, "MAX_WAIT", 0.05)
    monkeypatch.setattr(time, "clock_gettime_ns", lambda clock: 0)
    r = signed.verify()
    assert r.status == "ERROR" and "coarse clock" in (r.reason or ""), r


def test_missing_path_is_reported_with_its_position(tmp_path: Path) -> None:
    """changed_since names a path that is gone, and a path under a directory that is gone."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    far = time.time_ns() + 10**12  # far in the future: nothing counts as changed by its ctime
    got, unplaced = settle.changed_since(str(tmp_path), settle.Mark(far, far), ["", "d", "d/x", "nope", "gone/y"])
    assert not unplaced
    assert [pos for pos, _ in got] == [3, 4]
    assert {why for _, why in got} == {"replaced or removed during the check (No such file or directory)"}


def test_changed_since_leaves_no_descriptor_open(tmp_path: Path, walker: str) -> None:
    """The lookups close every directory they opened, the root included, also when paths are gone."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("f")
    (tmp_path / "c").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        settle.changed_since(str(tmp_path), settle.Mark(0, 0), ["", "a", "a/b", "c", "c/gone", "x/y", "a/b/f"])
    assert len(os.listdir("/proc/self/fd")) == before


def test_build_refuses_a_tree_that_changed_after_it_was_read(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """build signs nothing when a file it read changes before the build ends: never a mix of two moments."""
    target = signed.root / "app" / "main.py"
    real = settle.changed_since

    def late_write(root_real: str, mark: settle.Mark, *rest: Any, **kw: Any) -> tuple[list[tuple[int, str]], bool]:
        target.write_text("print('other')\n")
        return real(root_real, mark, *rest, **kw)

    monkeypatch.setattr(build_mod, "changed_since", late_write)
    with pytest.raises(TreeError, match=r"app/main\.py: unstable: changed during the check"):
        build_manifest(str(signed.root), deployment="svc")


def test_build_refuses_a_directory_swapped_after_it_was_read(signed: Signed, monkeypatch: pytest.MonkeyPatch) -> None:
    """build signs nothing when a directory it listed is exchanged for another before the build ends."""
    evil = _evil_copy(signed)
    real = settle.changed_since

    def late_swap(root_real: str, mark: settle.Mark, *rest: Any, **kw: Any) -> tuple[list[tuple[int, str]], bool]:
        _swap(signed.root / "app", evil)
        return real(root_real, mark, *rest, **kw)

    monkeypatch.setattr(build_mod, "changed_since", late_swap)
    with pytest.raises(TreeError, match=r"unstable"):
        build_manifest(str(signed.root), deployment="svc")


def test_wait_past_returns_only_once_the_coarse_clock_is_strictly_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A coarse clock equal to the mark is not past it: a change stamped then would look like before the run."""
    readings = iter([100, 100, 100, 101])
    seen: list[int] = []

    def coarse(clock: int) -> int:
        assert clock == 5  # CLOCK_REALTIME_COARSE on Linux: the clock inode times come from
        seen.append(next(readings))
        return seen[-1]

    monkeypatch.setattr(time, "clock_gettime_ns", coarse)
    assert settle.wait_past(settle.Mark(100, 90)) == settle.Mark(100, 90, waited=True)
    assert seen == [100, 100, 100, 101]
    seen.clear()
    readings = iter([101])
    settle.wait_past(settle.Mark(100, 90))  # already past: no waiting
    assert seen == [101]


@pytest.mark.parametrize(
    ("ctime_ns", "step"),
    [
        (1_700_000_000_000_000_000, 2_000_000_000),  # whole seconds: 2 s, FAT's step, to be safe
        (1_700_000_000_120_000_000, 10_000_000),  # hundredths
        (1_700_000_000_100_000_000, 100_000_000),  # never coarser than 0.1 s below a second
        (1_700_000_000_123_456_789, 1),
        (1_700_000_000_123_456_000, 1_000),
    ],
)
def test_granularity_from_a_ctime(ctime_ns: int, step: int) -> None:
    """The step a filesystem rounds times to is read from a ctime's sub-second digits."""
    assert settle.granularity(ctime_ns) == step


def test_wait_past_on_a_coarse_filesystem_waits_for_the_next_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With whole-second times, a change in the start's second would be stamped before it: wait it out."""
    monkeypatch.setattr(settle, "granularity", lambda ctime: 1_000_000_000)
    mark = settle.Mark(5_000_000_100, 5_000_000_000)
    readings = iter([5_000_000_200, 5_900_000_000, 6_000_000_000])
    seen: list[int] = []

    def coarse(clock: int) -> int:
        seen.append(next(readings))
        return seen[-1]

    monkeypatch.setattr(time, "clock_gettime_ns", coarse)
    settle.wait_past(mark, str(tmp_path))
    assert seen == [5_000_000_200, 5_900_000_000, 6_000_000_000]


@pytest.fixture
def whole_second_fs(tmp_path: Path) -> Iterator[Path]:
    """A real ext4 filesystem that keeps whole-second times (128-byte inodes), loop-mounted."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-I", "128", str(image)], capture_output=True, check=False)
    if made.returncode != 0 or subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=False).returncode:
        pytest.skip("needs mkfs.ext4 and a loop mount (root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_swap_within_the_starting_second_on_a_whole_second_filesystem(whole_second_fs: Path, walker: str) -> None:
    """On a filesystem of whole seconds, a directory swapped in and out within the run's second is still seen."""
    from .conftest import new_keys

    root = make_tree(whole_second_fs / "tree")
    signed = build_and_sign(root, new_keys(whole_second_fs.parent / "keys"))
    assert settle.granularity(os.stat(root).st_ctime_ns) == 2_000_000_000
    evil = _evil_copy(signed)
    _swap(signed.root / "app", evil)
    swaps: list[int] = []

    def progress(done: int, total: int) -> None:
        if done == total and not swaps:
            _swap(signed.root / "app", evil)  # bad again right after the reads
            swaps.append(1)

    _swap(signed.root / "app", evil)  # good from here: in the same second as the run's start, often
    r = signed.verify(progress=progress)
    assert swaps == [1]
    assert_caught(r)


@pytest.mark.parametrize(("pattern", "status"), [("logs/", "VERIFIED"), ("logs/*", "FAILED")])
def test_service_writes_in_an_excluded_directory(tree: Path, keys: Any, pattern: str, status: str) -> None:
    """A file created during the run in a directory excluded as a whole is no change to the release;
    under ``logs/*`` the directory itself is checked, and its entries changed: unstable."""
    (tree / "logs").mkdir()
    signed = build_and_sign(tree, keys, exclude=[pattern])

    def progress(done: int, total: int) -> None:
        if done == total:
            time.sleep(0.03)  # later than a clock tick after the start: certainly during the run
            (tree / "logs" / "service.log").write_text("started\n")

    r = signed.verify(progress=progress)
    assert r.status == status, r.problems
    if status == "FAILED":
        assert kinds(r) == {("logs", "unstable")}


def test_the_c_and_python_look_ups_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The extension's ctimes and the Python loop give the same answer for every kind of path:
    the root, directories, files, gone paths, paths through a symlink (never followed), "." and ".."."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("f")
    (tmp_path / "g").write_text("g")
    (tmp_path / "link").symlink_to("d")
    paths = ["", "d", "d/e", "d/e/f", "g", "link", "link/e", "gone", "gone/x", "g/x", "d/..", "d/.", "d/", "d/e/f"]
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for since in (0, os.stat(tmp_path / "g").st_ctime_ns, 2**62):
            inodes = [0] * len(paths)
            inodes[4] = os.stat(tmp_path / "g").st_ino  # "g" is still that inode
            inodes[3] = inodes[4]  # "d/e/f" is another
            c_found = settle._ctimes(root_fd, paths, since, inodes)
            monkeypatch.setattr(settle, "LOOKUP_BATCH", 3)  # the positions of later batches too
            assert settle._ctimes(root_fd, paths, since, inodes) == c_found
            monkeypatch.setattr(speedups, "_ext", None)
            py_found = settle._ctimes(root_fd, paths, since, inodes)
            monkeypatch.undo()
            assert c_found == py_found
        assert {pos for pos, err, _ in c_found if err > 0} == {6, 7, 8, 9, 10, 11, 12}
        assert [pos for pos, err, _ in c_found if err < 0] == [3]
    finally:
        os.close(root_fd)


def _on_first_end_lookup(monkeypatch: pytest.MonkeyPatch, when: Callable[[str], bool], act: Callable[[], None]) -> None:
    """Run ``act`` once, just before the end-of-run check looks up the first path for which ``when``
    holds: through the extension's hook (C) or ``os.stat`` (the Python look-up)."""
    done: list[bool] = []

    def maybe(rel: str) -> None:
        if not done and when(rel):
            done.append(True)
            act()

    def hook(stage: int, path: bytes) -> int:
        if stage == speedups.STAGE_CTIME:
            maybe(os.fsdecode(path))
        return 0

    real_stat = os.stat

    def stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
        if dir_fd is not None and not follow_symlinks and isinstance(path, str):
            where = os.readlink(f"/proc/self/fd/{dir_fd}")
            maybe(os.path.relpath(os.path.join(where, path), settled_root[0]))
        return real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)

    settled_root: list[str] = []
    real_changed = settle.changed_since

    def changed_since(root: str, *rest: Any, **kw: Any) -> tuple[list[tuple[int, str]], bool]:
        settled_root[:] = [root]
        with monkeypatch.context() as m:
            m.setattr(os, "stat", stat)
            return real_changed(root, *rest, **kw)

    monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
    monkeypatch.setattr(compare_mod, "changed_since", changed_since)
    monkeypatch.setattr(build_mod, "changed_since", changed_since)


def test_a_directory_swapped_while_the_end_check_runs_is_unstable(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``app`` exchanged for a copy with another main.py (stamped before the run) as the end check
    reaches the first path in it: that directory and the root are looked up after everything in
    them, and every file must still be the inode hashed, so the swap shows (no forged VERIFIED)."""
    evil = _evil_copy(signed)
    (evil / "main.py").unlink()
    (evil / "main.py").write_text("print('evil')\n")  # another inode, with a ctime from before the run
    time.sleep(0.03)

    def swap() -> None:
        past_the_start(signed.root.parent / "probe")  # stamps certainly after the start: no second look
        _swap(signed.root / "app", evil)

    _on_first_end_lookup(monkeypatch, lambda rel: rel.startswith("app/"), swap)
    r = signed.verify()
    assert (signed.root / "app" / "backdoor.py").exists()  # the swap happened
    assert r.status == "FAILED" and ("app", "unstable") in kinds(r), r.problems


def test_a_file_replaced_by_an_older_inode_during_the_end_check_is_unstable(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checked file renamed over by another inode made before the run: another inode than was hashed."""
    spare = signed.root.parent / "spare.py"
    spare.write_text("print('evil')\n")
    time.sleep(0.03)
    target = signed.root / "app" / "main.py"
    _on_first_end_lookup(monkeypatch, lambda rel: rel == "app/main.py", lambda: os.rename(spare, target))
    r = signed.verify()
    assert target.read_text() == "print('evil')\n"
    assert r.status == "FAILED" and ("app/main.py", "unstable") in kinds(r), r.problems
    assert [p.actual for p in r.problems if p.path == "app/main.py"] == ["replaced during the check"]


@pytest.mark.parametrize("moment", ["hashed", "end check"])
def test_a_root_symlink_repointed_during_the_run_is_unstable(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Verifying ``current`` (a symlink to the release) while it is repointed to another tree: the root
    path no longer leads to the tree checked, so not VERIFIED (the report names ``current``)."""
    release = signed.root
    evil = release.parent / "evil-release"
    shutil.copytree(release, evil, symlinks=True)
    (evil / "app" / "main.py").write_text("print('evil')\n")
    current = release.parent / "current"
    current.symlink_to(release.name)

    def repoint() -> None:
        (release.parent / "next").symlink_to(evil.name)
        (release.parent / "next").rename(current)

    if moment == "hashed":

        def progress(done: int, total: int) -> None:
            if done == total and current.resolve() == release:
                repoint()

        r = verify_at(signed, current, progress=progress)
    else:
        _on_first_end_lookup(monkeypatch, lambda rel: True, repoint)
        r = verify_at(signed, current)
    assert current.resolve() == evil
    assert r.status == "FAILED" and (".", "unstable") in kinds(r), r.problems
    assert any("leads elsewhere" in (p.actual or "") for p in r.problems), r.problems


def verify_at(signed: Signed, root: Path, **kw: Any) -> Report:
    from duri_integrity import verify_integrity

    return verify_integrity(
        root, manifest=signed.manifest, public_keys=[str(signed.keys.public)], use_config_file=False, **kw
    )


def test_build_of_a_root_symlink_repointed_during_the_build_is_refused(
    signed: Signed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build of ``current`` signs nothing when ``current`` is repointed before the build ends."""
    release = signed.root
    other = release.parent / "other"
    shutil.copytree(release, other, symlinks=True)
    current = release.parent / "current"
    current.symlink_to(release.name)

    def repoint() -> None:
        (release.parent / "next").symlink_to(other.name)
        (release.parent / "next").rename(current)

    _on_first_end_lookup(monkeypatch, lambda rel: True, repoint)
    with pytest.raises(TreeError, match="leads elsewhere"):
        build_manifest(str(current), deployment="svc")


def test_an_entry_swapped_after_the_root_was_looked_at_shows_on_its_last_look(
    signed: Signed, walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``app`` swapped after the end check's look at the root, before it resolves the root's path
    again: the root's own ctime is read once more, last, so the swap shows."""
    evil = _evil_copy(signed)
    real = settle._root_now

    def swap_first(*args: Any) -> str | None:
        past_the_start(signed.root.parent / "probe")
        _swap(signed.root / "app", evil)
        return real(*args)

    monkeypatch.setattr(settle, "_root_now", swap_first)
    r = signed.verify()
    assert (signed.root / "app" / "backdoor.py").exists()
    assert r.status == "FAILED" and kinds(r) == {(".", "unstable")}, r.problems


def test_a_stamp_between_the_clocks_is_unplaced_on_a_file_or_on_the_root_alone(tmp_path: Path, walker: str) -> None:
    """Either a checked path or the root's last look alone, stamped between the start's coarse and fine
    clocks, makes the check unable to place it (a second look follows); older stamps do not."""
    (tmp_path / "old").write_text("old")
    time.sleep(0.03)
    (tmp_path / "new").write_text("new")
    new = (tmp_path / "new").stat().st_ctime_ns
    root_ctime = tmp_path.stat().st_ctime_ns  # set when "new" was created: both 30 ms after "old"
    latest = max(new, root_ctime)
    root = str(tmp_path)
    file_between = settle.Mark(fine=latest + 10**9, coarse=new - 1000)
    assert settle.changed_since(root, file_between, ["new"]) == ([], True)  # the file, no root path
    assert settle.changed_since(root, file_between, ["old"]) == ([], False)  # an older file alone
    root_between = settle.Mark(fine=latest + 10**9, coarse=root_ctime - 1000)
    assert settle.changed_since(root, root_between, ["old"], root_path=root) == ([], True)  # the root's last look
    after = settle.Mark(fine=latest + 10**9, coarse=latest + 1000)
    assert settle.changed_since(root, after, ["old", "new"], root_path=root) == ([], False)


def test_the_roots_last_look(tmp_path: Path) -> None:
    """The root's last look: its path must still resolve (else why), and its ctime is placed from
    ``since`` on (the boundary included) and counted as a change after the fine clock."""
    root = str(tmp_path)
    ctime = os.lstat(root).st_ctime_ns
    mark = settle.Mark(fine=ctime, coarse=0)
    assert settle._root_now(root, root, mark, ctime) == ""  # exactly at since: cannot be placed
    assert settle._root_now(root, root, mark, ctime + 1) is None
    assert settle._root_now(root, root, mark._replace(fine=ctime - 1), 0) == "changed during the check"
    gone = str(tmp_path / "current")
    assert settle._root_now(gone, root, mark, 0) == (
        f"the root path {gone!r} cannot be resolved any more (No such file or directory)"
    )


def _many_leaves(root: Path) -> tuple[list[str], list[int]]:
    """600 files in 6 directories, then the directories deepest first, then the root: the order
    changed_since is given, with every file's inode (one wrong) and a gone file in each half."""
    files = []
    for d in range(6):
        (root / f"d{d}").mkdir()
        for k in range(100):
            (root / f"d{d}" / f"f{k:03d}").write_bytes(b"%d" % k)
            files.append(f"d{d}/f{k:03d}")
    inodes = [(root / rel).stat().st_ino for rel in files]
    inodes[450] = inodes[451]  # another inode than the one there
    files[20], files[520] = "d0/gone", "d5/gone"
    return [*files, *(f"d{d}" for d in reversed(range(6))), ""], [*inodes, *[0] * 7]


def test_many_leaves_are_looked_up_on_two_threads_with_the_same_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From SPLIT_LEAVES files the look-up runs on two threads: the same answer as on one, in both
    halves, and every file is looked at before the first directory, the root last."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    paths, inodes = _many_leaves(tmp_path)
    leaves = len(paths) - 7
    assert leaves >= settle.SPLIT_LEAVES
    (tmp_path / "d3" / "f007").write_bytes(b"changed")  # a ctime after `since` in the second half
    since = (tmp_path / "d3" / "f007").stat().st_ctime_ns
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    order: list[bytes] = []
    threads: set[int] = set()

    def hook(stage: int, path: bytes) -> int:
        if stage == speedups.STAGE_CTIME:
            if path == os.fsencode(paths[0]):
                time.sleep(0.2)  # the first half's thread falls behind: the directories must still wait
            order.append(path)
            threads.add(threading.get_ident())
        return 0

    try:
        one = settle._ctimes(root_fd, paths, since, inodes)
        monkeypatch.setattr(speedups, "FAULT_HOOK", hook)
        two = settle._ctimes(root_fd, paths, since, inodes, leaves)
    finally:
        os.close(root_fd)
    assert sorted(two) == one
    assert {pos for pos, err, _ in one if err > 0} == {20, 520}
    assert [pos for pos, err, _ in one if err < 0] == [450]
    assert [pos for pos, err, _ in one if err == 0] == [307]  # d3/f007
    assert sorted(order[:leaves]) == sorted(os.fsencode(p) for p in paths[:leaves])
    assert order[leaves:] == [os.fsencode(p) for p in paths[leaves:]]
    assert len(threads) == 2


def test_a_failure_on_the_second_look_up_thread_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception on the thread that looks up the first half of the files reaches the caller, after
    the other half has stopped, and no directory is looked at."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    paths, inodes = _many_leaves(tmp_path)
    leaves = len(paths) - 7
    real = settle._lookup
    calls: list[tuple[int, int]] = []

    def lookup(root_fd: int, paths: list[str], since: int, inodes: list[int], start: int, end: int) -> Any:
        calls.append((start, end))
        if start == 0:
            raise MemoryError("injected")
        return real(root_fd, paths, since, inodes, start, end)

    monkeypatch.setattr(settle, "_lookup", lookup)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(MemoryError, match="injected"):
            settle._ctimes(root_fd, paths, 0, inodes, leaves)
    finally:
        os.close(root_fd)
    assert sorted(calls) == [(0, leaves // 2), (leaves // 2, leaves)]  # never (leaves, len(paths))


def test_no_second_thread_means_one_look_up_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When no thread can be started for the first half, one thread looks everything up, in order."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    paths, inodes = _many_leaves(tmp_path)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        expected = settle._ctimes(root_fd, paths, 0, inodes)
        monkeypatch.setattr(threading.Thread, "start", refuse)
        assert settle._ctimes(root_fd, paths, 0, inodes, len(paths) - 7) == expected
    finally:
        os.close(root_fd)


@pytest.mark.parametrize(("files", "cpus", "threads"), [(511, 2, 0), (512, 2, 1), (600, 1, 0)])
def test_when_the_look_up_takes_a_second_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int, cpus: int, threads: int
) -> None:
    """A second thread only from SPLIT_LEAVES files and with two CPUs to run on; the answer is the same."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    for k in range(files):
        (tmp_path / f"f{k:04d}").write_bytes(b"")
    paths = [*(f"f{k:04d}" for k in range(files)), ""]
    inodes = [0] * len(paths)
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self)
        real_start(self)

    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        expected = settle._ctimes(root_fd, paths, 0, inodes)
        monkeypatch.setattr(settle, "_cpus", lambda: cpus)
        monkeypatch.setattr(threading.Thread, "start", start)
        assert settle._ctimes(root_fd, paths, 0, inodes, files) == expected
    finally:
        os.close(root_fd)
    assert len(started) == threads


def test_an_interrupt_inside_thread_start_is_raised_not_taken_for_a_lack_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing in Thread.start()'s wait surfaces as a RuntimeError about a lock: it is the
    interrupt, and must reach the caller instead of the one-thread fallback swallowing it."""
    if not speedups.available():
        pytest.skip("needs the C extension")
    paths, inodes = _many_leaves(tmp_path)
    real_start = threading.Thread.start

    def interrupted(self: threading.Thread) -> None:
        real_start(self)  # the thread is started; the interrupt lands in the wait that follows
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")  # noqa: B904 - as threading's own, the interrupt its context

    monkeypatch.setattr(threading.Thread, "start", interrupted)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(KeyboardInterrupt):
            settle._ctimes(root_fd, paths, 0, inodes, len(paths) - 7)
        # The helper that did start was waited for: nothing uses the descriptor once it is closed.
        assert not [t for t in threading.enumerate() if t.name == "end-of-run look-up"]
    finally:
        os.close(root_fd)
