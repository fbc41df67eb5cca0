"""Structured logging: what the library records, and how the CLI prints it.

The library logs through the standard ``logging`` module on the ``duri_integrity``
logger, with context fields as record attributes (``root``, ``release``,
``serial``, ``key_id``, ``status``, ``mode``, counts, ``duration_seconds``). It
never configures the root logger; the CLI attaches a handler to its own logger.
"""

import logging
import sys
import time
from typing import Any

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "configure_cli_logging", "log_report"]

log = logging.getLogger("duri_integrity")
# Records propagate to whatever the application configured; with nothing configured they are
# dropped rather than printed by logging's last-resort handler.
log.addHandler(logging.NullHandler())
CONTEXT_FIELDS = (
    "root",
    "release",
    "serial",
    "key_id",
    "status",
    "mode",
    "recommendation",
    "files_checked",
    "problems",
    "duration_seconds",
    "reason",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any context fields present."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__)
        return f"duri-integrity: {record.levelname.lower()}: {record.getMessage()}" + (
            f" [{context}]" if context else ""
        )


def configure_cli_logging(fmt: str, level: str) -> None:
    """Send the package's log records to stderr, as text or JSON lines (CLI only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False


def log_report(report: Any) -> None:
    """Record a finished verification with its context fields."""
    m = report.manifest
    fields = {
        "root": report.root,
        "release": m.release if m else None,
        "serial": m.serial if m else None,
        "key_id": m.key_id if m else None,
        "status": report.status,
        "mode": report.mode,
        "recommendation": report.recommendation,
        "files_checked": report.counts.get("checked", 0),
        "problems": report.counts.get("problems", 0),
        "duration_seconds": report.elapsed_seconds,
        "reason": report.reason,
    }
    level = (
        logging.INFO if report.status == "VERIFIED" else logging.WARNING if report.status == "FAILED" else logging.ERROR
    )
    log.log(level, "%s: %s", report.status, report.summary, extra=fields)
