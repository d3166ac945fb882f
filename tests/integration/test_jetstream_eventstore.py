from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import NO_STREAM
from jetsource.core.errors import ConcurrencyError, EventStoreUnavailableError, StreamMissingError
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage
from tests.contract_eventstore import EventStoreContract
from tests.eventstore_fixtures import created, decision, isolated_settings, store_pair

pytestmark = pytest.mark.integration


class TestJetStreamEventStore(EventStoreContract):
    @pytest.fixture
    async def store(self, nc: NATS, unique: str) -> AsyncIterator[JetStreamEventStore]:
        store = JetStreamEventStore(nc, registry, isolated_settings(unique))
        await store.ensure_streams()
        yield store
        await store.close()


@pytest.fixture
async def two_stores(
    nc: NATS, unique: str
) -> AsyncIterator[tuple[JetStreamEventStore, JetStreamEventStore]]:
    """Two store instances on one stream: like two publisher processes."""
    async with store_pair(nc, unique) as pair:
        yield pair


async def stored(store: JetStreamEventStore) -> int:
    return int((await store.stream_info())["state"]["messages"])


async def test_server_rejects_a_batch_from_a_stale_writer_whole(
    two_stores: tuple[JetStreamEventStore, JetStreamEventStore],
) -> None:
    a, b = two_stores
    await a.append("s", [created()], NO_STREAM)  # a caches (1, seq)
    await b.append("s", [decision(0)], 1)  # a's cache is now stale
    before = await stored(a)
    with pytest.raises(ConcurrencyError) as err:
        await a.append("s", [decision(i) for i in range(1, 6)], 1)
    assert err.value.actual == 2
    assert await stored(a) == before


async def test_retry_from_another_process_returns_the_original(
    two_stores: tuple[JetStreamEventStore, JetStreamEventStore],
) -> None:
    a, b = two_stores
    batch = [created(), *[decision(i) for i in range(4)]]
    first = await a.append("r", batch, NO_STREAM)
    again = await b.append("r", batch, NO_STREAM)  # b knows nothing: no cache
    assert (again.versions, again.stream_seqs, again.duplicate) == (
        first.versions,
        first.stream_seqs,
        True,
    )
    assert await stored(a) == 5


@pytest.mark.parametrize("size", [1, 6])
async def test_lost_ack_is_retried_and_returns_the_original(
    nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    store = JetStreamEventStore(nc, registry, isolated_settings(unique))
    await store.ensure_streams()
    await store.append("lost", [created()], NO_STREAM)
    real = store._publish
    calls = 0

    async def publish_then_lose_the_ack(messages: list[OutMessage]) -> jsapi.PubAck:
        nonlocal calls
        calls += 1
        ack = await real(messages)
        if calls == 1:
            raise TimeoutError("ack lost")  # stored on the server, but we never heard
        return ack

    monkeypatch.setattr(store, "_publish", publish_then_lose_the_ack)
    events = [decision(i) for i in range(size)]
    result = await store.append("lost", events, 1)
    assert calls == 2
    assert result.versions == list(range(2, 2 + size))
    assert [e.event_id for e in await store.read_aggregate("lost")][1:] == result.event_ids
    assert await stored(store) == 1 + size
    await store.close()


async def test_a_bounded_read_fetches_only_the_events_it_returns(
    nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JetStreamEventStore(nc, registry, isolated_settings(unique))
    await store.ensure_streams()
    await store.append("a", [created(), *[decision(i) for i in range(29)]], NO_STREAM)
    await store.append("b", [created()], NO_STREAM)
    await store.append("a", [decision(99)], 30)
    full = await store.read_aggregate("a")
    after_10 = full[9].stream_seq + 1  # like a snapshot at version 10

    async def received(**bounds: int) -> tuple[list[int], int]:
        before = nc.stats["in_msgs"]
        got = await store.read_aggregate("a", from_version=11, from_seq=after_10, **bounds)
        return [r.version for r in got], nc.stats["in_msgs"] - before

    # The events asked for and one end-of-batch status, nothing after them.
    assert await received(to_version=15) == ([11, 12, 13, 14, 15], 6)
    assert await received(to_seq=full[14].stream_seq) == ([11, 12, 13, 14, 15], 6)
    assert await received(to_version=31, to_seq=full[29].stream_seq) == (
        list(range(11, 31)),
        21,
    )
    # A range dense in the aggregate's events is read whole, another's event included
    # (an unfiltered batch: its cost on the server does not grow with the stream).
    assert await received(to_version=31, to_seq=full[30].stream_seq) == (
        list(range(11, 32)),
        23,
    )
    # Beyond the end: what there is.
    assert (await received(to_version=40))[0] == list(range(11, 32))
    # From a hint below from_version, in small pages: whole pages up to it, then exact.
    monkeypatch.setattr(jsapi, "DIRECT_GET_PAGE", 4)
    got = await store.read_aggregate("a", from_version=11, to_version=15)
    assert [r.version for r in got] == [11, 12, 13, 14, 15]
    assert [r.version for r in await store.read_aggregate("a")] == list(range(1, 32))
    await store.close()


async def test_version_at_time_counts_when_the_look_up_keeps_missing(
    nc: NATS, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JetStreamEventStore(nc, registry, isolated_settings(unique))
    await store.ensure_streams()
    await store.append("v", [created(), decision(1), decision(2)], NO_STREAM)
    events = await store.read_aggregate("v")

    async def never(*_: object) -> None:  # as if every event came just after the look
        return None

    monkeypatch.setattr(jsapi, "first_at_or_after", never)
    assert await store.version_at_time("v", events[1].recorded_at_ns) == 2
    assert await store.version_at_time("v", events[2].recorded_at_ns) == 3
    await store.close()


async def test_unknown_event_types_and_versions_decode_to_unknown(nc: NATS, unique: str) -> None:
    settings = isolated_settings(unique)
    store = JetStreamEventStore(nc, registry, settings)
    await store.ensure_streams()
    await store.append("u", [created()], NO_STREAM)
    future = EventEnvelope(
        event_id="e-future",
        event_type="SomethingNew",
        schema_version=1,
        aggregate_id="u",
        aggregate_version=2,
        payload=b"\x0a\x03abc",
    )
    newer = EventEnvelope(
        event_id="e-newer",
        event_type="ContextClosed",
        schema_version=9,
        aggregate_id="u",
        aggregate_version=3,
    )
    js = nc.jetstream()
    await js.publish(f"{settings.subject_prefix}.u.SomethingNew", future.SerializeToString())
    await js.publish(f"{settings.subject_prefix}.u.ContextClosed", newer.SerializeToString())
    events = await store.read_aggregate("u")
    assert isinstance(events[1].event, UnknownEvent)
    assert events[1].event.reason == "unknown event type"
    assert isinstance(events[2].event, UnknownEvent)
    assert "schema version 9" in events[2].event.reason
    assert await store.last_version("u") == 3
    await store.close()


async def test_stream_has_event_store_defaults(nc: NATS, unique: str) -> None:
    store = JetStreamEventStore(nc, registry, isolated_settings(unique, duplicate_window_s=30))
    info = await store.ensure_streams()
    config = info["config"]
    assert config["storage"] == "file"
    assert config["discard"] == "new"
    assert config["deny_delete"] and config["deny_purge"]
    assert config["compression"] == "s2"
    assert config["allow_direct"] and config["allow_atomic"]
    assert config["duplicate_window"] == 30_000_000_000
    # Idempotent, and a changed setting is applied to the existing stream.
    store2 = JetStreamEventStore(nc, registry, isolated_settings(unique, duplicate_window_s=60))
    info2 = await store2.ensure_streams()
    assert info2["config"]["duplicate_window"] == 60_000_000_000
    await store.close()
    await store2.close()


async def test_missing_stream_is_a_clear_error(nc: NATS, unique: str) -> None:
    store = JetStreamEventStore(nc, registry, isolated_settings(unique))
    with pytest.raises(StreamMissingError, match=f"CE_{unique}"):
        await store.append("x", [created()], NO_STREAM)
    with pytest.raises(StreamMissingError):
        await store.last_version("x")
    # A scan (the sessions reader, replays, the archive) says the same, naming the command
    # that creates it, not a bare "no responders" from the direct get.
    with pytest.raises(StreamMissingError, match="jetsource streams ensure"):
        [e async for e in store.read_all()]
    await store.close()


async def test_nats_down_is_unavailable_after_bounded_retries(tmp_path: Path) -> None:
    server = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = server.start()
    server.wait_ready(proc, 30)
    nc = await nats.connect(server.address(), max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    settings = isolated_settings("down", request_timeout_s=0.2, retry_attempts=3)
    store = JetStreamEventStore(nc, registry, settings)
    await store.ensure_streams()
    await store.append("d", [created()], NO_STREAM)
    stop_pid(proc.pid)
    started = time.monotonic()
    with pytest.raises(EventStoreUnavailableError, match="3 attempts"):
        await store.append("d", [decision(1)], 1)
    assert time.monotonic() - started < 5
    with contextlib.suppress(Exception):  # the client is still trying to reconnect
        await nc.close()
