"""The HTTP server behind ``duri-integrity serve``: waitress, with limits that hold under abuse.

waitress reads and writes every connection in one event loop and hands only
complete requests to a fixed pool of threads, so an idle or trickling client
costs a socket, never a thread. On top of its limits this module adds two:

* connections that send nothing stay in the kernel (Linux ``TCP_DEFER_ACCEPT``)
  and cost no descriptor;
* at the connection limit, the oldest connections with no request being
  served (never-used ones first) are closed to make room, so a flood of idle
  connections cannot lock legitimate clients out (waitress alone stops
  accepting until its idle timeout, 120 s by default, frees a slot); and it
  accepts a batch per wake-up, so a queue of a thousand drains in a few loops;
* a request must arrive whole within ``request_timeout`` of its first byte,
  so a client trickling bytes cannot hold a connection for ever.
"""

from __future__ import annotations

import contextlib
import importlib
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["StatusHTTPServer", "make_http_server"]

DEFER_ACCEPT = 10
"""Seconds the kernel holds a connection that has sent nothing before handing it to us (Linux TCP_DEFER_ACCEPT)."""
FD_HEADROOM = 64
"""Descriptors kept free for the listeners, the trigger pipe, the verification child and Prometheus."""


def _whole_request_waiting(channel: Any) -> bool:
    """True when a complete request head sits unread in the kernel for this connection: a client
    that is about to be served (just accepted, not yet read), never one to evict for a flood's sake."""
    try:
        data = channel.socket.recv(16384, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # nothing waiting (EAGAIN), or the peer is gone
        return False
    return b"\r\n\r\n" in data


def _evictable(channels: list[Any], channel_class: type[Any]) -> list[Any]:
    """Connections with no request being served, never-used ones first, then the longest idle."""
    idle = [ch for ch in channels if isinstance(ch, channel_class) and ch.idle() and not _whole_request_waiting(ch)]
    idle.sort(key=lambda ch: (ch.used, ch.last_activity))
    return idle


def _drop_slow(channels: list[Any], cutoff: float) -> None:
    """Close connections whose request began before ``cutoff`` and is still not whole."""
    for ch in channels:
        if ch.request_started is not None and ch.request_started < cutoff and not ch.requests:
            ch.will_close = True  # a request trickled in too slowly: drop the connection


def _classes() -> tuple[type[Any], type[Any]]:
    """The waitress channel and server classes with eviction and the request timeout.

    Built on first use, so waitress is imported only by ``serve``.
    """
    # Imported by name: waitress ships no type information (and typeshed's stubs lag its internals).
    channel = _channel_class(importlib.import_module("waitress.channel").HTTPChannel)
    return channel, _server_class(importlib.import_module("waitress.server").TcpWSGIServer, channel)


def _channel_class(HTTPChannel: Any) -> type[Any]:
    """waitress's channel, remembering when a request began and whether one ever completed."""

    class Channel(HTTPChannel):  # type: ignore[misc]
        request_started: float | None = None
        """When the first byte of the request still being received arrived (monotonic)."""
        used = False
        """Whether a whole request ever arrived on this connection."""

        def received(self, data: bytes) -> bool:
            if self.request is None and data:
                self.request_started = time.monotonic()
            result: bool = super().received(data)
            if self.requests:
                self.used = True
            if self.request is None:
                self.request_started = None
            return result

        def idle(self) -> bool:
            return not (self.requests or self.total_outbufs_len or self.will_close or self.close_when_flushed)

    return Channel


def _server_class(TcpWSGIServer: Any, Channel: type[Any]) -> type[Any]:
    """waitress's server with batched accepts, eviction at the connection limit and the request timeout."""

    class Server(TcpWSGIServer):  # type: ignore[misc]
        channel_class = Channel
        request_timeout = 10.0
        evicted = 0

        def readable(self) -> bool:
            if self.accepting and len(self._map) >= self.adj.connection_limit:
                self._evict()
            result: bool = super().readable()
            return result

        def handle_accept(self) -> None:
            """Accept a batch per wake-up (waitress takes one): a queue of 1,000 drains in 40 loops, not 1,000."""
            for _ in range(max(1, self.adj.connection_limit // 8)):
                if len(self._map) >= self.adj.connection_limit:
                    self._evict()
                try:
                    accepted = self.accept()
                    if accepted is None:  # nothing more waiting
                        return
                    conn, addr = accepted
                    self.set_socket_options(conn)
                except OSError:  # the peer went away before we got to it
                    continue
                self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

        def _evict(self) -> None:
            """Close the oldest idle connections (never-used first) to free an eighth of the slots."""
            # With TCP_DEFER_ACCEPT a connection reaches us with its first bytes already there, so even the
            # newest idle one is not a client whose request is still on its way.
            for ch in _evictable(list(self._map.values()), Channel)[: max(1, self.adj.connection_limit // 8)]:
                ch.handle_close()
                self.evicted += 1

        def maintenance(self, now: float) -> None:
            super().maintenance(now)
            _drop_slow(list(self.active_channels.values()), time.monotonic() - self.request_timeout)

    return Server


class StatusHTTPServer:
    """One or more listening sockets (``localhost`` gives two), one event loop, a fixed thread pool."""

    def __init__(self, servers: list[Any], socket_map: dict[int, Any], dispatcher: Any) -> None:
        self._servers = servers
        self._map = socket_map
        self._dispatcher = dispatcher
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.addresses: list[tuple[str, int]] = [(s.effective_host, int(s.effective_port)) for s in servers]

    @property
    def evicted(self) -> int:
        """Connections closed to make room, since start."""
        return sum(int(s.evicted) for s in self._servers)

    def run(self) -> None:
        """Serve until :meth:`shutdown` (or KeyboardInterrupt)."""
        wasyncore: Any = importlib.import_module("waitress.wasyncore")

        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=0.5, map=self._map, use_poll=True, count=1)
        finally:
            self._close()
            self._stopped.set()

    def shutdown(self, timeout: float = 10) -> None:
        """Stop :meth:`run` (from another thread) and wait for it."""
        self._stop.set()
        if self._servers:
            with contextlib.suppress(OSError):  # the loop has already stopped and closed its trigger
                self._servers[0].pull_trigger()
        self._stopped.wait(timeout)

    def _close(self) -> None:
        for obj in list(self._map.values()):
            with contextlib.suppress(OSError):
                obj.close()
        self._dispatcher.shutdown(timeout=5)


def make_http_server(
    app: Callable[..., Any],
    host: str,
    port: int,
    *,
    threads: int = 4,
    connection_limit: int = 200,
    request_timeout: float = 10.0,
    idle_timeout: float = 30.0,
) -> StatusHTTPServer:
    """Listen on HOST:PORT (every address HOST resolves to); raise OSError if it cannot.

    The connection limit is capped below this process's descriptor limit, so
    accept() never fails for want of descriptors.
    """
    Adjustments: Any = importlib.import_module("waitress.adjustments").Adjustments
    ThreadedTaskDispatcher: Any = importlib.import_module("waitress.task").ThreadedTaskDispatcher

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        connection_limit = max(8, min(connection_limit, soft - FD_HEADROOM))
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    adj = Adjustments(
        listen=listen,
        threads=threads,
        connection_limit=connection_limit,
        channel_timeout=idle_timeout,
        cleanup_interval=1,
        max_request_header_size=8192,
        max_request_body_size=4096,
        backlog=2048,
        asyncore_use_poll=True,
        ident="duri-integrity",
        expose_tracebacks=False,
    )
    _, server_class = _classes()
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    socket_map: dict[int, Any] = {}
    servers: list[Any] = []
    try:
        for sockinfo in adj.listen:
            server = server_class(app, socket_map, dispatcher=dispatcher, adj=adj, sockinfo=sockinfo)
            server.request_timeout = request_timeout
            if hasattr(socket, "TCP_DEFER_ACCEPT"):
                # Connections that send nothing stay in the kernel, costing us no descriptor.
                server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
            servers.append(server)
    except BaseException:
        for obj in list(socket_map.values()):
            obj.close()
        dispatcher.shutdown(timeout=1)
        raise
    return StatusHTTPServer(servers, socket_map, dispatcher)
