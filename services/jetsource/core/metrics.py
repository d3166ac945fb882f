"""Metrics every service process exports about itself: what it is (build info) and
whether its NATS connection is up.

Each entrypoint calls :func:`register_service` once (``jetsource_build_info`` = 1 for its
name and the package version) and :func:`watch_nats` with its NATS client
(``jetsource_nats_connected`` = 1 while connected). The connection state follows
nats-py's disconnected / reconnected / closed callbacks (chained after any the client
already has) and is also polled, so a missed callback is corrected within ``poll_s``.

Metrics of one service are defined where that service's code is, and only modules a
service imports register theirs: a module imported by several services must not define
metrics at import time (see ``jetsource.domains.context.snapshots_model``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from jetsource import __version__
from jetsource.core.errors import ListenError

log = logging.getLogger("jetsource.metrics")

BUILD_INFO = Gauge(
    "jetsource_build_info",
    "Always 1: the jetsource version this service process runs",
    ["version", "service"],
)
NATS_CONNECTED = Gauge(
    "jetsource_nats_connected",
    "1 while the service's NATS connection is up, 0 while it is down or reconnecting",
    ["service"],
)

Callback = Callable[[], Awaitable[None]]


def register_service(service: str, version: str = __version__) -> None:
    """Export ``jetsource_build_info{version,service} 1`` for this process."""
    BUILD_INFO.labels(version, service).set(1)


def set_nats_connected(service: str, connected: bool) -> None:
    NATS_CONNECTED.labels(service).set(1 if connected else 0)


def _chain(nc: Any, attribute: str, service: str, connected: bool) -> bool:
    """Run our update after the client's own callback ``attribute`` (nats-py keeps them
    as ``_disconnected_cb`` etc.). False when this client has no such attribute."""
    if not hasattr(nc, attribute):
        return False
    previous: Callback | None = getattr(nc, attribute)

    async def callback() -> None:
        set_nats_connected(service, connected)
        if previous is not None:
            await previous()

    setattr(nc, attribute, callback)
    return True


def watch_nats(nc: Any, service: str, poll_s: float = 5.0) -> asyncio.Task[None]:
    """Keep ``jetsource_nats_connected{service}`` in step with ``nc`` (a connected nats-py
    client). Returns the polling task; cancel it (or let the loop end) to stop."""
    set_nats_connected(service, bool(nc.is_connected))
    hooked = all(
        [
            _chain(nc, "_disconnected_cb", service, False),
            _chain(nc, "_reconnected_cb", service, True),
            _chain(nc, "_closed_cb", service, False),
        ]
    )
    if not hooked:
        log.debug("nats client has no connection callbacks to chain; polling only")

    async def poll() -> None:
        while True:
            with contextlib.suppress(Exception):
                set_nats_connected(service, bool(nc.is_connected))
            await asyncio.sleep(poll_s)

    return asyncio.create_task(poll(), name=f"{service}-nats-connected")


class _HTTPServer(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of more connections than the
    # accept thread had taken (a scrape, the kubelet's probes, a balancer's checks at
    # once) had the kernel drop their SYNs, and each of those clients waited for its
    # retransmission, 1 s later (16 at once: half answered after >= 1 s). Now the
    # system's limit (net.core.somaxconn), as grpc's servers have (uvicorn: 2048).
    request_queue_size = socket.SOMAXCONN


def bind_http(
    what: str,
    host: str,
    port: int,
    handler: type[BaseHTTPRequestHandler],
    setting: str | None = None,
) -> ThreadingHTTPServer:
    """A threading HTTP server on ``host:port``, or :class:`ListenError` naming what
    could not listen where (a port in use, an address not this host's) and
    ``setting``, the environment variable that moves the port."""
    try:
        return _HTTPServer((host, port), handler)
    except OSError as exc:
        raise ListenError(what, f"{host}:{port}", exc.strerror or str(exc), setting) from exc


def bind_socket(what: str, host: str, port: int, setting: str | None = None) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet: an asyncio server, e.g.
    uvicorn's, listens on it), or :class:`ListenError` as :func:`bind_http`.

    The protocol is named (IPPROTO_TCP, not 0): asyncio turns Nagle's algorithm off
    only on accepted sockets whose ``proto`` says TCP, and with it on every answer
    written in two parts (headers, then body) waited about 40 ms for the client's
    delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(what, f"{host}:{port}", exc.strerror or str(exc), setting) from exc
    return sock


def start_metrics_server(
    port: int,
    host: str,
    healthy: Callable[[], bool] = lambda: True,
    setting: str | None = None,
) -> ThreadingHTTPServer:
    """``/metrics`` (Prometheus) and ``/healthz`` (200 ``ok`` / 503 ``unhealthy`` from
    ``healthy()``, read from this thread, never awaiting the loop) on one port, served
    from a thread of their own. prometheus_client's own server answered every path,
    ``/healthz`` included, with the metrics page. A port in use is a
    :class:`ListenError` naming ``setting`` (e.g. ``JETSOURCE_QUERY__METRICS_PORT``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # The paths of the projector's and the ingest's HTTP ports, with their
            # meanings; any other path is 404. Every path used to be the metrics page,
            # 200: a probe at /readyz (health on those ports) passed through an outage.
            path = self.path.split("?", 1)[0]
            content_type = "text/plain; charset=utf-8"
            if path in ("/healthz", "/readyz"):
                ok = _safe(healthy)
                body = b"ok\n" if ok else b"unhealthy\n"
                self.send_response(200 if ok else 503)
            elif path == "/livez":  # the process answers
                body = b"ok\n"
                self.send_response(200)
            elif path in ("/metrics", "/"):
                body = generate_latest(REGISTRY)
                self.send_response(200)
                content_type = CONTENT_TYPE_LATEST
            else:
                body = b"not found: /metrics, /healthz, /readyz, /livez\n"
                self.send_response(404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = bind_http("/metrics", host, port, Handler, setting)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _safe(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False
