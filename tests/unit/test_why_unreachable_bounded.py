"""After an admin command's whole wait for NATS ran out, `why_unreachable` tries each
server once more to say why (a closed port, a host that drops connection attempts). It
used a 1 s connect per server, blocking, after the documented wait: against a host that
drops SYNs, `projector status` with a 3 s budget ended at 4.4 s (review10h). Each try is
now a short one."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from jetsource.devstack.probes import WHY_TIMEOUT_S, why_unreachable


@pytest.fixture
def dropping_port() -> Iterator[int]:
    """A listening socket whose backlog is full and never accepted: the kernel drops
    further connection attempts, as a firewall's blackhole does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            c.connect(("127.0.0.1", port))
        fill.append(c)
    try:
        yield port
    finally:
        for c in fill:
            c.close()
        server.close()


def test_the_why_after_the_wait_is_a_short_try(dropping_port: int) -> None:
    started = time.monotonic()
    why = why_unreachable(f"nats://127.0.0.1:{dropping_port}")
    took = time.monotonic() - started
    assert "not reachable" in why and "timed out" in why, why
    assert WHY_TIMEOUT_S <= 0.25
    # 1.0 s per server before; a timer never fires early, so the lower bound holds.
    assert WHY_TIMEOUT_S * 0.9 <= took < 0.8, took
