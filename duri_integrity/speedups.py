"""The optional C extension (``_speedups``), and how its results become problems.

The extension is compiled at install time when a C compiler and the Python headers
are there (``hatch_build.py``); without it everything runs in pure Python with the
same results. ``DURI_INTEGRITY_NO_EXTENSION=1`` turns it off (read once, at import).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from blake3 import blake3

from .walk import check_resources, open_problem

__all__ = [
    "FAULT_HOOK",
    "STAGE_FSTAT",
    "STAGE_OPEN",
    "STAGE_READ",
    "available",
    "can_scan",
    "hash_read_batch",
    "new_reader",
    "quick_scan",
]

FileCheck = tuple[str, int, int, int, str]
Problem = tuple[int, str, "str | None", "str | None"]


def _load() -> ModuleType | None:
    if os.environ.get("DURI_INTEGRITY_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:  # by name: type checkers must not need the compiled module
        return importlib.import_module("duri_integrity._speedups")
    except ImportError:
        return None


_ext = _load()

STAGE_OPEN, STAGE_FSTAT, STAGE_READ, STAGE_ENTRY, STAGE_LIST = 0, 1, 2, 3, 4
"""Where :data:`FAULT_HOOK` is called (the extension's constants of the same names): before a
file's open, fstat and read (the reader), before an entry's lstat and a directory's listing (the
quick-mode scanner, with the directory's path, "." for the root)."""
FAULT_HOOK: Callable[[int, bytes], int] | None = None
"""Tests only: ``hook(stage, path)`` is called (with the GIL) before each file's open, fstat and
read in the extension, with the path relative to the root, and may return an errno to fail
that call with: fault injection reaches the C path as monkeypatching ``os`` reaches Python's."""


def can_scan() -> bool:
    """Whether quick mode's walk runs in C."""
    return _ext is not None


def quick_scan(*args: Any) -> tuple[int, int, int]:
    """``_speedups.quick_scan``: see compare._scan_quick."""
    assert _ext is not None
    return _ext.quick_scan(*args, FAULT_HOOK)  # type: ignore[no-any-return]


def available() -> bool:
    """Whether the C reader is in use."""
    return _ext is not None


def new_reader(root_fd: int) -> Any:
    """A ``_speedups.Reader`` holding its own chain of directory descriptors beneath ``root_fd``."""
    assert _ext is not None
    return _ext.Reader(root_fd, FAULT_HOOK)


def hash_read_batch(
    jobs: Sequence[FileCheck], batch: list[int], results: list[Any], view: memoryview, out: list[Problem]
) -> None:
    """Hash what the reader read and report exactly what the pure-Python path would.

    The common case (an int: the content's offset, the file stable across the read) is
    kept to a slice, one BLAKE3 call and a comparison; everything else is rare.
    """
    append = out.append
    for i, r in zip(batch, results, strict=True):
        job = jobs[i]
        if type(r) is int:
            digest = blake3(view[r : r + job[2]]).hexdigest()
            if digest != job[4]:
                append((i, "modified", f"blake3:{job[4]}", f"blake3:{digest}"))
        else:
            _unusual(i, job, r, view, append)


def _unusual(i: int, job: FileCheck, r: Any, view: memoryview, append: Callable[[Problem], None]) -> None:
    what = r[0]
    if what == "mode":
        append((i, "mode_changed", f"{job[3]:04o}", f"{r[1]:04o}"))
        r = r[2] if type(r[2]) is not int else ("stable", r[2])
        what = r[0]
    if what in ("stable", "changed"):
        digest = blake3(view[r[1] : r[1] + job[2]]).hexdigest()
        if digest == job[4]:
            return
        if what == "changed":
            append((i, "unstable", None, "changed while being read"))
        else:
            append((i, "modified", f"blake3:{job[4]}", f"blake3:{digest}"))
    elif what == "open":
        kind, why = open_problem(OSError(r[1], os.strerror(r[1])))
        append((i, kind, None, why))
    elif what == "read":
        check_resources(OSError(r[1], os.strerror(r[1])), "reading files to hash")
        append((i, "unreadable", None, os.strerror(r[1])))
    elif what == "replaced":
        append((i, "unstable", None, "replaced during the check"))
    elif what == "size":
        append((i, "modified", f"size {job[2]}", f"size {r[1]}"))
    elif what == "short":
        append((i, "unstable", None, "changed while being read"))
    else:  # pragma: no cover - the extension returns only the kinds above
        raise AssertionError(f"unknown reader result {r!r}")
