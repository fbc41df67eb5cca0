"""The status app mounted under a prefix in real frameworks behind real servers (Flask/werkzeug, Starlette/uvicorn)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from duri_integrity.asgi import make_asgi_app
from duri_integrity.server import CachedVerification, StatusService, make_wsgi_app

from .conftest import Signed
from .test_server import TOKEN, free_port, request, wait_for_port


@pytest.fixture
def service(signed: Signed) -> StatusService:
    """The documented recipe: verification in a child process, the token, no service checks."""
    status = CachedVerification.of_tree(
        str(signed.root), ttl=60, deadline=60, public_keys=[str(signed.keys.public)], state_dir="none"
    )
    return StatusService(status, TOKEN)


def _check_mounted(port: int) -> None:
    code, v, _ = request(port, "/integrity/canary_check")
    assert code == 200 and v["canary_ok"] is True and v["release"] == "v1.0.0"
    code, h, _ = request(port, "/integrity/dashboard/health_summary")
    assert code == 200 and h["overall_health"] == "healthy"
    assert request(port, "/integrity/healthz")[0] == 200
    assert request(port, "/integrity/canary_check", token=None)[0] == 401
    assert request(port, "/integrity/canary_check", token="wrong-token-0123456789")[0] == 403
    code, body, headers = request(port, "/integrity/canary_check", method="HEAD")
    assert code == 200 and body is None and int(headers["Content-Length"]) > 0
    assert request(port, "/integrity/nope")[0] == 404
    assert request(port, "/canary_check")[0] == 404  # only under the prefix
    code, body, _ = request(port, "/", token=None)
    assert code == 200 and body == b"the service itself"


@pytest.fixture
def flask_port(service: StatusService) -> Iterator[int]:
    """A Flask app with the status app mounted at /integrity, served by werkzeug's threaded server."""
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.serving import make_server

    app = Flask("myservice")
    app.add_url_rule("/", "index", lambda: "the service itself")
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/integrity": make_wsgi_app(service)})  # type: ignore[method-assign]  # Flask's documented way to mount an app
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()
    thread.join(10)


def test_mounted_in_flask(flask_port: int) -> None:
    """Under Flask's DispatcherMiddleware at /integrity: every route, the token, HEAD, and the app's own routes."""
    _check_mounted(flask_port)


class Uvicorn:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for_port(self.port)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def test_mounted_in_starlette_under_uvicorn(service: StatusService) -> None:
    """Under Starlette's Mount("/integrity") served by uvicorn: the same answers as the WSGI app."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def index(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the service itself")

    app = Starlette(routes=[Route("/", index), Mount("/integrity", app=make_asgi_app(service))])
    server = Uvicorn(app)
    try:
        _check_mounted(server.port)
    finally:
        server.close()


def test_asgi_app_alone_under_uvicorn(service: StatusService) -> None:
    """The ASGI app at the top level of uvicorn (lifespan included); a slow verification does not block the loop."""
    server = Uvicorn(make_asgi_app(service))
    try:
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(request(server.port, "/canary_check")[0])) for _ in range(8)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        assert request(server.port, "/nope", timeout=10)[0] == 404  # answered while the first run is in flight
        for t in threads:
            t.join(60)
        assert results == [200] * 8 and time.monotonic() - t0 < 60
        code, v, _ = request(server.port, "/canary_check")
        assert code == 200 and v["canary_ok"] is True
    finally:
        server.close()
