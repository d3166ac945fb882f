"""The services' own HTTP ports (``/metrics`` and ``/healthz`` of every service, served
by ``bind_http``) take a burst of connections without a second's wait.

``ThreadingHTTPServer`` listens with socketserver's backlog of 5: when more clients
connect at once than the accept thread has taken (Prometheus scraping while the
kubelet's probes and a load balancer's checks arrive), the kernel drops their SYNs and
each client waits for its retransmission, 1 s later (then 3 s, 7 s). Against the
projector's /healthz, 16 clients at once: half waited >= 1 s (p50 1010 ms, p90 1223 ms);
at 64 some were reset. The check here is the queue itself, not a timing: with the
server not accepting at all, how many connections the kernel completes at once."""

from __future__ import annotations

import selectors
import socket
import time
from http.server import BaseHTTPRequestHandler

from jetsource.core.metrics import bind_http

BURST = 64


def _completed_without_accept(port: int, wait_s: float = 0.5) -> int:
    """Connections to ``port`` the kernel completes (handshake done, in the accept
    queue) while nothing accepts them; SYNs beyond the listen backlog are dropped and
    their connects stay pending until a retransmission, 1 s later at the earliest."""
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        for _ in range(BURST):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            selector.register(s, selectors.EVENT_WRITE, s)
            sockets.append(s)
        done: set[socket.socket] = set()
        end = time.monotonic() + wait_s
        while len(done) < BURST and (left := end - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                s = key.data
                selector.unregister(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.add(s)
        return len(done)
    finally:
        selector.close()
        for s in sockets:
            s.close()


def test_a_burst_of_connections_is_queued_not_dropped() -> None:
    server = bind_http("/metrics", "127.0.0.1", 0, BaseHTTPRequestHandler)
    try:
        # Listening, not serving: every connection must wait in the accept queue.
        assert _completed_without_accept(server.server_address[1]) == BURST
    finally:
        server.server_close()


def test_the_listen_backlog_is_the_systems_not_socketservers() -> None:
    server = bind_http("/metrics", "127.0.0.1", 0, BaseHTTPRequestHandler)
    try:
        assert server.request_queue_size >= 128
    finally:
        server.server_close()
