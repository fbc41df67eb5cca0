"""The optional C extension (``_speedups``): whether it is there, and its entry points.

The extension is compiled at install time when a C compiler and the Python headers
are there (``hatch_build.py``); without it everything runs in pure Python with the
same results. ``DURI_INTEGRITY_NO_EXTENSION=1`` turns it off (read once, at import). The
reader's results, and how they become problems, are described in hashing.py (the stability rule).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = [
    "FAULT_HOOK",
    "STAGE_FSTAT",
    "STAGE_OPEN",
    "STAGE_READ",
    "available",
    "can_scan",
    "find_key_line",
    "new_reader",
    "quick_scan",
    "warming",
]


def _load() -> ModuleType | None:
    if os.environ.get("DURI_INTEGRITY_NO_EXTENSION", "") not in ("", "0"):
        return None
    try:  # by name: type checkers must not need the compiled module
        return importlib.import_module("duri_integrity._speedups")
    except ImportError:
        return None


_ext = _load()

find_key_line: Callable[[bytes | bytearray | memoryview, int], int] | None = (
    None if _ext is None else _ext.find_key_line
)
"""``find_key_line(head, start)``: where keys._KEY_LINE first matches in ``head`` from ``start``, or -1
(the same search in C); None without the extension."""

STAGE_OPEN, STAGE_FSTAT, STAGE_READ, STAGE_ENTRY, STAGE_LIST, STAGE_CTIME = 0, 1, 2, 3, 4, 5
"""Where :data:`FAULT_HOOK` is called (the extension's constants of the same names): before a
file's open, fstat and read (the reader), before an entry's lstat and a directory's listing (the
quick-mode scanner, with the directory's path, "." for the root), before a path's look-up in the
end-of-run check (settle.py; "" for the root)."""
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


def warming(root_fd: int, threads: int, budget: int) -> Any:
    """A ``_speedups.Warming``: ``threads`` threads warming the metadata beneath ``root_fd``, at most
    ``budget`` entries, ending early when the cache turns out warm (see _warming.c)."""
    assert _ext is not None
    return _ext.Warming(root_fd, threads, budget, True)
