"""One instant for a whole run: nothing in the tree may change between the run's start and its end.

Files are read one after another, so a check that only looks at each file while reading it
can be steered: rewrite two files alternately (one is always bad), or swap a directory for
another (``rename``) around the moment it is read, and every file matches while the tree
never does. So build and verify both end with :func:`changed_since`: every path they relied
on, directories and the root included, must carry a ctime from before the run began.

Why ctime. The kernel sets it on every change to an inode (content, mode, links, rename of
the inode itself) and no one but root can set it back. Adding, removing or renaming an entry
changes its directory's ctime (POSIX requires the parent's mtime and ctime to change), so a
directory swapped in or out during the run shows on the directory holding it, and a root
swapped as a whole shows on the root itself.

Why two clocks. Inode times come from the kernel's coarse clock, which lags the wall clock by
up to one tick (4 ms at HZ=250), and some filesystems round them further (whole seconds on ext4
with 128-byte inodes). A run notes both clocks at its start (:func:`start_mark`): any change
from then on carries a stamp at least the coarse one, rounded to the filesystem's step, and a
stamp after the fine one is certainly from during the run. A stamp between the two cannot be
placed: the change came just before the start or during the run. That happens only to a tree
changed within a tick (or a step) before the run, so :func:`settled` then runs the check
again after :func:`wait_past`, which holds it until the coarse clock has passed the new start;
every later change then carries a later stamp. An untouched tree costs no wait.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

from . import speedups
from .threads import interrupt_behind, join_started
from .walk import DirCursor, check_resources, open_root

__all__ = ["Mark", "changed_since", "granularity", "settled", "start_mark", "wait_past"]

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
"""The clock inode times are stamped from (Linux's number for it; Python names it on some builds)."""
MAX_WAIT = 0.25
"""Seconds to wait for the coarse clock at most (a tick is 1 to 10 ms); beyond that the clock is broken."""

LOOKUP_BATCH = 4096
"""Paths the C look-up encodes at a time: all 100,000 of a large tree at once added 8 MB to the
verification's peak memory."""

T = TypeVar("T")


class Mark(NamedTuple):
    """A run's start, on both clocks (nanoseconds since the epoch)."""

    fine: int
    """The wall clock: a ctime after it is certainly a change made during the run."""
    coarse: int
    """The kernel's coarse clock, read just before ``fine``: no change from the start on carries an
    earlier stamp (once rounded to the filesystem's step)."""
    waited: bool = False
    """:func:`wait_past` ran before the tree was first looked at: every later change carries a
    stamp after ``fine``, so a stamp up to ``fine`` is from before the run."""


def start_mark() -> Mark:
    """The run's start; take it before the tree is first looked at."""
    coarse = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
    return Mark(time.time_ns(), coarse)


def granularity(ctime_ns: int) -> int:
    """The coarsest time step a filesystem's ctime suggests, in nanoseconds.

    Some filesystems keep whole seconds (ext4 with 128-byte inodes, ext3; FAT keeps two) or
    hundredths; there a change just after the start carries a stamp from before it, whatever
    the kernel's clock says. No sub-second part means 2 s (the coarsest in use); otherwise
    the largest power of ten dividing the sub-second part (a fine stamp gives 1 to 100 ns).
    """
    ns = ctime_ns % 1_000_000_000
    if ns == 0:
        return 2_000_000_000
    step = 1
    while step < 100_000_000 and ns % (step * 10) == 0:
        step *= 10
    return step


def wait_past(mark: Mark, root: str | None = None) -> Mark:
    """Return ``mark`` as waited for, once a change made from now on gets an inode time after it.

    That needs the kernel's coarse clock (which stamps inodes) past ``mark.fine`` and, on a
    filesystem that rounds its times (judged from ``root``'s ctime), the rounded clock too:
    up to one step (2 s on a filesystem of whole seconds). Raises OSError if the clock does
    not get there in time (a stopped or stepped-back clock): then the end-of-run check could
    not see late changes.
    """
    step = granularity(os.stat(root).st_ctime_ns) if root is not None else 1
    gettime = time.clock_gettime_ns
    deadline = time.monotonic() + MAX_WAIT + 2 * step / 1e9
    while gettime(CLOCK_REALTIME_COARSE) // step * step <= mark.fine:
        if time.monotonic() > deadline:
            raise OSError("the kernel's coarse clock did not advance: changes during the run could go unseen")
        time.sleep(0.0002 if step < 10_000_000 else 0.005)
    return mark._replace(waited=True)


def settled(attempt: Callable[[Mark], tuple[T, bool]], root: str, started: Mark) -> T:
    """``attempt(mark)``'s result, from a run whose end-of-run check could place every stamp.

    ``attempt`` looks at the tree from ``mark`` on and ends with :func:`changed_since`; it
    returns its result and whether that check found a stamp it could not place. The first
    attempt counts from ``started``, taken when the run began (before the keys and the
    manifest were read: a change to the tree from then on counts). When a stamp could not be
    placed, the tree changed within a tick of that start, and the attempt is made once more
    after :func:`wait_past`, where every stamp can be placed.
    """
    result, unplaced = attempt(started)
    if unplaced:
        result, _ = attempt(wait_past(start_mark(), root))
    return result


def changed_since(
    root_real: str,
    mark: Mark,
    paths: Sequence[str],
    inodes: Sequence[int] | None = None,
    root_path: str | None = None,
    leaves: int = 0,
) -> tuple[list[tuple[int, str]], bool]:
    """The positions in ``paths`` (relative to the root; ``""`` is the root) that changed after ``mark``,
    and whether any carries a stamp that cannot be placed before or after it (see the module).

    Each path is looked up again from the root, one directory at a time without following
    symlinks, and its own ctime read with ``lstat``; where ``inodes`` gives one (0: none), it must
    still be that inode. Give every path before the directories holding it and the root last
    (reverse path order): a directory swapped while the look goes on then shows on the
    directory, or on the root, still to be looked at, whose entries changed. With ``root_path``
    (the root as the caller named it, through symlinks perhaps) it must, after all that, still
    lead to ``root_real`` (a ``current`` link repointed during the run is a root that changed),
    and the root's own ctime is read once more, last. What changes after the look has passed
    a directory is a change after the check, as one after the answer would be.
    The first ``leaves`` paths name no directory: they are looked at before all the others, in
    any order among themselves (with the extension, on two threads when there are many).
    Returns (position, why) for every path that is gone, replaced, cannot be reached or carries
    a later ctime.
    """
    paths = list(paths)  # one list for the look-up and the root's position (a large tree's is long)
    root_fd = open_root(root_real)
    try:
        if mark.waited:
            since = mark.fine + 1
        else:
            step = granularity(os.fstat(root_fd).st_ctime_ns)
            since = mark.coarse // step * step
        found = _ctimes(root_fd, paths, since, list(inodes) if inodes is not None else [0] * len(paths), leaves)
    finally:
        os.close(root_fd)
    changed: list[tuple[int, str]] = []
    unplaced = False
    for pos, err, ctime in found:
        if err < 0:
            changed.append((pos, "replaced during the check"))
        elif err:
            exc = OSError(err, os.strerror(err))
            check_resources(exc, f"checking {paths[pos] or '.'!r} again")
            changed.append((pos, f"replaced or removed during the check ({exc.strerror})"))
        elif ctime > mark.fine:
            changed.append((pos, "changed during the check"))
        else:
            unplaced = True
    if root_path is not None:
        why = _root_now(root_path, root_real, mark, since)
        if why == "":
            unplaced = True
        elif why is not None and all(paths[pos] for pos, _ in changed):  # the root once in a report
            changed.append((paths.index(""), why))
    return changed, unplaced


def _root_now(root_path: str, root_real: str, mark: Mark, since: int) -> str | None:
    """The last look: ``root_path`` must still lead to ``root_real``, whose own ctime is read once
    more (an entry swapped since the first look at the root). Why not, "" for a stamp that cannot
    be placed, None when all is well."""
    try:
        if os.path.realpath(root_path, strict=True) != root_real:
            return f"the root path {root_path!r} leads elsewhere since the check began"
        ctime = os.lstat(root_real).st_ctime_ns
    except OSError as exc:
        return f"the root path {root_path!r} cannot be resolved any more ({exc.strerror or exc})"
    if ctime > mark.fine:
        return "changed during the check"
    return "" if ctime >= since else None


def _ctimes(
    root_fd: int, paths: list[str], since: int, inodes: list[int], leaves: int = 0
) -> list[tuple[int, int, int]]:
    """(position, errno, 0) for each path that cannot be reached, (position, -1, 0) for each that is
    not the inode given (0: any), (position, 0, ctime) for each whose ctime is at least ``since``:
    the C reader's ``ctimes``, or the same in Python. With the extension, the first half of the
    ``leaves`` (paths naming no directory) is looked up on a second thread beside the second half
    (the look-ups release the GIL), and the rest after both: 4.5 to ~2.5 ms for 3,000 files."""
    if not speedups.available():
        return _ctimes_python(root_fd, paths, since, inodes)
    split = leaves // 2 if leaves >= SPLIT_LEAVES and _cpus() > 1 else 0
    if not split:
        return _lookup(root_fd, paths, since, inodes, 0, len(paths))
    other: list[list[tuple[int, int, int]]] = []
    failed: list[BaseException] = []

    def first_half() -> None:
        try:
            other.append(_lookup(root_fd, paths, since, inodes, 0, split))
        except BaseException as exc:  # raised again below, in the caller's thread
            failed.append(exc)

    helper = threading.Thread(target=first_half, name="end-of-run look-up")
    try:
        helper.start()
    except RuntimeError as exc:
        if (interrupt := interrupt_behind(exc)) is not exc:  # an interrupt inside start(): not a lack of threads
            join_started(helper)  # it runs, on the caller's descriptor
            raise interrupt from None
        return _lookup(root_fd, paths, since, inodes, 0, len(paths))  # no thread to be had: one thread does it all
    try:
        mine = _lookup(root_fd, paths, since, inodes, split, leaves)
    finally:
        helper.join()  # every leaf is looked at before any directory
    if failed:
        raise failed[0]
    return [*other[0], *mine, *_lookup(root_fd, paths, since, inodes, leaves, len(paths))]


SPLIT_LEAVES = 512
"""From this many leaves the look-up runs on two threads (a thread costs ~0.1 ms to start)."""


def _cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _lookup(
    root_fd: int, paths: list[str], since: int, inodes: list[int], start: int, end: int
) -> list[tuple[int, int, int]]:
    """The C reader's ``ctimes`` for ``paths[start:end]``, positions counted from 0, through a
    reader of its own (its own chain of directory descriptors)."""
    reader = speedups.new_reader(root_fd)
    try:
        found: list[tuple[int, int, int]] = []
        for at in range(start, end, LOOKUP_BATCH):  # the paths' bytes are made a batch at a time
            stop = min(at + LOOKUP_BATCH, end)
            part = reader.ctimes(paths[at:stop], since, inodes[at:stop])
            found += [(at + pos, err, ctime) for pos, err, ctime in part]
        return found
    finally:
        reader.close()


def _ctimes_python(root_fd: int, paths: list[str], since: int, inodes: list[int]) -> list[tuple[int, int, int]]:
    """:func:`_ctimes` without the extension, in order."""
    found: list[tuple[int, int, int]] = []
    os_stat = os.stat
    cursor = DirCursor(root_fd)
    cur_dir: str | None = None
    dir_fd = -1
    try:
        for pos, rel in enumerate(paths):
            try:
                if not rel:
                    st = os.fstat(root_fd)
                    ino, ctime = st.st_ino, st.st_ctime_ns
                else:
                    rel_dir, _, name = rel.rpartition("/")
                    if rel_dir != cur_dir:
                        cur_dir = None
                        dir_fd = cursor.enter(rel_dir)
                        cur_dir = rel_dir
                    if name in ("", ".", ".."):  # never up or sideways (the C reader refuses them too)
                        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                    st = os_stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    ino, ctime = st.st_ino, st.st_ctime_ns
            except OSError as exc:
                found.append((pos, exc.errno or errno.EIO, 0))
                continue
            if inodes[pos] and ino != inodes[pos]:
                found.append((pos, -1, 0))
            elif ctime >= since:
                found.append((pos, 0, ctime))
    finally:
        cursor.close()
    return found
