"""Enumerate a tree without following symlinks or opening anything but directories.

Every object under the root is listed (so additions are seen). Directories are
reached only through descriptors opened with O_NOFOLLOW from the root's, so
nothing outside the root is entered. Errors do not stop the walk: they are
collected and reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable, Iterator

from .errors import TreeError
from .exclude import Excluder

__all__ = [
    "DIR_FLAGS",
    "KIND_BY_FMT",
    "DirCursor",
    "check_root",
    "inside_root",
    "iter_tree",
    "kind_of",
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


def open_root(root: str) -> int:
    """Open the (already resolved) root directory; raise TreeError if that fails."""
    try:
        return os.open(root, DIR_FLAGS)
    except OSError as exc:
        raise TreeError(f"cannot open root {root!r}: {exc.strerror or exc}") from None


class DirCursor:
    """Directory fds from the root down to the directory being processed, one per component.

    Files are opened by name relative to a directory that was itself reached from the
    root one component at a time with O_NOFOLLOW, so nothing outside the root is ever
    opened, even if a directory is swapped for a symlink after the walk. The chain is
    kept between files and batches (files come grouped by directory), so moving to a
    sibling directory costs one open, not one per level.
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
        """The fd of ``rel_dir``; raises the OSError that opening it gave."""
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
        while len(self.fds) > keep:
            os.close(self.fds.pop())
            self.parts.pop()
        self.rel_dir = None
        for part in parts[keep:]:
            try:
                fd = os.open(part, DIR_FLAGS, dir_fd=self.fds[-1] if self.fds else self.root_fd)
            except OSError as exc:
                self.error, self.failed = exc, rel_dir
                raise
            self.fds.append(fd)
            self.parts.append(part)
        self.rel_dir = rel_dir
        return self.fds[-1] if self.fds else self.root_fd

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.pop())
        self.parts.clear()
        self.rel_dir, self.error, self.failed = "", None, None


def iter_tree(
    root: str,
    excluder: Excluder,
    skip: Collection[str] = (),
    *,
    stat_files: bool = False,
    errors: list[tuple[str, str]],
) -> Iterator[tuple[str, int | os.stat_result, str | None]]:
    """Yield every object under ``root`` (an absolute real path, see :func:`check_root`).

    Each directory is opened relative to its parent with O_NOFOLLOW and checked to be
    the inode that was listed, so the walk cannot be led outside the root, and no
    path is ever longer than one name. Regular files come as ``(path, inode, None)``
    from the directory entry alone, unless ``stat_files`` is set: the hasher fstat-s
    the open descriptor anyway, and on a 3,000-file tree the saved lstat calls are a
    fifth of the walk. Symlinks come as ``(path, lstat, target)``, everything else as
    ``(path, lstat, None)``. Paths are relative, POSIX, in directory order (a
    directory's files together). Entries that cannot be listed or stat-ed go to
    ``errors``; ``skip`` holds relative paths left out on purpose (the manifest and
    its signature).
    """
    use_excluder = bool(excluder)
    s_isdir, s_islnk = stat.S_ISDIR, stat.S_ISLNK
    root_fd = open_root(root)
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
                            if rel in skip:
                                continue
                            try:
                                if not stat_files and dent.is_file(follow_symlinks=False):
                                    if not (use_excluder and excluder.excluded(rel, False)):
                                        yield rel, dent.inode(), None
                                    continue
                                st = dent.stat(follow_symlinks=False)
                                mode = st.st_mode
                                is_dir = s_isdir(mode)
                                if use_excluder and excluder.excluded(rel, is_dir):
                                    continue
                                target = os.readlink(name, dir_fd=dir_fd) if s_islnk(mode) else None
                            except OSError as exc:
                                errors.append((rel, f"cannot stat: {exc.strerror or exc}"))
                                continue
                            if is_dir:
                                subdirs.append((name, rel, st.st_ino))
                            yield rel, st, target
                except OSError as exc:
                    errors.append((rel_dir or ".", f"cannot list directory: {exc.strerror or exc}"))
                subdirs.reverse()
            dir_fd, rel_dir, subdirs = stack[-1]
            if not subdirs:
                os.close(dir_fd)
                stack.pop()
                continue
            name, rel, ino = subdirs.pop()
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                errors.append((rel, f"cannot open directory: {exc.strerror or exc}"))
                continue
            if os.fstat(child).st_ino != ino:
                os.close(child)
                errors.append((rel, "directory replaced during the walk"))
                continue
            pending.append((child, rel))
    finally:
        for dir_fd, _, _ in stack:
            os.close(dir_fd)
        for dir_fd, _ in pending:
            os.close(dir_fd)
