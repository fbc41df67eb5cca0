"""A small, dependency-free status endpoint for dashboards (WSGI).

``GET /integrity_details`` returns the last verification report as JSON;
``GET /healthz`` answers 200 when the tree is verified and 503 otherwise. Both
require ``Authorization: Bearer TOKEN``. Verification results are cached for a
TTL and refreshed in the background, and concurrent requests share one run, so
a dashboard polling the endpoint cannot overload the host.
"""

import hmac
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError
from .report import Report

__all__ = ["CachedVerification", "load_token", "make_server", "make_wsgi_app"]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
TOKEN_ENV = "DURI_INTEGRITY_STATUS_TOKEN"  # noqa: S105 - the variable's name, not a secret
TOKEN_FILE_ENV = "DURI_INTEGRITY_STATUS_TOKEN_FILE"  # noqa: S105


class CachedVerification:
    """One verification shared by every caller; at most one run per TTL.

    The first caller runs it (others wait for that run); once the result is older
    than the TTL, callers keep getting it while one background thread refreshes it.
    """

    def __init__(self, verify: Callable[[], Report], ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._verify = verify
        self.ttl = ttl
        self._cond = threading.Condition()
        self._report: Report | None = None
        self._at = 0.0
        self._running = False
        self.runs = 0

    def _run(self) -> None:
        report = None
        try:
            report = self._verify()
        finally:
            with self._cond:
                if report is not None:
                    self._report, self._at = report, time.monotonic()
                    self.runs += 1
                self._running = False
                self._cond.notify_all()

    def get(self) -> Report:
        with self._cond:
            while True:
                if self._report is not None:
                    if time.monotonic() - self._at >= self.ttl and not self._running:
                        self._running = True  # stale: keep serving it while one thread refreshes
                        threading.Thread(target=self._run, name="duri-integrity-refresh", daemon=True).start()
                    return self._report
                if not self._running:
                    self._running = True  # the very first run: this caller does it, the others wait
                    break
                self._cond.wait()
        self._run()
        with self._cond:
            if self._report is None:
                raise RuntimeError("verification produced no report")
            return self._report


def load_token(token: str | None = None, token_file: str | None = None) -> str:
    """The bearer token: given, from DURI_INTEGRITY_STATUS_TOKEN, or from a file (first line)."""
    token = token or os.environ.get(TOKEN_ENV)
    token_file = token_file or os.environ.get(TOKEN_FILE_ENV)
    if not token and token_file:
        from .files import UnreadableFile, read_file

        try:
            raw = read_file(token_file, 4096, "token file")
        except UnreadableFile as exc:
            raise ConfigError(str(exc)) from None
        token = raw.decode("utf-8", "replace").partition("\n")[0].strip()
    if not token or len(token) < 16:
        raise ConfigError(
            f"the status endpoint needs a bearer token of 16 characters or more ({TOKEN_ENV} or {TOKEN_FILE_ENV})"
        )
    return token


def _json(start_response: StartResponse, status: str, body: bytes, extra: list[tuple[str, str]] = []) -> list[bytes]:  # noqa: B006
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Cache-Control", "no-store"),
            ("Content-Length", str(len(body))),
            *extra,
        ],
    )
    return [body]


def make_wsgi_app(status: CachedVerification, token: str) -> WSGIApp:
    """A WSGI application serving /integrity_details and /healthz behind a bearer token."""
    import msgspec

    expected = token.encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if path not in ("/integrity_details", "/healthz"):
            return _json(start_response, "404 Not Found", b'{"error":"not found"}')
        if method not in ("GET", "HEAD"):
            return _json(
                start_response, "405 Method Not Allowed", b'{"error":"method not allowed"}', [("Allow", "GET, HEAD")]
            )
        auth = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return _json(
                start_response,
                "401 Unauthorized",
                b'{"error":"bearer token required"}',
                [("WWW-Authenticate", 'Bearer realm="duri-integrity"')],
            )
        if not hmac.compare_digest(given.strip().encode(), expected):
            return _json(start_response, "403 Forbidden", b'{"error":"wrong token"}')
        report = status.get()
        if path == "/healthz":
            body = msgspec.json.encode(
                {
                    "status": report.status,
                    "integrity_verified": report.integrity_verified,
                    "checked_at": report.checked_at,
                }
            )
            return _json(start_response, "200 OK" if report.integrity_verified else "503 Service Unavailable", body)
        return _json(start_response, "200 OK", report.to_json().encode())

    return app


def make_server(app: WSGIApp, host: str, port: int) -> Any:
    """A threaded wsgiref server that logs requests through logging, not stderr."""
    import logging
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
    from wsgiref.simple_server import make_server as wsgiref_server

    log = logging.getLogger("duri_integrity.server")

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 128

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s - %s", self.address_string(), format % args)

    return wsgiref_server(host, port, app, server_class=Server, handler_class=Handler)
