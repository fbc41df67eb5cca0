"""Service checks: PromQL queries with thresholds, evaluated by the Prometheus that scrapes the service.

The operator names the checks file explicitly (``serve --checks FILE``); it is
never looked up in the working directory. Each query goes to Prometheus's
``/api/v1/query`` with a timeout; a check passes only when every returned
sample is a finite number on the right side of its threshold. No data, NaN, an
error answer, or Prometheus unreachable or slow makes the check ``unknown``,
which is never ok.
"""

from __future__ import annotations

import contextlib
import math
import operator
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from .errors import ConfigError
from .watchdog import SharedResult

__all__ = ["Check", "CheckResult", "ChecksConfig", "evaluate", "load_checks", "make_cached_checks"]

MAX_CHECKS_FILE = 64 * 1024
MAX_ANSWER = 1 << 20
"""Bytes of one Prometheus answer we read at most (an instant query for one number is ~200)."""
UNKNOWN_RECOMMENDATION = "rollback_unverifiable"
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class Check(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    name: str
    query: str
    comparison: Literal["<", "<=", ">", ">="]
    """The check passes when ``value <comparison> threshold``."""
    threshold: float
    recommendation: str
    """What a failure recommends, e.g. ``rollback_error_rate``."""


class Prometheus(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    url: str
    timeout_seconds: float = 2.0
    cache_seconds: float = 15.0


class ChecksConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    prometheus: Prometheus
    checks: list[Check]


class CheckResult(msgspec.Struct, kw_only=True):
    name: str
    status: Literal["ok", "failed", "unknown"]
    recommendation: str
    detail: str
    value: float | None
    comparison: str
    threshold: float
    query: str
    checked_at: str


def load_checks(path: str) -> ChecksConfig:
    """Read and validate the checks file (TOML); raise ConfigError on any mistake."""
    import tomllib

    from .files import UnreadableFile, read_file

    try:
        raw = read_file(path, MAX_CHECKS_FILE, "checks file", private=True)
        config = msgspec.convert(tomllib.loads(raw.decode("utf-8")), ChecksConfig)
    except UnreadableFile as exc:
        raise ConfigError(str(exc)) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"checks file {path!r}: {exc}") from None
    prom = config.prometheus
    url = urllib.parse.urlsplit(prom.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(f"checks file {path!r}: prometheus.url must be an http:// or https:// URL")
    if not 0 < prom.timeout_seconds <= 60 or not 0 < prom.cache_seconds <= 3600:
        raise ConfigError(f"checks file {path!r}: timeout_seconds must be in (0, 60] and cache_seconds in (0, 3600]")
    if not config.checks:
        raise ConfigError(f"checks file {path!r}: no [[checks]]")
    seen: set[str] = set()
    for c in config.checks:
        if not _NAME.fullmatch(c.name) or c.name in seen or c.name == "integrity":
            raise ConfigError(f"checks file {path!r}: check name {c.name!r} is not a new lower_snake_case name")
        if not _NAME.fullmatch(c.recommendation) or not c.recommendation.startswith("rollback_"):
            raise ConfigError(f"checks file {path!r}: {c.name}: recommendation must look like rollback_error_rate")
        if not math.isfinite(c.threshold) or not c.query.strip():
            raise ConfigError(f"checks file {path!r}: {c.name}: needs a query and a finite threshold")
        seen.add(c.name)
    return config


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _result(c: Check, status: Literal["ok", "failed", "unknown"], detail: str, value: float | None) -> CheckResult:
    return CheckResult(
        name=c.name,
        status=status,
        recommendation={"ok": "proceed", "failed": c.recommendation}.get(status, UNKNOWN_RECOMMENDATION),
        detail=detail,
        value=value,
        comparison=c.comparison,
        threshold=c.threshold,
        query=c.query,
        checked_at=_now_iso(),
    )


def unknown_results(config: ChecksConfig, why: str) -> list[CheckResult]:
    return [_result(c, "unknown", why, None) for c in config.checks]


class _Query:
    """One instant query over HTTP; :meth:`abort` (from another thread) ends it at once."""

    def __init__(self, prom: Prometheus, query: str) -> None:
        import http.client

        url = urllib.parse.urlsplit(prom.url)
        params = urllib.parse.urlencode({"query": query, "timeout": f"{prom.timeout_seconds:g}s"})
        self.target = f"{url.path.rstrip('/')}/api/v1/query?{params}"
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(url.hostname or "", url.port, timeout=prom.timeout_seconds)
        self._lock = threading.Lock()

    def run(self) -> Any:
        try:
            self.conn.request("GET", self.target, headers={"Accept": "application/json"})
            resp = self.conn.getresponse()
            body = resp.read(MAX_ANSWER + 1)
        finally:
            self.abort()
        if len(body) > MAX_ANSWER:
            raise ValueError("the answer is too large")
        if resp.status != 200:  # whatever the body says: an error page is not a measurement
            raise ValueError(f"Prometheus answered HTTP {resp.status}")
        answer = msgspec.json.decode(body)
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ValueError(f"Prometheus answered HTTP {resp.status}: {error or 'no result'}")
        return answer.get("data")

    def abort(self) -> None:
        with self._lock:
            sock = self.conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
            self.conn.close()


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:Inf|inf)|NaN", re.ASCII)
"""A sample value as Prometheus writes it (a JSON string): no underscores, no other spellings."""
MAX_SAMPLE_AGE = 300.0
"""A sample stamped this many seconds before (or after) the query is not a current measurement."""


def _sample(pair: Any, now: float) -> float:
    """One ``[unix_time, "value"]`` pair, strictly: a string value, a current timestamp."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise ValueError("a sample is not a [time, value] pair")
    when, value = pair
    if isinstance(when, bool) or not isinstance(when, (int, float)) or abs(now - when) > MAX_SAMPLE_AGE:
        raise ValueError(f"a sample is stamped {when!r}, not now")
    if not isinstance(value, str) or not _NUMBER.fullmatch(value):
        raise ValueError(f"a sample value {value!r} is not a Prometheus number")
    return float(value)


def _samples(data: Any, now: float | None = None) -> list[float]:
    """The numbers of an instant-query answer (vector or scalar); raise ValueError for anything else."""
    now = time.time() if now is None else now
    if not isinstance(data, dict):
        raise ValueError("no data")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return [_sample(result, now)]
    if kind == "vector" and isinstance(result, list):
        return [_sample(s.get("value") if isinstance(s, dict) else None, now) for s in result]
    raise ValueError(f"the query returns a {kind}, not an instant vector or scalar")


def _judge(c: Check, data: Any) -> CheckResult:
    try:
        values = _samples(data)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        return _result(c, "unknown", f"unusable answer: {exc}", None)
    if not values:
        return _result(c, "unknown", "no data (the query returned an empty result)", None)
    if not all(math.isfinite(v) for v in values):
        return _result(c, "unknown", "the query returned NaN or an infinite value", None)
    passes = _COMPARE[c.comparison]
    worst = max(values) if c.comparison.startswith("<") else min(values)
    if all(passes(v, c.threshold) for v in values):
        return _result(c, "ok", f"{worst:g} {c.comparison} {c.threshold:g}", worst)
    return _result(c, "failed", f"{worst:g} is not {c.comparison} {c.threshold:g}", worst)


def evaluate(config: ChecksConfig) -> list[CheckResult]:
    """Run every check at once; each is unknown if its answer is not in within the timeout."""
    prom = config.prometheus
    queries = [_Query(prom, c.query) for c in config.checks]
    pool = ThreadPoolExecutor(max_workers=min(len(queries), 8), thread_name_prefix="duri-integrity-prom")
    try:
        futures = [pool.submit(q.run) for q in queries]
        wait_futures(futures, timeout=prom.timeout_seconds)
        results = []
        for c, q, f in zip(config.checks, queries, futures, strict=True):
            if not f.done() or isinstance(f.exception(), TimeoutError):
                q.abort()  # the socket timeout bounds each read; this bounds the whole answer
                results.append(
                    _result(c, "unknown", f"Prometheus did not answer within {prom.timeout_seconds:g} s", None)
                )
            elif (exc := f.exception()) is not None:
                results.append(_result(c, "unknown", f"Prometheus query failed: {_describe(exc)}", None))
            else:
                results.append(_judge(c, f.result()))
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def make_cached_checks(config: ChecksConfig) -> SharedResult[list[CheckResult]]:
    """The checks' results, shared by every request for ``cache_seconds``."""
    prom = config.prometheus
    return SharedResult(
        lambda: evaluate(config),
        ttl=prom.cache_seconds,
        deadline=prom.timeout_seconds + 1,
        unavailable=lambda why: unknown_results(config, why),
    )
