"""The status endpoint: routes, bearer token and the WSGI application.

Every route needs ``Authorization: Bearer TOKEN``. ``/canary_check`` and the
``/dashboard/*`` routes answer **200 with a JSON verdict whatever it says** (a
gate piping ``curl -f`` into ``jq -e`` must see a body to fail on; jq 1.6 passes
an empty input); only ``/healthz`` uses 503, for load balancers. The same
:class:`StatusService` backs the WSGI app here and the ASGI app in
:mod:`duri_integrity.asgi`; :mod:`duri_integrity.httpserver` serves it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError
from .report import Report
from .watchdog import KILL_GRACE, ChildVerification, SharedResult, unverified_report

__all__ = [
    "ROUTES",
    "CachedVerification",
    "StatusService",
    "load_token",
    "make_server",
    "make_wsgi_app",
]

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Response = tuple[int, list[tuple[str, str]], bytes]
TOKEN_OPTION = "--token-file"  # noqa: S105 - names, not secrets
TOKEN_FILE_ENV = "DURI_INTEGRITY_STATUS_TOKEN_FILE"  # noqa: S105
TOKEN_ENV = "DURI_INTEGRITY_STATUS_TOKEN"  # noqa: S105
CANARY_TOKEN_ENV = "CANARY_TOKEN"  # noqa: S105 - the rollout plan's variable
MIN_TOKEN = 16
ROUTES = (
    "/canary_check",
    "/dashboard/integrity_details",
    "/dashboard/canary_overview",
    "/dashboard/health_summary",
    "/integrity_details",
    "/healthz",
)
_REASONS = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[503] = "Service Unavailable"


class CachedVerification(SharedResult[Report]):
    """The verification result, shared by every request; see :class:`~duri_integrity.watchdog.SharedResult`.

    ``verify`` is any callable returning a :class:`Report`; it runs in a thread
    that cannot be killed, so prefer :meth:`of_tree`, which verifies in a child
    process killed at the deadline.
    """

    def __init__(
        self, verify: Callable[[], Report], ttl: float, *, deadline: float = 60, root: str = ".", grace: float = 0.0
    ) -> None:
        super().__init__(verify, ttl=ttl, deadline=deadline, unavailable=self._stale, grace=grace)
        self.root = root
        self._child: ChildVerification | None = None

    def _stale(self, why: str) -> Report:
        last, age = self.peek()
        if last is not None:
            why += f"; the last result ({last.status}, checked at {last.checked_at}, {age:.0f} s ago) is out of date"
        return unverified_report(self.root, why)

    @classmethod
    def of_tree(
        cls, root: str | None, *, ttl: float = 60, deadline: float = 60, **options: object
    ) -> CachedVerification:
        """Verify ``root`` with :func:`verify_integrity`'s ``options`` in a child process."""
        child = ChildVerification(root, deadline, list(options.items()))
        cached = cls(child, ttl, deadline=deadline, root=child.root, grace=KILL_GRACE)
        cached._child = child
        return cached

    def stop(self) -> None:
        """Kill a verification child in flight (of_tree only); for shutting down."""
        if self._child is not None:
            self._child.stop()


def load_token(token: str | None = None, token_file: str | None = None, config_token_file: str | None = None) -> str:
    """The bearer token, from the first source that is set.

    Order: ``token``, ``token_file`` (the --token-file option), then the
    environment: DURI_INTEGRITY_STATUS_TOKEN_FILE, DURI_INTEGRITY_STATUS_TOKEN,
    CANARY_TOKEN, then the config file's ``token_file``. A file gives its first line, and
    must be writable by its owner only (this user or root).
    """
    env = os.environ
    sources: list[tuple[str, str | None, bool]] = [
        ("the token argument", token, False),
        (TOKEN_OPTION, token_file, True),
        (TOKEN_FILE_ENV, env.get(TOKEN_FILE_ENV), True),
        (TOKEN_ENV, env.get(TOKEN_ENV), False),
        (CANARY_TOKEN_ENV, env.get(CANARY_TOKEN_ENV), False),
        ("the config file's token_file", config_token_file, True),
    ]
    for name, value, is_file in sources:
        if not value:
            continue
        if is_file:
            from .files import UnreadableFile, UnsafeLocation, read_file

            try:
                # Whoever could rewrite the token file could choose the token: only its owner (or root) may.
                raw = read_file(value, 4096, "token file", private=True)
            except (UnreadableFile, UnsafeLocation) as exc:
                raise ConfigError(f"{exc} (from {name})") from None
            found = raw.decode("utf-8", "replace").partition("\n")[0].strip()
        else:
            found = value.strip()
        if len(found) < MIN_TOKEN:
            raise ConfigError(f"the bearer token from {name} is shorter than {MIN_TOKEN} characters")
        return found
    raise ConfigError(
        f"the status endpoint needs a bearer token of {MIN_TOKEN} characters or more: give {TOKEN_OPTION} FILE, "
        f"or set {TOKEN_FILE_ENV}, {TOKEN_ENV} or {CANARY_TOKEN_ENV}, or token_file in the config file"
    )


class StatusService:
    """Answers the routes: the integrity result, the service checks (optional) and the token."""

    def __init__(self, integrity: CachedVerification, token: str, checks: Any = None) -> None:
        if len(token) < MIN_TOKEN:
            raise ConfigError(f"the bearer token is shorter than {MIN_TOKEN} characters")
        self.integrity = integrity
        self.checks = checks
        """A :class:`~duri_integrity.promcheck.CachedChecks`, or None when no service checks are configured."""
        self._token = token.encode()

    def respond(self, method: str, path: str, authorization: str) -> Response:
        """Status, headers and body for one request (the body is empty for HEAD)."""
        return _head(method, self._route(method, path, authorization))

    def _route(self, method: str, path: str, authorization: str) -> Response:
        if path not in ROUTES:
            return _json(404, {"error": "not found"})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method not allowed"}, [("Allow", "GET, HEAD")])
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _json(
                401, {"error": "bearer token required"}, [("WWW-Authenticate", 'Bearer realm="duri-integrity"')]
            )
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token):
            return _json(403, {"error": "wrong token"})
        return self._answer(path)

    def _answer(self, path: str) -> Response:
        from . import canary

        report = self.integrity.get()
        if path in ("/integrity_details", "/dashboard/integrity_details"):
            return 200, _HEADERS, report.to_json().encode()
        if path == "/healthz":
            body = {
                "status": report.status,
                "integrity_verified": report.integrity_verified,
                "checked_at": report.checked_at,
            }
            return _json(200 if report.integrity_verified else 503, body)
        results = self.checks.get() if self.checks is not None else None
        verdict = canary.canary_verdict(report, results)
        if path == "/canary_check":
            return _json(200, verdict)
        if path == "/dashboard/canary_overview":
            return _json(200, canary.canary_overview(verdict))
        return _json(200, canary.health_summary(verdict))


_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]


def _json(code: int, body: object, extra: list[tuple[str, str]] | None = None) -> Response:
    import msgspec

    return code, [*_HEADERS, *(extra or [])], msgspec.json.encode(body)


def _head(method: str, response: Response) -> Response:
    """HEAD: the GET answer's status and headers (Content-Length included), no body."""
    code, headers, body = response
    headers = [*headers, ("Content-Length", str(len(body)))]
    return code, headers, b"" if method == "HEAD" else body


def status_line(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Error')}"


def make_wsgi_app(status: CachedVerification | StatusService, token: str | None = None, checks: Any = None) -> WSGIApp:
    """A WSGI application for the routes; mount it under any prefix (PATH_INFO is what follows it)."""
    service = status if isinstance(status, StatusService) else StatusService(status, token or "", checks)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        code, headers, body = service.respond(
            environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""), environ.get("HTTP_AUTHORIZATION", "")
        )
        start_response(status_line(code), headers)
        return [body]

    return app


def make_server(app: WSGIApp, host: str, port: int, **limits: Any) -> Any:
    """A waitress server for ``app`` on HOST:PORT (see :mod:`duri_integrity.httpserver`)."""
    from .httpserver import make_http_server

    return make_http_server(app, host, port, **limits)
