"""One result shared by every caller, refreshed at most once at a time, under a deadline.

The status endpoint must never pass an old answer off as a current one: a result
older than its TTL is not served; a caller that finds none waits for the one
run in flight, but only until that run's deadline, and then gets an explicit
"unavailable" answer instead. Verification itself runs in a child process that
is killed at the deadline (:class:`ChildVerification`), so a stuck run costs one
process for at most the deadline, never a thread per request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Generic, TypeVar

from .report import Report, make_report

__all__ = ["KILL_GRACE", "ChildVerification", "SharedResult", "unverified_report", "verify_command"]

T = TypeVar("T")
KILL_GRACE = 5.0
"""Seconds waiters allow beyond the deadline for a killed child to be reaped."""
_TOKEN_VARIABLES = ("CANARY_TOKEN", "DURI_INTEGRITY_STATUS_TOKEN", "DURI_INTEGRITY_STATUS_TOKEN_FILE")
MAX_REPORT_BYTES = 256 << 20
"""A report bigger than this is not a report (a 100,000-problem report is ~15 MB)."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SharedResult(Generic[T]):
    """Run ``run`` at most once at a time and share its result with every caller for ``ttl`` seconds.

    * A result younger than ``ttl / 2`` is served as is; between ``ttl / 2`` and
      ``ttl`` it is served while one background run refreshes it, so a
      dashboard polling steadily never waits.
    * A result older than ``ttl`` is never served: the caller waits for the run
      in flight (starting one if none is), at most until that run's deadline,
      and otherwise gets ``unavailable(reason)``.
    * Only one run is ever in flight. A run that overruns its deadline (a
      callable that cannot be killed) keeps the slot until it returns, so a
      stuck run costs one thread in total, and callers get ``unavailable``.
    """

    def __init__(
        self,
        run: Callable[[], T],
        *,
        ttl: float,
        deadline: float,
        unavailable: Callable[[str], T],
        grace: float = 0.0,
    ) -> None:
        if ttl <= 0 or deadline <= 0:
            raise ValueError("ttl and deadline must be positive")
        self._job = run
        self._unavailable = unavailable
        self.ttl = ttl
        self.deadline = deadline
        self.grace = grace
        """Extra seconds callers wait for a run that enforces the deadline itself (to see its own answer)."""
        self._cond = threading.Condition()
        self._value: T | None = None
        self._at = 0.0
        self._running = False
        self._started = 0.0
        self.runs = 0
        """Runs that finished (successfully or not): for tests and metrics."""

    def _run(self) -> None:
        try:
            value = self._job()
        except Exception as exc:  # a run that raised is an answer too: "could not check"
            value = self._unavailable(f"the check failed: {type(exc).__name__}: {exc}")
        with self._cond:
            self._value, self._at = value, time.monotonic()
            self.runs += 1
            self._running = False
            self._cond.notify_all()

    def _start_locked(self) -> str | None:
        """Start a run unless one is in flight; return why it could not start, or None."""
        if self._running:
            return None
        try:
            threading.Thread(target=self._run, name="duri-integrity-check", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread": out of threads or memory
            return str(exc)
        self._running, self._started = True, time.monotonic()
        return None

    def get(self) -> T:
        """The current result, waiting for a run if there is none; never one older than the TTL."""
        with self._cond:
            while True:
                age = time.monotonic() - self._at
                if self._value is not None and age < self.ttl:
                    if age >= self.ttl / 2:
                        self._start_locked()  # refresh ahead; the current result is still valid
                    return self._value
                error = self._start_locked()
                if error is not None:
                    return self._unavailable(f"could not start a check: {error}")
                remaining = self._started + self.deadline + self.grace - time.monotonic()
                if remaining <= 0:
                    return self._unavailable(f"the check has not finished within its {self.deadline:g}-second deadline")
                self._cond.wait(remaining)

    def peek(self) -> tuple[T | None, float]:
        """The last result and its age in seconds, without starting anything."""
        with self._cond:
            return self._value, time.monotonic() - self._at


def unverified_report(root: str, reason: str) -> Report:
    """The answer when no current verification result exists: ERROR, rollback_unverifiable."""
    return make_report(status="ERROR", root=root, reason=reason, checked_at=_now_iso())


def verify_command(root: str | None, options: dict[str, object]) -> list[str]:
    """``verify --json`` arguments for the given :func:`verify_integrity` options."""
    flags = {
        "manifest": "--manifest",
        "deployment": "--deployment",
        "config_file": "--config",
        "signature": "--signature",
        "cache_dir": "--cache-dir",
        "state_dir": "--state-dir",
        "allow_rollback_to": "--allow-rollback-to",
        "clock_skew": "--clock-skew",
        "workers": "--workers",
    }
    args = ["verify", "--json"]
    for name, value in options.items():
        if value is None or value is False:
            continue
        if name == "quick":
            args.append("--quick")
        elif name in ("public_keys", "revoked_keys"):
            flag = "--public-key" if name == "public_keys" else "--revoked-key"
            for item in [value] if isinstance(value, str) else list(value):  # type: ignore[call-overload]
                args.append(f"{flag}={os.fspath(item)}")  # one token: a value starting with - stays a value
        elif name in flags:
            args.append(f"{flags[name]}={os.fspath(value) if isinstance(value, os.PathLike) else value}")
        else:
            raise TypeError(f"unknown verify option {name!r}")
    if root is not None:
        args += ["--", os.fspath(root)]
    return args


class ChildVerification:
    """Verify in a child process (``python -P -m duri_integrity verify --json``), killed at the deadline.

    ``-P`` keeps the working directory off the child's import path (whoever can
    write the cwd must not choose the code that verifies), and the directory
    this package was imported from goes first on ``PYTHONPATH`` so the child
    runs the same code as the server.
    """

    def __init__(self, root: str | None, deadline: float, options: Sequence[tuple[str, object]] = ()) -> None:
        self.root = os.fspath(root) if root is not None else "."
        self.deadline = deadline
        self.argv = [sys.executable, "-P", "-m", "duri_integrity", *verify_command(root, dict(options))]
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        path = os.environ.get("PYTHONPATH")
        # The child needs no bearer token: keep the secret out of its environment.
        env = {k: v for k, v in os.environ.items() if k not in _TOKEN_VARIABLES}
        self.env = {**env, "PYTHONPATH": here + (os.pathsep + path if path else "")}
        self._proc: subprocess.Popen[bytes] | None = None
        self.max_report_bytes = MAX_REPORT_BYTES

    def stop(self) -> None:
        """Kill the verification in flight, if any (the server is shutting down)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._kill(proc)

    def __call__(self) -> Report:
        import msgspec

        try:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                env=self.env,
                start_new_session=True,  # its own process group: the kill reaches anything it started
            )
        except OSError as exc:
            return unverified_report(self.root, f"could not start the verification: {exc.strerror or exc}")
        self._proc = proc
        try:
            out = self._collect(proc)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return unverified_report(
                self.root, f"the verification did not finish within {self.deadline:g} seconds and was stopped"
            )
        finally:
            self._proc = None
        if out is None:
            self._kill(proc)
            return unverified_report(self.root, "the verification's report is too large")
        try:
            report = msgspec.json.decode(out, type=Report)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return unverified_report(self.root, f"the verification exited with code {proc.returncode} and no report")
        if report.exit_code != proc.returncode:  # e.g. its output could not be delivered whole
            return unverified_report(
                self.root, f"the verification exited with code {proc.returncode}, not the {report.status} report's"
            )
        return report

    def _collect(self, proc: subprocess.Popen[bytes]) -> bytes | None:
        """The child's stdout once it exits (None past ``max_report_bytes``); TimeoutExpired at the deadline."""
        import selectors

        assert proc.stdout is not None  # stdout=PIPE
        end = time.monotonic() + self.deadline
        chunks: list[bytes] = []
        size = 0
        with proc.stdout, selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(self.argv, self.deadline)
                if not sel.select(left):
                    continue
                data = os.read(proc.stdout.fileno(), 1 << 16)
                if not data:
                    break
                size += len(data)
                if size > self.max_report_bytes:  # memory must not grow with what the tree holds
                    return None
                chunks.append(data)
        proc.wait(timeout=max(0.0, end - time.monotonic()))
        return b"".join(chunks)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # A process stuck in the kernel (D state) may outlive the grace: Popen reaps it later.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE)
