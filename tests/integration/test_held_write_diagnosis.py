"""A write the stream held through every attempt (publish unacknowledged, NATS
connected) is diagnosed from STREAM.INFO (871fa1e). STREAM.INFO with no responders
(JetStream off: nats-server turns it off when its disk fills) or answering "stream not
found" says no leader is healthy: it was read as "a leader with a quorum", and the
write was DEADLINE_EXCEEDED (UnacknowledgedWriteError) with write health left alone.
A publish the call's deadline cut (_write_cut) is diagnosed by the same function: it
was DEADLINE_EXCEEDED for both.

Real nats-server. A plain core subscriber on the events subjects keeps the publish
from being answered "no responders" (nothing answers it: the ack never comes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import grpc
import nats
import pytest

from jetsource.core import deadline
from jetsource.core.errors import EventStoreUnavailableError, StreamMissingError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage
from jetsource.publisher.server import WatchedStore
from tests.eventstore_fixtures import isolated_settings

pytestmark = pytest.mark.asyncio


async def _tap(msg: Any) -> None:
    return None


async def _held_write(store: JetStreamEventStore) -> tuple[BaseException, mock.MagicMock]:
    """A publish through the store's retries that nothing acknowledges, as the
    publisher's WatchedStore answers it, and the write health it was given."""
    health = mock.MagicMock(writable=True, stream=store.settings.stream)
    health.mark = mock.AsyncMock()
    prefix = store.settings.subject_prefix
    msgs = [OutMessage(f"{prefix}.s1.DecisionAdded", b"x", {"Nats-Msg-Id": "e1"})]

    async def append(*args: Any) -> Any:
        return await store._call(lambda: store._publish(msgs))

    store.append = append  # type: ignore[method-assign,assignment]
    with pytest.raises(Exception) as failed:
        await WatchedStore(store, health).append("s1", [], 0)
    return failed.value, health


@pytest.fixture
def core_nats() -> Iterator[str]:
    """A nats-server without JetStream (as one whose disk filled turns it off)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(NatsServer.binary()), "-p", str(port), "-a", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_pid(proc.pid, 5.0)
        proc.wait(timeout=5)


async def _connect(url: str) -> Any:
    host, port = url.rsplit("/", 1)[-1].split(":")
    for _ in range(100):  # listening within 5 s
        with contextlib.suppress(OSError):
            socket.create_connection((host, int(port)), timeout=0.2).close()
            break
        await asyncio.sleep(0.05)
    return await nats.connect(url, allow_reconnect=False)


async def _cut_write(store: JetStreamEventStore) -> tuple[BaseException, mock.MagicMock]:
    """A publish nothing acknowledges, cut by a 0.6 s call deadline (``_write_cut``),
    as the publisher's WatchedStore answers it, and the write health it was given."""
    prefix = store.settings.subject_prefix
    msgs = [OutMessage(f"{prefix}.s1.DecisionAdded", b"x", {"Nats-Msg-Id": "e1"})]

    async def append(*args: Any) -> Any:
        with deadline.within(0.6):
            return await store._call(lambda: store._publish(msgs))

    store.append = append  # type: ignore[method-assign,assignment]
    health = mock.MagicMock(writable=True, stream=store.settings.stream)
    health.mark = mock.AsyncMock()
    started = time.monotonic()
    with pytest.raises(Exception) as failed:
        await WatchedStore(store, health).append("s1", [], 0)
    assert time.monotonic() - started < 0.6  # answered before the deadline
    return failed.value, health


async def _not_acknowledged(
    store: JetStreamEventStore, way: str
) -> tuple[BaseException, mock.MagicMock]:
    return await (_held_write(store) if way == "held" else _cut_write(store))


# A write held through every attempt (_held, store timeout 0.3 s) and one the call's
# deadline cut (_write_cut, 0.6 s before the store's 5 s): one diagnosis (_trouble). The
# cut write was DEADLINE_EXCEEDED 'may have been stored' for both, health left up.
WAYS = pytest.mark.parametrize(("way", "timeout_s"), [("held", 0.3), ("cut", 5.0)])


@WAYS
async def test_a_write_not_acknowledged_on_a_deleted_stream_is_stream_missing(
    nats_server: Any, way: str, timeout_s: float
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        s = isolated_settings(f"gone{way}", request_timeout_s=timeout_s, retry_attempts=2)
        store = JetStreamEventStore(nc, registry, s)
        await store.ensure_streams()
        await nc.jetstream().delete_stream(s.stream)
        await nc.subscribe(f"{s.subject_prefix}.>", cb=_tap)  # a tap, not a responder
        await nc.flush()
        exc, _health = await _not_acknowledged(store, way)
        assert isinstance(exc, StreamMissingError), repr(exc)
    finally:
        await nc.close()


@WAYS
async def test_a_write_not_acknowledged_with_jetstream_off_is_unavailable_marking_health(
    core_nats: str, way: str, timeout_s: float
) -> None:
    nc = await _connect(core_nats)
    try:
        s = isolated_settings(f"off{way}", request_timeout_s=timeout_s, retry_attempts=2)
        store = JetStreamEventStore(nc, registry, s)
        await store.start()
        await nc.subscribe(f"{s.subject_prefix}.>", cb=_tap)
        await nc.flush()
        exc, health = await _not_acknowledged(store, way)
        assert type(exc) is EventStoreUnavailableError, repr(exc)
        error = to_rpc_error(exc)
        assert error.code is grpc.StatusCode.UNAVAILABLE, error.message
        assert "JetStream does not answer" in error.message, error.message
        assert "majority" not in error.message, error.message
        assert "s1" in error.message or way == "held", error.message
        assert "stored once" in error.message, error.message
        assert health.mark.await_count >= 1, health.mark.call_args_list
    finally:
        await nc.close()
