"""Enumerate a tree without following symlinks or opening anything but directories.

Every object under the root is listed (so additions are seen). Directories are
reached only through descriptors opened with O_NOFOLLOW from the root's, so
nothing outside the root is entered. An entry that cannot be read does not stop
the walk: it comes out as a :class:`WalkError` in its place. Running out of
descriptors or memory does stop it, with a TreeError: a partial listing would
read as missing files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple

from .errors import TreeError
from .exclude import Excluder

__all__ = [
    "DIR_FLAGS",
    "KIND_BY_FMT",
    "MAX_HELD_DIRS",
    "RACE_ERRNOS",
    "DirCursor",
    "Found",
    "Walk",
    "WalkError",
    "check_resources",
    "check_root",
    "error",
    "inside_root",
    "kind_of",
    "open_problem",
    "open_root",
    "relative_inside",
]

# Names for every st_mode file type; these strings are the manifest's "type" values.
KIND_BY_FMT: dict[int, str] = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char_device",
    stat.S_IFBLK: "block_device",
}


def kind_of(mode: int) -> str:
    return KIND_BY_FMT.get(stat.S_IFMT(mode), "unknown")


def check_root(root: str) -> str:
    """Return the root as an absolute, symlink-free path, or raise TreeError."""
    try:
        real = os.path.realpath(root, strict=True)
        st = os.stat(real)
    except OSError as exc:
        raise TreeError(f"cannot use root {root!r}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise TreeError(f"root {root!r} is not a directory")
    return real


def relative_inside(root_real: str, paths: Iterable[str]) -> set[str]:
    """The relative paths of those of ``paths`` that resolve strictly inside the root."""
    return {rel for p in paths if (rel := inside_root(root_real, p)) not in (None, ".")}


def inside_root(root_real: str, path: str) -> str | None:
    """The path relative to the root if ``path`` resolves inside it, else None."""
    real = os.path.realpath(path)
    if real == root_real:
        return "."
    prefix = root_real.rstrip("/") + "/"
    return real[len(prefix) :] if real.startswith(prefix) else None


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


RACE_ERRNOS = frozenset((errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.ENXIO, errno.EWOULDBLOCK, errno.EINVAL))
"""What an open, stat or readlink gives when the name changed type or went away since it was listed."""
_RESOURCE_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM))
MAX_HELD_DIRS = 16
"""Directory descriptors one :class:`DirCursor` keeps open: deeper chains are re-opened from the root."""


def check_resources(exc: OSError, what: str) -> None:
    """Raise TreeError if ``exc`` is the process or system running out of descriptors or memory.

    Such a failure says nothing about the tree: reported per file it would read as
    missing or unreadable files, and depend on how many threads were running.
    """
    if exc.errno in _RESOURCE_ERRNOS:
        raise TreeError(f"ran out of resources while {what}: {exc.strerror or exc} (raise 'ulimit -n'?)") from None


def open_problem(exc: OSError) -> tuple[str, str]:
    """(problem kind, detail) for a file that could not be opened: a race is "unstable"."""
    check_resources(exc, "opening files to hash")
    if exc.errno in RACE_ERRNOS:
        return "unstable", f"replaced or removed during the check ({exc.strerror})"
    return "unreadable", exc.strerror or str(exc)


def open_root(root: str) -> int:
    """Open the (already resolved) root directory; raise TreeError if that fails."""
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise TreeError(f"cannot open root {root!r}: {exc.strerror or exc}") from None


class DirCursor:
    """Directory fds on the way from the root to the directory being processed.

    Files are opened by name relative to a directory that was itself reached from the
    root one component at a time with O_NOFOLLOW, so nothing outside the root is ever
    opened, even if a directory is swapped for a symlink after the walk. The chain is
    kept between files and batches (files come grouped by directory), so moving to a
    sibling directory costs one open, not one per level. Only the deepest
    :data:`MAX_HELD_DIRS` levels stay open (the shallower ones are closed, marked -1,
    and re-opened from the root when needed): a deep tree must not make the number
    of descriptors, and so the verdict under ``ulimit -n``, depend on the thread count.
    """

    __slots__ = ("error", "failed", "fds", "parts", "rel_dir", "root_fd")

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.parts: list[str] = []
        self.fds: list[int] = []
        self.rel_dir: str | None = ""
        self.error: OSError | None = None
        self.failed: str | None = None

    def enter(self, rel_dir: str) -> int:
        """The fd of ``rel_dir``; raises the OSError that opening it gave (TreeError if out of fds)."""
        if rel_dir == self.rel_dir:
            return self.fds[-1] if self.fds else self.root_fd
        if rel_dir == self.failed and self.error is not None:
            raise self.error
        parts = rel_dir.split("/") if rel_dir else []
        keep = 0
        for have, want in zip(self.parts, parts, strict=False):
            if have != want:
                break
            keep += 1
        self._drop(keep)
        if self.fds and self.fds[-1] < 0:  # the closed levels are a prefix: start again from the root
            self.fds.clear()
            self.parts.clear()
        self.rel_dir = None
        for part in parts[len(self.fds) :]:
            try:
                if part in ("", ".", ".."):  # never up or sideways (manifest paths are validated too)
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                fd = os.open(part, DIR_FLAGS, dir_fd=self.fds[-1] if self.fds else self.root_fd)
            except OSError as exc:
                check_resources(exc, f"opening directory {rel_dir!r}")
                self.error, self.failed = exc, rel_dir
                raise
            self.fds.append(fd)
            self.parts.append(part)
            shallow = len(self.fds) - MAX_HELD_DIRS - 1
            if shallow >= 0 and self.fds[shallow] >= 0:  # after a move up, fewer are open: nothing to close
                os.close(self.fds[shallow])
                self.fds[shallow] = -1
        self.rel_dir = rel_dir
        return self.fds[-1] if self.fds else self.root_fd

    def _drop(self, keep: int) -> None:
        while len(self.fds) > keep:
            fd = self.fds.pop()
            self.parts.pop()
            if fd >= 0:
                os.close(fd)

    def close(self) -> None:
        self._drop(0)
        self.rel_dir, self.error, self.failed = "", None, None


class Found(NamedTuple):
    """One object the walk listed. Built with ``tuple.__new__`` on the hot path (a third of the cost)."""

    path: str
    """Relative POSIX path."""
    kind: str
    """The manifest's type name (see :data:`KIND_BY_FMT`)."""
    ino: int
    st: os.stat_result | None
    """The lstat; None only for regular files when the walk was asked not to stat them."""
    target: str | None
    """A symlink's target, else None."""


class WalkError(NamedTuple):
    """An object that could not be stat-ed, listed or entered; comes in its place in the walk."""

    path: str
    kind: str
    """The report's problem kind: "unstable" (it changed under the walk) or "unreadable"."""
    message: str
    listed: bool
    """True when the object itself was already yielded (a directory that could not be listed or entered)."""


def error(rel: str, what: str, exc: OSError, listed: bool) -> WalkError:
    """The WalkError for ``exc`` (TreeError when it is running out of descriptors or memory)."""
    check_resources(exc, f"walking {rel!r}")
    kind = "unstable" if exc.errno in RACE_ERRNOS else "unreadable"
    return WalkError(rel, kind, f"cannot {what}: {exc.strerror or exc}", listed)


_new = tuple.__new__


def _descend(
    stack: list[tuple[int, str, list[tuple[str, str, int]]]], pending: list[tuple[int, str]]
) -> WalkError | None:
    """One step of the walk's depth-first order (once per directory, not per entry): close the
    deepest directory if it has no subdirectory left, else open its next subdirectory beneath it,
    check it is the inode that was listed, and queue it in ``pending``."""
    dir_fd, _, subdirs = stack[-1]
    if not subdirs:
        os.close(dir_fd)
        stack.pop()
        return None
    name, rel, ino = subdirs.pop()
    try:
        child = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        return error(rel, "open directory", exc, True)
    if os.fstat(child).st_ino != ino:
        os.close(child)
        return WalkError(rel, "unstable", "directory replaced during the walk", True)
    pending.append((child, rel))
    return None


class Walk:
    """Every object under ``root`` (an absolute real path, see :func:`check_root`), as an iterable.

    Each directory is opened relative to its parent with O_NOFOLLOW and checked to be
    the inode that was listed, so the walk cannot be led outside the root, and no
    path is ever longer than one name. Regular files come from the directory entry
    alone (no lstat, ``st`` None) unless ``stat_files`` is set: the hasher fstat-s
    the open descriptor anyway, and on a 3,000-file tree the saved lstat calls are a
    fifth of the walk. Paths come in directory order (a directory's files together).
    ``skip`` holds relative paths left out when they are regular files (the tool's
    own manifest and signature); anything else by those names is listed. Excluded
    objects are counted in ``excluded`` (an excluded directory once: it is not entered).
    The walk holds one descriptor per level of the directory it is in.
    """

    def __init__(self, root: str, excluder: Excluder, skip: Collection[str] = (), *, stat_files: bool = False) -> None:
        self.root, self.excluder, self.skip, self.stat_files = root, excluder, skip, stat_files
        self.excluded = 0

    def __iter__(self) -> Iterator[Found | WalkError]:
        excluder, skip, stat_files = self.excluder, self.skip, self.stat_files
        use_excluder = bool(excluder)
        by_fmt, s_ifmt, s_ifdir, s_iflnk = KIND_BY_FMT, stat.S_IFMT, stat.S_IFDIR, stat.S_IFLNK
        root_fd = open_root(self.root)
        # Depth-first with an explicit stack of (directory fd, its relative path, subdirectories
        # still to enter); only the directories on the current path are open at any time.
        stack: list[tuple[int, str, list[tuple[str, str, int]]]] = []
        pending: list[tuple[int, str]] = [(root_fd, "")]
        try:
            while pending or stack:
                if pending:
                    dir_fd, rel_dir = pending.pop()
                    prefix = rel_dir + "/" if rel_dir else ""
                    subdirs: list[tuple[str, str, int]] = []
                    stack.append((dir_fd, rel_dir, subdirs))  # owned by the stack from here: closed in finally
                    try:
                        with os.scandir(dir_fd) as it:
                            for dent in it:
                                name = dent.name
                                rel = prefix + name
                                try:
                                    if not stat_files and dent.is_file(follow_symlinks=False):
                                        if rel in skip:
                                            continue
                                        if use_excluder and excluder.excluded(rel, False):
                                            self.excluded += 1
                                            continue
                                        yield _new(Found, (rel, "file", dent.inode(), None, None))
                                        continue
                                    st = dent.stat(follow_symlinks=False)
                                    fmt = s_ifmt(st.st_mode)
                                    if rel in skip and fmt == stat.S_IFREG:
                                        continue
                                    if use_excluder and excluder.excluded(rel, fmt == s_ifdir):
                                        self.excluded += 1
                                        continue
                                    target = os.readlink(name, dir_fd=dir_fd) if fmt == s_iflnk else None
                                except OSError as exc:
                                    yield error(rel, "stat", exc, False)
                                    continue
                                if fmt == s_ifdir:
                                    subdirs.append((name, rel, st.st_ino))
                                yield _new(Found, (rel, by_fmt.get(fmt, "unknown"), st.st_ino, st, target))
                    except OSError as exc:
                        yield error(rel_dir or ".", "list directory", exc, True)
                    subdirs.reverse()
                failed = _descend(stack, pending)
                if failed is not None:
                    yield failed
        finally:
            for dir_fd, _, _ in stack:
                os.close(dir_fd)
            for dir_fd, _ in pending:
                os.close(dir_fd)
