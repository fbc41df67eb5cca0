"""How the command line draws results for a person: the report, the progress bar.

Every line that can carry text from the tree (file names, link targets, labels) goes
through :func:`~duri_integrity.logs.printable`, so a file name cannot move the cursor,
overwrite a line or print a forged ``VERIFIED:`` on the operator's terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ..logs import printable

if TYPE_CHECKING:
    from ..report import Report

__all__ = ["MAX_LISTED_PROBLEMS", "Progress", "echo_line", "render_report"]

MAX_LISTED_PROBLEMS = 50


def echo_line(text: str, *, err: bool = False) -> None:
    """Print one line with its control characters escaped."""
    click.echo(printable(text), err=err)


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal and only once a run is slow."""

    WIDTH = 30

    def __init__(self, delay: float) -> None:
        import time

        self._clock = time.monotonic
        self._start = self._clock()
        self._delay = delay
        self._last = 0.0
        self._drawn = False

    @classmethod
    def maybe(cls, *, enabled: bool) -> Progress | None:
        if not enabled or not sys.stderr.isatty():
            return None
        try:
            delay = float(os.environ.get("DURI_INTEGRITY_PROGRESS_DELAY", "1"))
        except ValueError:
            delay = 1.0
        return cls(delay)

    def update(self, done: int, total: int) -> None:
        now = self._clock()
        if now - self._start < self._delay or (now - self._last < 0.1 and done < total):
            return
        self._last = now
        filled = self.WIDTH * done // max(total, 1)
        sys.stderr.write(f"\rhashing [{'=' * filled}{' ' * (self.WIDTH - filled)}] {done:,}/{total:,} files")
        sys.stderr.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r" + " " * (self.WIDTH + 40) + "\r")
            sys.stderr.flush()


def render_report(report: Report, *, quiet: bool, echo: Callable[..., Any] = click.echo) -> None:
    """Human output: the problems (the first 50 and a count), then one summary line."""

    def line(text: str, err: bool = False) -> None:
        echo(printable(text), err=err)

    status_line = f"{report.status}: {report.summary}"
    if report.status in ("UNTRUSTED", "ERROR"):
        line(f"duri-integrity: {status_line}", err=True)
        return
    if quiet:
        if report.status != "VERIFIED":
            line(status_line, err=True)
        return
    for note in report.notes:
        line(f"note: {note}", err=True)
    for p in report.problems[:MAX_LISTED_PROBLEMS]:
        detail = ""
        if p.expected is not None or p.actual is not None:
            detail = f"  (expected {p.expected or '-'}, actual {p.actual or '-'})"
        line(f"{p.kind.upper():<16} {p.path}{detail}")
    total = max(report.counts.get("problems", 0), len(report.problems))  # counts stay exact when the list is cut
    if total > MAX_LISTED_PROBLEMS:
        how = "--json --max-problems 0" if getattr(report, "problems_truncated", False) else "--json"
        line(f"... and {total - MAX_LISTED_PROBLEMS:,} more problems (use {how} for all)")
    m = report.manifest
    if m is not None and report.status == "VERIFIED":
        label = f"release {m.release}, " if m.release else ""
        line(f"manifest: {label}serial {m.serial}, key {m.key_id}, root digest {m.root_digest[:16]}")
    line(status_line)
