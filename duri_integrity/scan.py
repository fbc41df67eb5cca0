"""The C scanner's glue: what it compares, and the walk records it hands back to Python.

The scanner (``_speedups.quick_scan``) walks the tree beneath the root by descriptor and
settles in C each entry exactly as the manifest (and in quick mode the snapshot) says: a
directory; in quick mode a file whose lstat record matches; in full mode a regular file by
its directory entry, made a hasher job. Everything else comes back here and is built into the
``Found``/``WalkError`` records the Python walk yields, for the same consumer. The manifest's
path index, which the Python walk's comparison looks entries up in too, is made here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from . import speedups
from .errors import TreeError
from .exclude import Excluder
from .manifest import Dir, File, Manifest
from .walk import Found, WalkError, kind_of, open_root
from .walk import error as walk_error

__all__ = [
    "INDEX_CACHE_ENTRIES",
    "Lstat",
    "directories",
    "expected",
    "index_of",
    "listing",
    "not_warming",
    "run",
    "warm_metadata",
]

WARM_THREADS = 2
"""Threads warming the metadata (``_speedups.Warming``): two listed this VM's cold 3,000-file tree in
19 ms, one in 30, four in 16 (while the signature is checked on the calling thread)."""
WARM_BUDGET = 1 << 20
"""Entries they look at, at most, whatever the tree holds (the walk's end stops them first)."""


def not_warming() -> None:
    """What stops a warming that was never started."""


def warm_metadata(root_real: str) -> Callable[[], None]:
    """Start warming the kernel's caches of the tree's directories and inodes on threads of the
    extension, and return what stops them (not waiting): a full walk from a cold cache then
    finds them cached. Nothing is learnt from it. The threads end on their own once the cache
    turns out warm; without the extension, or under a fault-injection hook (whose calls must all
    be the run's own), none start."""
    if not speedups.available() or speedups.FAULT_HOOK is not None:
        return not_warming
    try:
        fd = open_root(root_real)
    except TreeError:  # the run's own look at the root reports it
        return not_warming
    try:
        warming = speedups.warming(fd, WARM_THREADS, WARM_BUDGET)
    finally:
        os.close(fd)
    return warming.stop  # type: ignore[no-any-return]


_EXPECT = struct.Struct("<QHB5x")
"""What the scanner compares per manifest entry: size, mode, kind (0 file, 1 directory, 2 other)."""
_expect_cache: list[tuple[Manifest, bytearray]] = []


def expected(m: Manifest) -> bytearray:
    """The packed expectations of ``m``, kept for the last manifest (decoding the same bytes
    returns the same object)."""
    if _expect_cache and _expect_cache[0][0] is m:
        return _expect_cache[0][1]
    data = bytearray(_EXPECT.size * len(m.entries))  # packed in place: no object per entry
    pack_into, size = _EXPECT.pack_into, _EXPECT.size
    for k, e in enumerate(m.entries):
        if type(e) is File:
            pack_into(data, k * size, e.size, e.mode, 0)
        else:
            pack_into(data, k * size, 0, e.mode, 1 if type(e) is Dir else 2)
    _expect_cache[:] = [(m, data)]
    return data


_index_cache: list[tuple[Manifest, dict[str, int]]] = []
INDEX_CACHE_ENTRIES = 20_000
"""Manifests up to this size keep their path index between calls (a long-lived caller saves the
rebuild); a larger one's index (7 MB at 100,000 entries) is dropped after the walk instead, which
keeps it out of the memory peak while files are hashed."""


_dirs_cache: list[tuple[Manifest, list[int]]] = []


def directories(m: Manifest) -> list[int]:
    """The entry numbers of ``m``'s directories (the end-of-run check looks them up again), kept
    for the last manifest: a warm quick-mode call spent about 0.15 ms of its 10 finding them."""
    if _dirs_cache and _dirs_cache[0][0] is m:
        return _dirs_cache[0][1]
    dirs = [i for i, e in enumerate(m.entries) if type(e) is Dir]
    _dirs_cache[:] = [(m, dirs)]
    return dirs


def index_of(m: Manifest, keys: list[str]) -> dict[str, int]:
    """Path -> entry number, kept for the last manifest: decoding the same bytes returns the same
    (immutable) Manifest object, whose keys are the same. The dict is only ever read."""
    if _index_cache and _index_cache[0][0] is m and len(_index_cache[0][1]) == len(keys):
        return _index_cache[0][1]
    index = dict(zip(keys, range(len(keys)), strict=True))
    _index_cache[:] = [(m, index)] if len(keys) <= INDEX_CACHE_ENTRIES else []
    return index


def _callbacks(
    consume: Callable[[Found | WalkError], None],
    refuse: Callable[[Found], None] | None,
    anchors: Mapping[int, tuple[int, str]] | None,
) -> tuple[Callable[..., None], Callable[[bytes, str, int, int], None]]:
    """The scanner's ``found`` and ``error`` callbacks: each builds the record the Python walk
    would have yielded and hands it to ``consume`` (refusing a trust anchor's inode first)."""
    fsdecode, stat_result, new = os.fsdecode, os.stat_result, tuple.__new__

    def found(
        rel: str, mode: int | None, ino: int, dev: int, size: int, mtime: int, ctime: int, target: bytes | None
    ) -> None:
        if mode is None:  # full mode: a regular file by its directory entry, not stat-ed (as the Python walk)
            f = new(Found, (rel, "file", ino, None, None))
        else:
            times = {"st_atime_ns": mtime, "st_mtime_ns": mtime, "st_ctime_ns": ctime}
            st = stat_result((mode, ino, dev, 0, 0, 0, size, mtime // 10**9, mtime // 10**9, ctime // 10**9), times)
            f = new(Found, (rel, kind_of(mode), ino, st, None if target is None else fsdecode(target)))
        if refuse is not None and anchors and ino in anchors:
            refuse(f)
        consume(f)

    return found, _error_callback(consume)


def _error_callback(consume: Callable[[WalkError], None]) -> Callable[[bytes, str, int, int], None]:
    """The scanner's ``error`` callback: the WalkError the Python walk would have yielded."""
    fsdecode = os.fsdecode

    def error(rel_b: bytes, what: str, err: int, listed: int) -> None:
        rel = fsdecode(rel_b)
        if what == "replaced":
            consume(WalkError(rel, "unstable", "directory replaced during the walk", True))
        else:
            consume(walk_error(rel, what, OSError(err, os.strerror(err)), bool(listed)))

    return error


class Lstat(NamedTuple):
    """What build keeps of an entry's lstat: the listing builds no ``os.stat_result`` (a third of
    its time), and these are the fields build reads."""

    st_mode: int
    st_ino: int
    st_size: int


def listing(
    root_real: str,
    skip: set[str],
    excluder: Excluder,
    found: Callable[[str, Lstat, str | None], None],
    error: Callable[[WalkError], None],
) -> int:
    """Build's walk through the scanner: ``found(path, lstat, link target)`` for every object in
    walk order, ``error(WalkError)`` in place of one that could not be stat-ed, listed or entered,
    exactly as :class:`~duri_integrity.walk.Walk` with ``stat_files``. Returns the count excluded."""
    fsdecode, new = os.fsdecode, tuple.__new__

    def each(rel: str, mode: int, ino: int, dev: int, size: int, mtime: int, ctime: int, target: bytes | None) -> None:
        found(rel, new(Lstat, (mode, ino, size)), None if target is None else fsdecode(target))

    root_fd = open_root(root_real)
    try:
        no_entries = bytearray()  # an empty index: every object goes to ``each``
        return speedups.quick_scan(
            root_fd,
            {},
            no_entries,
            None,
            0,
            no_entries,
            no_entries,
            skip,
            excluder.excluded if excluder else None,
            None,
            each,
            _error_callback(error),
            None,
        )[2]
    finally:
        os.close(root_fd)


def run(
    root_real: str,
    m: Manifest,
    index: dict[str, int],
    seen: bytearray,
    records: bytearray,
    old: bytes | bytearray | None,
    settled_before: int,
    skip: set[str],
    excluder: Excluder,
    anchors: Mapping[int, tuple[int, str]] | None,
    consume: Callable[[Found | WalkError], None],
    refuse: Callable[[Found], None] | None,
    full: tuple[list[Any], list[int], list[str], list[Any]] | None,
) -> tuple[int, int, int]:
    """Scan the tree; return (files settled in C, directories settled in C, entries excluded).

    ``refuse(found)`` is called for an entry whose inode is a trust anchor's, before it is
    consumed. ``full`` is (jobs, job indexes, keys, entries) in full mode, None in quick mode.
    """
    found, error = _callbacks(consume, refuse, anchors)
    root_fd = open_root(root_real)
    try:
        return speedups.quick_scan(
            root_fd,
            index,
            expected(m),
            old,
            settled_before,
            records,
            seen,
            skip,
            excluder.excluded if excluder else None,
            set(anchors) if anchors else None,
            found,
            error,
            full,
        )
    finally:
        os.close(root_fd)
