"""walk.py, rule by rule: the walk's listing, skips and exclusions, its errors in place of
entries, a directory swapped mid-walk, the directory cursor, and descriptors never leaked.

The walk and the cursor are called directly on real trees; faults are injected by wrapping
``os.scandir`` / ``os.open`` in-process (the walk calls them through the ``os`` module).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duri_integrity.errors import TreeError
from duri_integrity.exclude import Excluder
from duri_integrity.walk import (
    MAX_HELD_DIRS,
    DirCursor,
    Found,
    Walk,
    WalkError,
    check_resources,
    check_root,
    error,
    inside_root,
    kind_of,
    open_problem,
    open_root,
    relative_inside,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def walk(root: Path, *, skip: tuple[str, ...] = (), exclude: tuple[str, ...] = (), stat_files: bool = False) -> Walk:
    return Walk(os.path.realpath(root), Excluder(list(exclude)), skip, stat_files=stat_files)


def listing(w: Walk) -> dict[str, Found | WalkError]:
    return {f.path: f for f in w}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """top.txt, a/x/in-a, b/x/in-b, cache/ (with a file), link -> top.txt, MANIFEST.json as a directory."""
    r = tmp_path / "root"
    (r / "a" / "x").mkdir(parents=True)
    (r / "b" / "x").mkdir(parents=True)
    (r / "a" / "x" / "in-a").write_text("a")
    (r / "b" / "x" / "in-b").write_text("b")
    (r / "top.txt").write_text("top")
    (r / "cache").mkdir()
    (r / "cache" / "c.bin").write_text("c")
    (r / "link").symlink_to("top.txt")
    (r / "MANIFEST.json").mkdir()
    return r


# -- what the walk lists ------------------------------------------------------------------------


@pytest.mark.parametrize("stat_files", [False, True])
def test_walk_lists_every_object_once_with_its_kind(root: Path, stat_files: bool) -> None:
    """Every object under the root comes once, with its kind, a symlink's target, and (if asked) its lstat."""
    w = walk(root, stat_files=stat_files)
    got = listing(w)
    assert {p: f.kind for p, f in got.items()} == {
        "a": "dir",
        "a/x": "dir",
        "a/x/in-a": "file",
        "b": "dir",
        "b/x": "dir",
        "b/x/in-b": "file",
        "top.txt": "file",
        "cache": "dir",
        "cache/c.bin": "file",
        "link": "symlink",
        "MANIFEST.json": "dir",
    }
    link, top, a = got["link"], got["top.txt"], got["a"]
    assert isinstance(link, Found) and isinstance(top, Found) and isinstance(a, Found)
    assert link.target == "top.txt" and top.target is None
    assert (top.st is not None) == stat_files and a.st is not None and stat.S_ISDIR(a.st.st_mode)
    assert top.ino == (root / "top.txt").stat().st_ino
    assert w.excluded == 0


def test_socket_and_fifo_have_their_kinds(root: Path) -> None:
    """A Unix socket and a FIFO are listed as "socket" and "fifo"."""
    os.mkfifo(root / "pipe")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(root / "sock"))
        got = listing(walk(root))
    assert (got["sock"].kind, got["pipe"].kind) == ("socket", "fifo")
    assert kind_of(stat.S_IFSOCK) == "socket" and kind_of(0) == "unknown"


@pytest.mark.parametrize("stat_files", [False, True])
def test_skip_leaves_out_regular_files_only(root: Path, stat_files: bool) -> None:
    """Skipped names are left out when they are regular files; a directory by that name is listed."""
    got = listing(walk(root, skip=("top.txt", "MANIFEST.json"), stat_files=stat_files))
    assert "top.txt" not in got and "MANIFEST.json" in got and "link" in got


@pytest.mark.parametrize("stat_files", [False, True])
def test_excluded_directory_is_counted_once_and_not_entered(root: Path, stat_files: bool) -> None:
    """A directory-only pattern excludes the directory (counted once, not entered) but not a file by that name."""
    (root / "a" / "cache").write_text("a file named cache")
    w = walk(root, exclude=("cache/", "*.txt"), stat_files=stat_files)
    got = listing(w)
    assert "cache" not in got and "cache/c.bin" not in got and "top.txt" not in got
    assert "a/cache" in got
    assert w.excluded == 2  # the directory once, and top.txt


# -- errors in place of entries -------------------------------------------------------------------


def wrap_scandir(
    monkeypatch: pytest.MonkeyPatch, fail: str | None = None, before: Callable[[Any], None] | None = None
) -> None:
    """Wrap os.scandir: listing the directory at real path ``fail`` raises EACCES; ``before(dirent)``
    runs before each entry is handed to the walk."""
    real = os.scandir

    class Listing:
        def __init__(self, it: Any) -> None:
            self.it = it

        def __enter__(self) -> Listing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.it.close()

        def __iter__(self) -> Iterator[Any]:
            for dent in self.it:
                if before is not None:
                    before(dent)
                yield dent

    def scandir(fd: Any = ".") -> Any:
        if isinstance(fd, int) and fail is not None and os.readlink(f"/proc/self/fd/{fd}") == fail:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return Listing(real(fd))

    monkeypatch.setattr(os, "scandir", scandir)


def test_entry_gone_before_its_lstat_is_unstable_in_its_place(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry removed between listing and lstat is an unstable WalkError ("cannot stat"); the walk goes on."""

    def remove_top(dent: Any) -> None:
        if dent.name == "top.txt":
            os.unlink(root / "top.txt")

    wrap_scandir(monkeypatch, before=remove_top)
    got = listing(walk(root, stat_files=True))
    assert got["top.txt"] == WalkError("top.txt", "unstable", "cannot stat: No such file or directory", False)
    assert isinstance(got["b/x/in-b"], Found)


@pytest.mark.parametrize("which", ["a", "."])
def test_unlistable_directory_is_an_unreadable_walk_error(
    root: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """A directory that cannot be listed is one unreadable WalkError (the root as "."), marked as already listed."""
    wrap_scandir(monkeypatch, fail=os.path.realpath(root / which))
    got = listing(walk(root))
    assert got[which] == WalkError(which, "unreadable", "cannot list directory: Permission denied", True)
    if which == "a":
        assert "a/x" not in got and isinstance(got["b/x/in-b"], Found)
    else:
        assert list(got) == ["."]


def wrap_dir_open(monkeypatch: pytest.MonkeyPatch, action: Callable[[str], None]) -> list[str]:
    """Run ``action(name)`` once, just before the walk opens its first directory below the root;
    return the list that then holds that directory's name."""
    real = os.open
    done: list[str] = []

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None and flags & os.O_DIRECTORY and not done:
            done.append(path)
            action(path)
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)
    return done


ALL = {"a", "a/x", "a/x/in-a", "b", "b/x", "b/x/in-b", "top.txt", "cache", "cache/c.bin", "link", "MANIFEST.json"}


def test_directory_that_cannot_be_opened_is_a_walk_error(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed directory that cannot be opened comes as a WalkError ("cannot open directory"); the walk goes on."""

    def deny(name: str) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    first = wrap_dir_open(monkeypatch, deny)
    found = list(walk(root))
    [name] = first
    errors = [f for f in found if isinstance(f, WalkError)]
    assert errors == [WalkError(name, "unreadable", "cannot open directory: Permission denied", True)]
    listed = [f for f in found if f.path == name]  # listed first, then the WalkError in its place
    assert isinstance(listed[0], Found) and listed[0].kind == "dir"
    assert {f.path for f in found} == {p for p in ALL if not p.startswith(name + "/")}


def test_directory_replaced_during_the_walk_is_not_entered(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory swapped after it was listed is an unstable WalkError; the new one's contents never come."""

    def swap(name: str) -> None:
        os.rename(root / name, root / f"{name}-old")
        (root / name).mkdir()
        (root / name / "intruder").write_text("x")

    before = open_fds()
    first = wrap_dir_open(monkeypatch, swap)
    found = list(walk(root))
    [name] = first
    errors = [f for f in found if isinstance(f, WalkError)]
    assert errors == [WalkError(name, "unstable", "directory replaced during the walk", True)]
    assert {f.path for f in found} == {p for p in ALL if not p.startswith(name + "/")}  # the walk went on
    assert open_fds() == before  # the replacement's descriptor was closed


def test_subdirectories_are_entered_in_listing_order(root: Path) -> None:
    """The walk enters a directory's subdirectories in the order it listed them (directory order)."""
    for i in range(6):
        (root / "many" / f"s{i}").mkdir(parents=True)
        (root / "many" / f"s{i}" / "f").write_text("f")
    found = [f.path for f in walk(root)]
    subdirs = [p for p in found if p.startswith("many/s") and p.count("/") == 1]
    entered = [p.rpartition("/")[0] for p in found if p.startswith("many/s") and p.endswith("/f")]
    assert len(subdirs) == 6 and entered == subdirs


def test_walk_error_kinds_and_resources() -> None:
    """error(): a race is unstable, anything else unreadable; running out of descriptors is a TreeError."""
    enoent = OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    eacces = OSError(errno.EACCES, os.strerror(errno.EACCES))
    assert error("p", "stat", enoent, False) == WalkError(
        "p", "unstable", "cannot stat: No such file or directory", False
    )
    assert error("p", "list directory", eacces, True) == WalkError(
        "p", "unreadable", "cannot list directory: Permission denied", True
    )
    assert error("p", "stat", OSError("odd"), False).message == "cannot stat: odd"
    for code in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        with pytest.raises(TreeError, match="walking 'p'"):
            error("p", "stat", OSError(code, os.strerror(code)), False)
    check_resources(eacces, "anything")  # not a resource error: nothing raised


def test_open_problem_classifies_open_failures() -> None:
    """open_problem(): a vanished or swapped file is unstable, a denied one unreadable, no descriptors a TreeError."""
    assert open_problem(OSError(errno.ENOENT, "No such file or directory")) == (
        "unstable",
        "replaced or removed during the check (No such file or directory)",
    )
    assert open_problem(OSError(errno.EACCES, "Permission denied")) == ("unreadable", "Permission denied")
    assert open_problem(OSError("odd")) == ("unreadable", "odd")
    with pytest.raises(TreeError, match="opening files to hash"):
        open_problem(OSError(errno.EMFILE, "Too many open files"))


# -- the root ------------------------------------------------------------------------------------------


def test_check_root_and_open_root(root: Path, tmp_path: Path) -> None:
    """check_root resolves symlinks and refuses a file or a missing path; open_root names why it failed."""
    (tmp_path / "via").symlink_to(root)
    assert check_root(str(tmp_path / "via")) == os.path.realpath(root)
    with pytest.raises(TreeError, match="is not a directory"):
        check_root(str(root / "top.txt"))
    with pytest.raises(TreeError, match="No such file or directory"):
        check_root(str(tmp_path / "missing"))
    with pytest.raises(TreeError) as info:
        open_root(str(tmp_path / "missing"))
    assert str(info.value) == f"cannot open root {str(tmp_path / 'missing')!r}: No such file or directory"
    fd = open_root(str(root))
    try:
        assert os.path.samestat(os.fstat(fd), root.stat())
    finally:
        os.close(fd)


def test_inside_root(tmp_path: Path, root: Path) -> None:
    """inside_root: "." for the root, the relative path inside it, None outside (a sibling sharing a prefix too)."""
    real = os.path.realpath(root)
    (tmp_path / "root-sibling").mkdir()
    assert inside_root(real, str(root)) == "."
    assert inside_root(real, str(root / "a" / "x")) == "a/x"
    assert inside_root(real, str(tmp_path / "root-sibling" / "f")) is None
    assert inside_root(real, str(tmp_path)) is None
    assert inside_root(real, str(root / "link")) == "top.txt"  # resolved first
    assert relative_inside(real, [str(root), str(root / "top.txt"), str(tmp_path / "root-sibling")]) == {"top.txt"}


# -- the directory cursor ----------------------------------------------------------------------------


@pytest.fixture
def cursor(root: Path) -> Iterator[DirCursor]:
    c = DirCursor(open_root(str(root)))
    yield c
    c.close()
    os.close(c.root_fd)


def is_dir(fd: int, path: Path) -> bool:
    return os.path.samestat(os.fstat(fd), path.stat())


def test_cursor_moves_between_directories_correctly(cursor: DirCursor, root: Path) -> None:
    """The cursor gives the right directory after any move: same, sibling, cousin, up to the root."""
    fd = cursor.enter("a/x")
    assert is_dir(fd, root / "a" / "x") and cursor.enter("a/x") == fd
    assert is_dir(cursor.enter("b/x"), root / "b" / "x")  # same last name, other parent
    os.stat("in-b", dir_fd=cursor.enter("b/x"))
    assert is_dir(cursor.enter("a"), root / "a")
    assert is_dir(cursor.enter("a/x"), root / "a" / "x")
    assert is_dir(cursor.enter("b"), root / "b")
    assert is_dir(cursor.enter(""), root)
    assert is_dir(cursor.enter("cache"), root / "cache")


def test_cursor_sibling_under_a_shared_parent(cursor: DirCursor, root: Path) -> None:
    """Moving from a/x to a/y keeps a and opens y under it (not under x)."""
    (root / "a" / "y").mkdir()
    (root / "a" / "y" / "only-y").write_text("y")
    cursor.enter("a/x")
    os.stat("only-y", dir_fd=cursor.enter("a/y"))


@pytest.mark.parametrize("bad", ["..", "a/..", "a/./x", "a//x", "."])
def test_cursor_never_goes_up_or_sideways(cursor: DirCursor, bad: str) -> None:
    """ "..", "." and empty components are refused with EINVAL, never opened."""
    with pytest.raises(OSError) as info:
        cursor.enter(bad)
    assert info.value.errno == errno.EINVAL


def test_cursor_does_not_follow_a_symlink(cursor: DirCursor, root: Path) -> None:
    """A symlink to a directory is not entered (O_NOFOLLOW)."""
    (root / "dirlink").symlink_to("a")
    with pytest.raises(OSError) as info:
        cursor.enter("dirlink/x")
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)


def test_cursor_remembers_a_directory_that_failed(cursor: DirCursor, root: Path) -> None:
    """A directory that could not be opened fails the same way for every later file in it, even if it appears."""
    with pytest.raises(FileNotFoundError):
        cursor.enter("late")
    (root / "late").mkdir()
    with pytest.raises(FileNotFoundError):
        cursor.enter("late")
    assert is_dir(cursor.enter("a"), root / "a")  # other directories still work


def test_cursor_holds_a_bounded_number_of_descriptors(cursor: DirCursor, root: Path) -> None:
    """A deep chain keeps MAX_HELD_DIRS descriptors open; shallower moves re-open from the root; close frees all."""
    depth = MAX_HELD_DIRS * 2 + 8
    parts = [f"l{i}" for i in range(depth)]
    deep = root.joinpath(*parts)
    deep.mkdir(parents=True)
    (root.joinpath(*parts[:3]) / "side").mkdir()
    before = open_fds()
    assert is_dir(cursor.enter("/".join(parts)), deep)
    assert open_fds() - before == MAX_HELD_DIRS
    side = "/".join([*parts[:3], "side"])
    assert is_dir(cursor.enter(side), root.joinpath(*parts[:3], "side"))
    assert open_fds() - before == 4
    assert is_dir(cursor.enter("/".join(parts[:-1])), deep.parent)
    assert is_dir(cursor.enter("/".join(parts)), deep)
    assert open_fds() - before == MAX_HELD_DIRS
    cursor.close()
    assert open_fds() == before
    assert is_dir(cursor.enter("a"), root / "a")  # usable again after close


def test_cursor_close_releases_every_descriptor(cursor: DirCursor, root: Path) -> None:
    """close() closes every directory the cursor holds (none of them still counted open)."""
    before = open_fds()
    cursor.enter("a/x")
    assert open_fds() - before == 2
    cursor.close()
    assert open_fds() == before
    assert is_dir(cursor.enter("b/x"), root / "b" / "x")


def test_cursor_closes_a_directory_that_got_descriptor_zero(cursor: DirCursor, root: Path) -> None:
    """With stdin closed (as under some service managers) a directory may get fd 0: it is closed like any other."""
    saved = os.dup(0)
    os.close(0)
    try:
        fd = cursor.enter("a")
        assert fd == 0 and is_dir(fd, root / "a")
        cursor.close()
        with pytest.raises(OSError) as info:
            os.fstat(0)
        assert info.value.errno == errno.EBADF
    finally:
        os.dup2(saved, 0)
        os.close(saved)


# -- descriptors -------------------------------------------------------------------------------------


def test_walk_leaks_no_descriptor(root: Path) -> None:
    """A complete walk, and one abandoned after its first entry, leave no descriptor open."""
    before = open_fds()
    assert len(list(walk(root))) == 11
    assert open_fds() == before
    it = iter(walk(root))
    next(it)
    next(it)
    assert open_fds() > before
    it.close()  # type: ignore[attr-defined]
    assert open_fds() == before


def test_cursor_out_of_descriptors_is_a_tree_error(cursor: DirCursor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Running out of descriptors while entering a directory is a TreeError, not a per-directory failure."""
    real = os.open

    def no_fds(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is not None:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(TreeError, match="opening directory 'a/x'"):
        cursor.enter("a/x")
