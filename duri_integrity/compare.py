"""Compare a walked tree with a manifest: every difference a problem, nothing held per extra entry.

The walk is consumed as it goes. What is kept grows with the manifest (which is
signed) and not with the tree (which an attacker may fill): the manifest's path
index, one byte per entry, the files still to hash, and at most ``2 * max_problems``
problems at a time (the first ones in path order are kept; the counts stay exact).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import cast

from . import scan, speedups
from .config import OWN_FILES
from .errors import TrustAnchorInTree
from .exclude import Excluder
from .hashing import FileCheck, check_files
from .manifest import File, Manifest, Symlink, display
from .report import Problem, Tally
from .settle import Mark, changed_since, settled
from .snapshot import RECORD, Snapshot
from .walk import Found, Walk, WalkError

__all__ = ["DEFAULT_MAX_PROBLEMS", "Outcome", "compare"]

DEFAULT_MAX_PROBLEMS = 5000
"""Problems listed in a report unless asked otherwise: enough to act on, ~1 MB at most."""


class Outcome:
    """What comparing the tree with the manifest found."""

    __slots__ = ("hashed", "problems", "records", "tally")

    def __init__(self, problems: list[Problem], tally: Tally, records: bytearray | None) -> None:
        self.problems = problems
        """In path order, truncated to the first ``max_problems`` (``tally.truncated`` says so)."""
        self.tally = tally
        self.hashed = tally.hashed
        self.records = records
        """Quick mode: the stat record of every file seen, for the next snapshot (used only if VERIFIED)."""


class _Comparison:
    """The state shared by the full and the quick path: one classification for both."""

    def __init__(self, m: Manifest, keys: list[str], max_problems: int | None) -> None:
        self.m = m
        self.entries = m.entries
        self.keys = keys
        self.index: dict[str, int] = scan.index_of(m, keys)
        self.lookup = self.index.get
        self.files = 0
        self.seen = bytearray(len(keys))
        self.failed = bytearray(len(keys))
        self.unlisted_dirs: set[str] = set()
        self.tally = Tally()
        self.max_problems = max_problems
        self.kept: list[Problem] = []
        self.jobs: list[FileCheck] = []
        self.job_index: list[int] = []

    def problem(
        self, i: int, path: str, kind: str, expected: str | None = None, actual: str | None = None, *, new: bool = True
    ) -> None:
        """Record a problem with manifest entry ``i``, or (-1) with a path the manifest does not list
        (``new``: one not counted yet; an added directory that then cannot be listed is not)."""
        t = self.tally
        t.problems += 1
        t.by_kind[kind] += 1
        if i < 0:
            if new:
                t.failed += 1
                t.total += 1
        elif not self.failed[i]:
            self.failed[i] = 1
            t.failed += 1
        kept = self.kept
        kept.append(Problem(path=display(path), kind=kind, expected=expected, actual=actual))
        if self.max_problems is not None and len(kept) >= 2 * self.max_problems:
            self._trim()

    def _trim(self) -> None:
        self.kept.sort(key=lambda p: (p.path, p.kind))
        if self.max_problems is not None and len(self.kept) > self.max_problems:
            del self.kept[self.max_problems :]
            self.tally.truncated = True

    def classify(self, found: Found) -> int:
        """Compare everything but a file's content; return the index of a file whose content must be checked, or -1."""
        path, kind, _, st, target = found
        i = self.lookup(path, -1)
        if i < 0:
            self.tally.added += 1
            self.problem(-1, path, "added", actual=kind)
            return -1
        self.seen[i] = 1
        e = self.entries[i]
        if kind != e.kind:
            self.problem(i, path, "type_changed", expected=e.kind, actual=kind)
            return -1
        if st is not None and st.st_mode & 0o7777 != e.mode:  # full mode: the hasher checks a file's mode
            self.problem(i, path, "mode_changed", expected=f"{e.mode:04o}", actual=f"{st.st_mode & 0o7777:04o}")
        if kind == "file":
            self.files += 1  # a plain attribute: this is the hot loop
            return i
        t = self.tally
        if kind == "dir":
            t.directories += 1
        elif type(e) is Symlink:
            t.symlinks += 1
            want = e.target if e.target is not None else os.fsdecode(e.target_b64 or b"")
            if target != want:
                shown = e.target if e.target is not None else display(want)
                self.problem(i, path, "symlink_changed", expected=shown, actual=display(target or ""))
        else:
            t.other += 1
        return -1

    def walk_error(self, err: WalkError) -> None:
        """An object that could not be stat-ed, listed or entered (its own path, counted once)."""
        i = self.index.get(err.path, -1)
        if i >= 0:
            self.seen[i] = 1  # it is there: "missing" would be wrong
            if err.listed:
                self.unlisted_dirs.add(err.path)
        elif err.path == ".":
            self.unlisted_dirs.add("")
        # A directory not in the manifest that was listed was counted (and failed) as added; the root was not.
        self.problem(i, err.path, err.kind, actual=err.message, new=not err.listed or err.path == ".")

    def add_job(self, i: int, ino: int, mode: int) -> None:
        e = self.entries[i]
        assert type(e) is File  # classify() returned it for a "file": the manifest entry is a File
        # keys[i] is the manifest's own string, equal to the walk's path: sharing it lets that copy go.
        self.jobs.append((self.keys[i], ino, e.size, mode, e.blake3))
        self.job_index.append(i)

    def finish_walk(self, excluded: int) -> None:
        """What the manifest lists and the walk did not find is missing, or in a directory that could not be read."""
        self.tally.excluded = excluded
        self.tally.total += len(self.entries)
        self.index = {}  # not needed past the walk: a large manifest's index is freed before hashing
        self.lookup = self.index.get
        unlisted, seen = self.unlisted_dirs, self.seen
        i = seen.find(0)
        while i >= 0:
            path, kind = self.keys[i], self.entries[i].kind
            parent = path.rpartition("/")[0]
            while parent and parent not in unlisted:
                parent = parent.rpartition("/")[0]
            if parent in unlisted:
                why = f"in {display(parent or '.')}, which could not be read"
                self.problem(i, path, "unreadable", expected=kind, actual=why)
            else:
                self.problem(i, path, "missing", expected=kind)
            i = seen.find(0, i + 1)

    def hash(self, root_real: str, workers: int | None, progress: Callable[[int, int], None] | None) -> None:
        jobs, tick = self.jobs, None
        if progress is not None:
            lock, done, total = threading.Lock(), [0], len(jobs)

            def tick(n: int) -> None:
                with lock:
                    done[0] += n
                    progress(done[0], total)

        for k, kind, expected, actual in check_files(root_real, jobs, workers, tick):
            self.problem(self.job_index[k], jobs[k][0], kind, expected, actual)
        self.tally.hashed = len(jobs)

    def unchanged_since(self, root_real: str, mark: Mark, root_path: str) -> bool:
        """Nothing the verdict rests on may have changed since ``mark`` (see settle.py): every file
        that checked out (still the inode hashed), every directory of the manifest, deepest first,
        then the root, and the root's path must still lead to it. Returns whether a stamp could
        not be placed before or after the start (settle.settled then looks again)."""
        keys, jobs = self.keys, self.jobs
        order = [*self.job_index, *reversed(scan.directories(self.m)), -1]
        inodes = [job[1] for job in jobs] + [0] * (len(order) - len(jobs))
        paths = [keys[i] if i >= 0 else "" for i in order]
        changed, unplaced = changed_since(root_real, mark, paths, inodes, root_path, leaves=len(jobs))
        for pos, why in changed:
            i = order[pos]
            self.problem(i, keys[i] if i >= 0 else ".", "unstable", actual=why, new=False)
        return unplaced and not changed

    def outcome(self, records: bytearray | None) -> Outcome:
        self._trim()
        t = self.tally
        t.files = self.files
        t.checked = t.files + t.directories + t.symlinks + t.other
        return Outcome(self.kept, t, records)


def _refusing(
    walk: Iterable[Found | WalkError], root_real: str, anchors: Mapping[int, tuple[int, str]]
) -> Iterator[Found | WalkError]:
    """The walk, refusing any entry that is one of the files trust was taken from."""
    for found in walk:
        if not isinstance(found, WalkError) and found.ino in anchors:
            _refuse(found, root_real, anchors)
        yield found


def _refuse(found: Found, root_real: str, anchors: Mapping[int, tuple[int, str]]) -> None:
    """Raise TrustAnchorInTree if ``found`` (whose inode is an anchor's) is on the anchor's device."""
    dev, path = anchors[found.ino]
    try:
        same = dev < 0 or os.lstat(os.path.join(root_real, found.path)).st_dev == dev  # < 0: any device
    except OSError:
        same = True  # cannot tell: fail closed
    if same:
        raise TrustAnchorInTree(
            f"{path!r}, which this run took trust from, is {display(found.path)!r} inside the tree "
            "being verified (a bind mount or a hard link); trust anchors must come from outside it"
        )


def _full_consumer(c: _Comparison) -> Callable[[Found | WalkError], None]:
    """Full mode, one walk entry at a time: every regular file the manifest lists is hashed
    (its mode checked on the open descriptor)."""
    classify, walk_error = c.classify, c.walk_error
    files, keys, append_job, append_index = cast(list[File], c.entries), c.keys, c.jobs.append, c.job_index.append

    def consume(found: Found | WalkError) -> None:
        if isinstance(found, WalkError):
            walk_error(found)
            return
        i = classify(found)
        if i >= 0:  # a File (classify() checked the type)
            e, st = files[i], found[3]
            # A name listed as another type and lstat-ed as a file (a race) had its mode checked by classify().
            append_job((keys[i], found[2], e.size, e.mode if st is None else st.st_mode & 0o7777, e.blake3))
            append_index(i)

    return consume


def _walk_full(c: _Comparison, walk: Iterable[Found | WalkError]) -> None:
    consume = _full_consumer(c)
    for found in walk:
        consume(found)


def _quick_consumer(
    c: _Comparison, records: bytearray, snapshot: Snapshot | None
) -> Callable[[Found | WalkError], None]:
    """Quick mode, one walk entry at a time: files whose lstat matches a settled snapshot record are not hashed."""
    classify, add_job, walk_error = c.classify, c.add_job, c.walk_error
    old = snapshot.records if snapshot is not None else None
    settled_before = snapshot.settled_before() if snapshot is not None else 0
    size_of, pack = RECORD.size, RECORD.pack

    def consume(found: Found | WalkError) -> None:
        if isinstance(found, WalkError):
            walk_error(found)
            return
        i = classify(found)
        st = found.st
        if i < 0 or st is None:  # st is always there in quick mode (stat_files=True)
            return
        e = c.entries[i]
        assert type(e) is File
        if st.st_size != e.size:
            c.problem(i, found.path, "modified", expected=f"size {e.size}", actual=f"size {st.st_size}")
            return
        record = pack(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        records[size_of * i : size_of * (i + 1)] = record
        if (
            old is not None
            and old[size_of * i : size_of * (i + 1)] == record
            and st.st_mtime_ns < settled_before
            and st.st_ctime_ns < settled_before
        ):
            return
        # The mode was compared by classify(): hand the hasher the mode seen so it is not reported twice.
        add_job(i, st.st_ino, st.st_mode & 0o7777)

    return consume


def _walk_quick(c: _Comparison, walk: Iterable[Found | WalkError], snapshot: Snapshot | None) -> bytearray:
    records = bytearray(RECORD.size * len(c.entries))
    consume = _quick_consumer(c, records, snapshot)
    for found in walk:
        consume(found)
    return records


def _scan(
    c: _Comparison,
    m: Manifest,
    root_real: str,
    skip: set[str],
    excluder: Excluder,
    anchors: Mapping[int, tuple[int, str]] | None,
    snapshot: Snapshot | None,
    quick: bool,
) -> tuple[bytearray | None, int]:
    """The walk through the C scanner (see :mod:`duri_integrity.scan`), into the same consumers as
    the Python walk's entries. Returns the quick-mode records and the count of excluded entries."""
    records = bytearray(RECORD.size * len(c.entries)) if quick else bytearray()
    consume = _quick_consumer(c, records, snapshot) if quick else _full_consumer(c)
    files_ok, dirs_ok, excluded = scan.run(
        root_real,
        m,
        c.index,
        c.seen,
        records,
        snapshot.records if snapshot is not None and quick else None,
        snapshot.settled_before() if snapshot is not None else 0,
        skip,
        excluder,
        anchors,
        consume,
        (lambda f: _refuse(f, root_real, anchors)) if anchors else None,
        None if quick else (c.jobs, c.job_index, c.keys, c.entries),
    )
    c.files += files_ok
    c.tally.directories += dirs_ok
    return (records if quick else None), excluded


def compare(
    m: Manifest,
    keys: list[str],
    root_real: str,
    skip: set[str],
    workers: int | None,
    snapshot: Snapshot | None,
    quick: bool,
    progress: Callable[[int, int], None] | None = None,
    *,
    max_problems: int | None = DEFAULT_MAX_PROBLEMS,
    anchors: Mapping[int, tuple[int, str]] | None = None,
    root_path: str,
    started: Mark,
    walked: Callable[[], None] | None = None,
) -> Outcome:
    """Walk the tree and compare it with the manifest, hashing what must be hashed.

    ``max_problems`` (at least 1, or None for all) bounds the problems listed;
    counts are exact either way. ``anchors`` maps the inode of each file that
    decided trust (keys, revocations, config) to its (device, path): finding one in
    the tree raises TrustAnchorInTree, however the tree reaches it (a bind mount, a
    hard link). The comparison is of one moment (settle.py): the root, a directory or
    a file whose ctime shows a change after ``started`` (settle.start_mark(), taken when
    the run began) is ``unstable``, and so is a root whose path (``root_path``, as the
    caller named it) no longer leads to ``root_real`` at the end; a tree changed within
    a clock tick of ``started`` is compared once more after a wait (``progress`` then
    counts again from zero). ``walked`` is called once each walk is over. Raises TreeError
    when the check cannot be complete (out of descriptors or memory), and whatever a hashing
    thread raised.
    """
    if max_problems is not None and max_problems < 1:
        raise ValueError("max_problems must be at least 1 (or None for all)")
    excluder = Excluder(m.exclude)

    def attempt(mark: Mark) -> tuple[Outcome, bool]:
        c = _Comparison(m, keys, max_problems)
        # The conventional in-tree manifest and signature are never part of the tree, even when
        # this run uses a copy kept elsewhere (unless the manifest itself lists them).
        own = skip | {n for n in OWN_FILES if n not in c.index}
        records = _walk_any(c, m, root_real, own, excluder, anchors, snapshot, quick)
        if walked is not None:
            walked()
        c.hash(root_real, workers, progress)
        unplaced = not c.tally.problems and c.unchanged_since(root_real, mark, root_path)  # else FAILED anyway
        return c.outcome(records), unplaced

    return settled(attempt, root_real, started)


def _walk_any(
    c: _Comparison,
    m: Manifest,
    root_real: str,
    skip: set[str],
    excluder: Excluder,
    anchors: Mapping[int, tuple[int, str]] | None,
    snapshot: Snapshot | None,
    quick: bool,
) -> bytearray | None:
    """The walk, through the C scanner when there is one: the quick-mode records (None in full mode)."""
    walk = Walk(root_real, excluder, skip, stat_files=quick)
    found: Iterable[Found | WalkError] = _refusing(walk, root_real, anchors) if anchors else walk
    records = None
    if speedups.can_scan():
        records, excluded = _scan(c, m, root_real, skip, excluder, anchors, snapshot, quick)
    elif quick:
        records = _walk_quick(c, found, snapshot)
        excluded = walk.excluded
    else:
        _walk_full(c, found)
        excluded = walk.excluded
    c.finish_walk(excluded)
    return records
