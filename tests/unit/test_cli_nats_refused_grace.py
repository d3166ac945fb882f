"""fix10c2: since 11578ab an admin command ended at the first pass where every NATS
server refused the connection. A NATS pod that restarts refuses connections for a few
seconds, and the archive compact and sessions prune CronJobs and the Helm admin Job
(backoffLimit 0) waited that out before; they failed at once. A refused connection is
now tried again for 1.5 s when stdin is a terminal (a person typed the command) and for
the whole connect wait otherwise; ``JETSOURCE_ADMIN_REFUSED_WAIT_S`` sets it. And a
refused ``localhost`` on a dual-stack host (asyncio's plain OSError "Multiple
exceptions: [Errno 111] ..., [Errno 111] ...") was not taken for a refusal."""

from __future__ import annotations

import asyncio
import io
import math
import socket
import time
from typing import Any

import pytest

from jetsource.cli import streams
from jetsource.cli.streams import NatsUnreachableError, refused_connection, wait_for_nats
from tests.unit.test_cli_nats_refused_fast import closed_port


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_refused_wait_is_short_for_a_person_and_whole_for_a_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", raising=False)
    monkeypatch.setattr("sys.stdin", _Tty())
    assert streams.refused_wait_s() == 1.5
    monkeypatch.setattr("sys.stdin", io.StringIO())  # a CronJob, a pipe: not a terminal
    assert streams.refused_wait_s() == math.inf
    monkeypatch.setattr("sys.stdin", None)
    assert streams.refused_wait_s() == math.inf
    monkeypatch.setenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", "4")
    assert streams.refused_wait_s() == 4.0


def _refused_for(url: str, deadline_s: float) -> tuple[float, NatsUnreachableError]:
    async def go() -> NatsUnreachableError:
        loop = asyncio.get_running_loop()
        with pytest.raises(NatsUnreachableError) as caught:
            await wait_for_nats(url, loop.time() + deadline_s, refused_ends=True)
        return caught.value

    started = time.monotonic()
    exc = asyncio.run(go())
    return time.monotonic() - started, exc


def test_a_job_waits_out_refusals_and_a_person_gets_a_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", raising=False)
    url = f"nats://127.0.0.1:{closed_port()}"
    monkeypatch.setattr("sys.stdin", io.StringIO())
    took, exc = _refused_for(url, 2.5)
    assert exc.refused and took > 1.9, took  # was at once (one pass)
    monkeypatch.setattr("sys.stdin", _Tty())
    took, exc = _refused_for(url, 10.0)
    assert exc.refused and 1.0 < took < 2.0, took  # tried again, not 10 s


def test_a_dual_stack_localhost_that_refuses_is_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer's probe: ::1 and 127.0.0.1, both refusing; it waited out the whole
    deadline (4 s) and said it as no answer rather than as a refusal."""
    port = closed_port()
    real = socket.getaddrinfo

    def both(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "dualhost":
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    monkeypatch.setenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", "0.3")
    took, exc = _refused_for(f"nats://dualhost:{port}", 4.0)
    assert exc.refused, exc
    assert took < 2.0, took
    assert "Multiple exceptions" in str(exc)


def test_a_localhost_whose_ipv6_is_not_routable_and_ipv4_refuses_is_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dual-stack ``localhost`` where ::1 cannot be reached (IPv6 off: EADDRNOTAVAIL
    or ENETUNREACH, said at once) and 127.0.0.1 refuses: nothing listens, but it was
    taken for no answer (the whole deadline waited, said as a silent server). Here the
    unroutable address is ff02::1 (ENETUNREACH at once)."""
    port = closed_port()
    real = socket.getaddrinfo

    def both(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "dualhost":
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("ff02::1", port, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", both)
    monkeypatch.setenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", "0.3")
    took, exc = _refused_for(f"nats://dualhost:{port}", 3.0)
    assert "Multiple exceptions" in str(exc), exc
    assert exc.refused, exc
    assert took < 1.5, took


def test_a_refusal_is_each_address_refusing_or_not_routable() -> None:
    v6, v4 = "Connect call failed ('::1', 4222, 0, 0)", "Connect call failed ('127.0.0.1', 4222)"
    both = f"[Errno 111] {v6}, [Errno 111] {v4}"
    assert refused_connection(OSError(f"Multiple exceptions: {both}"))
    assert refused_connection(ConnectionRefusedError(111, "refused"))
    # A dual-stack localhost with IPv6 off: ::1 not routable, 127.0.0.1 refuses.
    for code in (99, 101):  # EADDRNOTAVAIL, ENETUNREACH
        v6_off = f"[Errno {code}] {v6}, [Errno 111] {v4}"
        assert refused_connection(OSError(f"Multiple exceptions: {v6_off}"))
    at_once = f"[Errno 99] Cannot assign requested address, [Errno 111] {v4}"
    assert refused_connection(OSError(f"Multiple exceptions: {at_once}"))
    none_refused = f"[Errno 101] {v6}, [Errno 99] {v4}"
    assert not refused_connection(OSError(f"Multiple exceptions: {none_refused}"))
    one_no_route = f"[Errno 113] {v6}, [Errno 111] {v4}"
    assert not refused_connection(OSError(f"Multiple exceptions: {one_no_route}"))
    assert not refused_connection(
        OSError("Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0), timed out")
    )
    assert not refused_connection(OSError(113, "No route to host"))
    assert not refused_connection(TimeoutError())


def test_the_refused_grace_is_tried_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop gave up when the next pause would reach the grace's end: the documented
    1.5 s was 1.2 s (tries at 0, 0.1, 0.3, 0.7, 1.2 s). It sleeps up to the end now and
    tries once more there."""
    monkeypatch.setenv("JETSOURCE_ADMIN_REFUSED_WAIT_S", "1.5")
    took, exc = _refused_for(f"nats://127.0.0.1:{closed_port()}", 10.0)
    assert exc.refused and 1.45 < took < 2.0, took
