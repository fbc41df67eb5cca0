"""What the manifest leaves out of a tree: secret keys, and code an interpreter would load.

One bounded look at the excluded part serves both questions. An excluded file is not hashed,
but it still ships with the release: a signing key excluded by name (``-x app/deploy.key``),
inside an excluded directory (``-x secret/``), or as a hard link to the very ``--secret-key``
file would leave with the tree, and nothing would say so. ``build`` refuses such a tree and
``doctor`` flags it. The look is bounded: at most :data:`ENTRY_LIMIT` entries, only regular
files (never a symlink, FIFO or device), and only the start of each (what
:func:`keys.looks_like_secret_key` needs), so memory and time do not grow with what the
excluded part holds; past the bound the answer says so.
The same look notes excluded names that are code (``*.pyc``, ``__pycache__``, ``*.so``...):
``build`` warns about those, since an attacker may change or add them and the tree verifies.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .exclude import Excluder
from .files import UnreadableFile, read_head
from .keys import SECRET_KEY_HEAD, looks_like_secret_key
from .walk import DirCursor, open_root

__all__ = ["CODE_SUFFIXES", "ENTRY_LIMIT", "KeyScan", "RecordingExcluder", "excluded_secret_keys", "is_code"]

ENTRY_LIMIT = 20_000
"""Excluded entries looked at (an excluded directory's contents included), as the excluded-code scan."""
_SHOWN = 5
_SHOWN_CODE = 3
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".pth", ".dylib")
"""Names an interpreter loads as code (with ``__pycache__`` and versioned ``.so.N`` libraries)."""


def is_code(name: str) -> bool:
    return name == "__pycache__" or name.endswith(CODE_SUFFIXES) or ".so." in name


class RecordingExcluder(Excluder):
    """The manifest's exclusions, remembering (up to a bound) what they actually left out."""

    LIMIT = 1000

    def __init__(self, patterns: Sequence[str] = ()) -> None:
        super().__init__(patterns)
        self.seen: list[tuple[str, bool]] = []
        self.missed = False

    def excluded(self, path: str, is_dir: bool) -> bool:
        hit = super().excluded(path, is_dir)
        if hit:
            if len(self.seen) < self.LIMIT:
                self.seen.append((path, is_dir))
            else:
                self.missed = True
        return hit


class KeyScan(NamedTuple):
    found: list[str]
    """Relative paths (at most five) of excluded files that are secret keys or the signing key."""
    complete: bool
    """False when the bound stopped the look before every excluded entry was seen."""
    code: list[str]
    """Relative paths (at most four) of excluded entries whose names are code."""
    unread: tuple[str, ...] = ()
    """Relative paths of excluded directories that could not be listed and files that could not be
    read (what the look missed besides the entries past the bound)."""


def excluded_secret_keys(
    root_real: str, excluded: Iterable[tuple[str, bool]], signing_keys: Sequence[str] = ()
) -> KeyScan:
    """The excluded regular files (and files in excluded directories) that look like a minisign
    secret key or are one of ``signing_keys`` (same device and inode: a hard link, whatever its name),
    and the excluded entries named as code. Directories are reached from the root one component at
    a time (walk.DirCursor), as the walk reaches them: a path longer than PATH_MAX is no reason to
    leave an excluded directory unread (an outside attack shipped a key 41 levels down so)."""
    identities = _identities(signing_keys)
    found: list[str] = []
    code: list[str] = []
    unlisted: list[str] = []
    budget = ENTRY_LIMIT
    root_fd = open_root(root_real)
    cursor = DirCursor(root_fd)
    try:
        for rel, is_dir in excluded:
            if budget <= 0 or len(found) >= _SHOWN:
                break
            budget -= 1
            if is_code(rel.rpartition("/")[2]) and len(code) <= _SHOWN_CODE:
                code.append(rel)
            if not is_dir:
                parent, _, name = rel.rpartition("/")
                try:
                    dir_fd = cursor.enter(parent)
                except OSError:
                    unlisted.append(parent or ".")
                    continue
                _look_at(dir_fd, name, rel, None, identities, found, unlisted)
                continue
            budget = _scan_dir(cursor, rel, identities, (found, code, unlisted), budget)
    finally:
        cursor.close()
        os.close(root_fd)
    return KeyScan(found, (budget > 0 and not unlisted) or len(found) >= _SHOWN, code, tuple(unlisted))


def _scan_dir(
    cursor: DirCursor,
    rel: str,
    identities: set[tuple[int, int]],
    out: tuple[list[str], list[str], list[str]],
    budget: int,
) -> int:
    """Look through one excluded directory (symlinks are not followed), adding to the keys, code and
    unlistable directories in ``out``; return the budget left (at most 0 if it ran out first)."""
    found, code, unlisted = out
    pending = [rel]
    while pending and budget > 0 and len(found) < _SHOWN:
        current = pending.pop()
        try:
            dir_fd = cursor.enter(current)
            with os.scandir(dir_fd) as it:
                for entry in it:
                    budget -= 1
                    if budget <= 0:
                        break
                    child = f"{current}/{entry.name}"
                    if is_code(entry.name) and len(code) <= _SHOWN_CODE:
                        code.append(child)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(child)
                    elif entry.is_file(follow_symlinks=False):
                        _look_at(dir_fd, entry.name, child, entry, identities, found, unlisted)
        except OSError:
            unlisted.append(current)  # what cannot be listed cannot be said to hold no key
    return budget if not pending else min(budget, 0)


def _identities(paths: Sequence[str]) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue  # loading the key reports that
        out.add((st.st_dev, st.st_ino))
    return out


def _look_at(
    dir_fd: int,
    name: str,
    rel: str,
    entry: os.DirEntry[str] | None,
    identities: set[tuple[int, int]],
    found: list[str],
    unread: list[str],
) -> None:
    """Add ``rel`` (``name`` beneath ``dir_fd``) to ``found`` if it is a secret key, to ``unread`` if
    it could not be read (what cannot be read cannot be said to be no key: the look is then incomplete)."""
    key = _is_key(dir_fd, name, entry, identities)
    if key is None:
        unread.append(rel)
    elif key:
        found.append(rel)


def _is_key(dir_fd: int, name: str, entry: os.DirEntry[str] | None, identities: set[tuple[int, int]]) -> bool | None:
    """Whether a regular file is the signing key (by inode) or reads as a secret key (its start
    only); None if it is a regular file that cannot be read."""
    try:
        st = entry.stat(follow_symlinks=False) if entry is not None else os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return False  # gone since the listing: nothing to ship
    if not stat.S_ISREG(st.st_mode):
        return False
    if (st.st_dev, st.st_ino) in identities:
        return True
    try:
        head = read_head(name, SECRET_KEY_HEAD, "excluded file", dir_fd=dir_fd)
    except UnreadableFile as exc:
        return False if exc.missing else None  # removed since the listing is nothing to ship
    return looks_like_secret_key(head)
