"""Prometheus metrics in the node_exporter textfile-collector format.

The file is replaced atomically (written beside the target, then renamed), so the
collector never reads half a file.
"""

import math
import os
import time

from .errors import IntegrityError
from .files import replace_file
from .report import PROBLEM_KINDS, RECOMMENDATIONS, Report

__all__ = ["canonical_root", "render_textfile", "write_textfile"]

_PREFIX = "duri_integrity"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value written exactly: integers in full, floats as the shortest repr that round-trips.

    (``{:g}`` keeps six significant digits: a Unix time came out as 1.79576e+09, up to
    5,000 s off, enough to fire or hide a staleness alert.)
    """
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def canonical_root(root: str) -> str:
    """The ``root`` label: absolute with symlinks resolved, so ``.``, ``./x`` and ``/srv/x`` are one series."""
    return os.path.realpath(root)


def render_textfile(report: Report, *, now: float | None = None) -> str:
    """The report as Prometheus text exposition format (version 0.0.4)."""
    m = report.manifest
    base = f'root="{_label(canonical_root(report.root))}",release="{_label(m.release if m else "")}"'
    lines: list[str] = []

    def metric(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {_PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {_PREFIX}_{name} gauge")
        for extra, value in samples:
            labels = base + (f",{extra}" if extra else "")
            lines.append(f"{_PREFIX}_{name}{{{labels}}} {_number(value)}")

    metric(
        "verified",
        "1 if the last verification found the tree exactly as released, else 0.",
        [("", int(report.integrity_verified))],
    )
    metric(
        "status",
        "1 for the status of the last verification (VERIFIED, FAILED, UNTRUSTED, ERROR).",
        [(f'status="{s}"', int(report.status == s)) for s in RECOMMENDATIONS],
    )
    metric(
        "files_checked",
        "Entries compared with the manifest in the last verification.",
        [("", report.counts.get("checked", 0))],
    )
    metric(
        "problems",
        "Problems found in the last verification, by kind.",
        [(f'kind="{k}"', report.counts.get(k, 0)) for k in PROBLEM_KINDS],
    )
    metric("duration_seconds", "Wall time of the last verification.", [("", float(report.elapsed_seconds))])
    metric(
        "manifest_serial",
        "Signed serial of the manifest last verified against (0 if none was trusted).",
        [("", m.serial if m else 0)],
    )
    metric(
        "last_run_timestamp_seconds",
        "Unix time the last verification finished.",
        [("", round(time.time() if now is None else now, 3))],
    )
    return "\n".join(lines) + "\n"


def write_textfile(report: Report, path: str) -> None:
    """Atomically replace ``path`` with the report's metrics."""
    try:
        replace_file(path, render_textfile(report).encode())
    except OSError as exc:
        raise IntegrityError(f"cannot write metrics to {path!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL byte in the path (possible from the library API)
        raise IntegrityError(f"cannot write metrics to {path!r}: {exc}") from None
