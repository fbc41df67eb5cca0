"""The status endpoint as an ASGI application, for FastAPI, Starlette or any asyncio ASGI server.

The routes, token and answers are those of :class:`~duri_integrity.server.StatusService`.
Answering may wait for a verification (up to its deadline), so it runs in the
event loop's default executor and never blocks the loop. Mount it under a
prefix (``Mount("/integrity", app=make_asgi_app(...))``): the prefix, given as
``root_path``, is removed from the path before routing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .server import StatusService

__all__ = ["make_asgi_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _route_path(scope: Scope) -> str:
    """The path below the mount point (Starlette keeps the full path and sets root_path)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def make_asgi_app(service: StatusService) -> ASGIApp:
    """An ASGI 3 application serving the status routes of ``service`` (HTTP only)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # mounted at the top level of a server: nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise RuntimeError(f"duri-integrity status app: unsupported ASGI scope {scope['type']!r}")
        authorization = ""
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        loop = asyncio.get_running_loop()
        code, headers, body = await loop.run_in_executor(
            None, service.respond, scope.get("method", "GET"), _route_path(scope), authorization
        )
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
