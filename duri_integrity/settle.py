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

Why a wait. Inode times come from the kernel's coarse clock, which lags the wall clock by up
to one tick (4 ms at HZ=250). A change made just after the run's start could carry a stamp
from just before it and go unseen. :func:`wait_past` therefore holds the run until the coarse
clock has passed its start mark before the tree is first looked at, so every later change
carries a later stamp. The mark itself comes from the fine clock, so a change made before the
run began never looks later than it (no false alarm for a tree written just before).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from .walk import DirCursor, check_resources, open_root

__all__ = ["changed_since", "granularity", "start_mark", "wait_past"]

CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)
"""The clock inode times are stamped from (Linux's number for it; Python names it on some builds)."""
MAX_WAIT = 0.25
"""Seconds to wait for the coarse clock at most (a tick is 1 to 10 ms); beyond that the clock is broken."""


def start_mark() -> int:
    """The run's start on the fine wall clock (nanoseconds)."""
    return time.time_ns()


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


def wait_past(mark: int, root: str | None = None) -> None:
    """Return once a change made from now on gets an inode time after ``mark``.

    That needs the kernel's coarse clock (which stamps inodes) past ``mark`` and, on a
    filesystem that rounds its times (judged from ``root``'s ctime), the rounded clock too:
    up to one step (2 s on a filesystem of whole seconds). Usually free on others: the
    trust step before the walk already takes longer than a tick. Raises OSError if the
    clock does not get there in time (a stopped or stepped-back clock): then the
    end-of-run check could not see late changes.
    """
    step = granularity(os.stat(root).st_ctime_ns) if root is not None else 1
    gettime = time.clock_gettime_ns
    if gettime(CLOCK_REALTIME_COARSE) // step * step > mark:
        return
    deadline = time.monotonic() + MAX_WAIT + 2 * step / 1e9
    while gettime(CLOCK_REALTIME_COARSE) // step * step <= mark:
        if time.monotonic() > deadline:
            raise OSError("the kernel's coarse clock did not advance: changes during the run could go unseen")
        time.sleep(0.0002 if step < 10_000_000 else 0.005)


def changed_since(root_real: str, mark: int, paths: Sequence[str]) -> list[tuple[int, str]]:
    """The positions in ``paths`` (relative to the root; ``""`` is the root) that changed after ``mark``.

    Each path is looked up again from the root, one directory at a time without following
    symlinks, and its own ctime read with ``lstat``. Paths grouped by directory cost one
    ``lstat`` each. Returns (position, why) for every path that is gone, cannot be reached
    or carries a later ctime.
    """
    changed: list[tuple[int, str]] = []
    os_stat = os.stat
    cursor = DirCursor(open_root(root_real))
    cur_dir: str | None = None
    dir_fd = -1
    try:
        for pos, rel in enumerate(paths):
            try:
                if not rel:
                    ctime = os.fstat(cursor.root_fd).st_ctime_ns
                else:
                    rel_dir, _, name = rel.rpartition("/")
                    if rel_dir != cur_dir:
                        cur_dir = None
                        dir_fd = cursor.enter(rel_dir)
                        cur_dir = rel_dir
                    ctime = os_stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ctime_ns
            except OSError as exc:
                check_resources(exc, f"checking {rel or '.'!r} again")
                changed.append((pos, f"replaced or removed during the check ({exc.strerror})"))
                continue
            if ctime > mark:
                changed.append((pos, "changed during the check"))
    finally:
        cursor.close()
        os.close(cursor.root_fd)
    return changed
