"""Structured logging: what the library records, and how the CLI prints it.

The library logs through the standard ``logging`` module on the ``duri_integrity``
logger, with context fields as record attributes (``root``, ``release``,
``serial``, ``key_id``, ``status``, ``mode``, counts, ``duration_seconds``). It
never configures the root logger; the CLI attaches a handler to its own logger.
Records are emitted only when the process uses ``logging`` at all (an application
that configured handlers has imported it), so a plain CLI run does not pay for it.
"""

import functools
import re
import sys
import time
from typing import Any

__all__ = ["CONTEXT_FIELDS", "LOGGER_NAME", "configure_cli_logging", "log_event", "log_report", "printable"]

LOGGER_NAME = "duri_integrity"
INFO, WARNING, ERROR = 20, 30, 40  # logging's own values, without importing it
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


# What a terminal acts on instead of showing: C0 controls (ESC, CR, LF, TAB, ...), DEL, C1
# controls (including CSI and NEL), the Unicode line and paragraph separators, and the
# bidirectional controls that reorder what is drawn ("Trojan Source"); and lone surrogates,
# which is how Python carries bytes that are not UTF-8 (a raw 0x9b byte is CSI to some terminals).
_UNSAFE = "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"


@functools.cache
def _unsafe() -> re.Pattern[str]:
    """:data:`_UNSAFE` compiled on first use (0.65 ms that every start-up paid; most runs print no such name)."""
    return re.compile(_UNSAFE)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape): show the byte, as display() does
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on spelled as ``\\xNN`` / ``\\uNNNN``.

    Names in a tree are chosen by whoever wrote the tree: printed raw, a name with a
    carriage return or an escape sequence could redraw a FAILED run as ``VERIFIED:``
    or forge a log line. JSON output needs no such care (the encoder escapes them).
    """
    if text.isprintable():  # the common case, at C speed; isprintable() is False for all of _UNSAFE
        return text
    return _unsafe().sub(_escape, text)


def _logger() -> Any | None:
    """The package logger, or None when nothing in this process uses ``logging``.

    A record can only reach a handler someone configured, and configuring one means
    importing ``logging``; when no one has, importing it just to drop the record would
    cost every verify process ~6 ms of start-up.
    """
    logging = sys.modules.get("logging")
    if logging is None:
        return None
    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        # Records still propagate to whatever the application configured; with nothing
        # configured they are dropped rather than printed by logging's last-resort handler.
        log.addHandler(logging.NullHandler())
    return log


def log_event(level: int, message: str, **fields: Any) -> None:
    """Log ``message`` at ``level`` with context fields as record attributes."""
    log = _logger()
    if log is not None:
        log.log(level, "%s", message, extra=fields)


def _formatter(fmt: str) -> Any:
    import json
    import logging

    class JsonFormatter(logging.Formatter):
        """One JSON object per line: time, level, logger, message, and any context fields present."""

        def format(self, record: logging.LogRecord) -> str:
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

    class TextFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            context = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__)
            line = f"duri-integrity: {record.levelname.lower()}: {record.getMessage()}"
            # One record, one line: nothing in a message or a field can start a forged line.
            return printable(line + (f" [{context}]" if context else ""))

    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_cli_logging(fmt: str, level: str) -> None:
    """Send the package's log records to stderr, as text or JSON lines (CLI only)."""
    import logging

    class BestEffortHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """Logs are a side effect: one that cannot be written must not change the verdict or print a traceback."""

        def handleError(self, record: logging.LogRecord) -> None:
            pass

    handler = BestEffortHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    log = logging.getLogger(LOGGER_NAME)
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
    level = INFO if report.status == "VERIFIED" else WARNING if report.status == "FAILED" else ERROR
    log_event(level, f"{report.status}: {report.summary}", **fields)
