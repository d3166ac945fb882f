"""The key store of personal data refusing a new subject's key (its bucket at its
limits with discard new) or gone (its stream deleted under a running publisher): the
append fails with the store's named errors (UNAVAILABLE to a client) naming the
bucket, not a raw JetStream error (INTERNAL) or a bare timeout (DEADLINE_EXCEEDED
after the request timeout, on every append); nothing is stored, and the append with
the same ids is stored once when the bucket takes writes again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import StreamMissingError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.keys import JetStreamKeyStore
from jetsource.eventstore.refusals import JetStreamRefusedError
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration


@pytest.fixture
async def keyed_store(
    nats_server: Server, unique: str
) -> AsyncIterator[tuple[NATS, JetStreamEventStore, JetStreamKeyStore]]:
    nc = await nats.connect(nats_server.url)
    keys = JetStreamKeyStore(nc, f"KEYS_{unique}", timeout_s=0.5)
    store = JetStreamEventStore(nc, registry, isolated_settings(unique), keys=keys)
    await store.ensure_streams()
    yield nc, store, keys
    await store.close()
    for stream in (keys.stream, store.settings.stream):
        with contextlib.suppress(Exception):  # deleted by the test
            await nc.jetstream().delete_stream(stream)
    await nc.drain()


def _decision(n: int, author: str) -> NewEvent:
    return NewEvent(ev.DecisionAdded(decision_id=f"d{n}", author=author), event_id=f"e-{n}")


async def test_a_full_key_bucket_is_named_and_the_append_resent_is_stored_once(
    keyed_store: tuple[NATS, JetStreamEventStore, JetStreamKeyStore],
) -> None:
    nc, store, keys = keyed_store
    js = nc.jetstream()
    await store.append("s1", [_decision(1, "alice")], 0)
    info = await js.stream_info(keys.stream)
    cfg = info.config
    cfg.max_msgs, cfg.discard = info.state.messages, DiscardPolicy.NEW
    await js.update_stream(cfg)
    with pytest.raises(JetStreamRefusedError) as err:
        await store.append("s1", [_decision(2, "bob")], 1)  # bob: a new key
    assert err.value.stream == keys.stream and err.value.err_code == 10077
    assert to_rpc_error(err.value).code.name == "UNAVAILABLE"
    assert [e.version for e in await store.read_aggregate("s1")] == [1]

    cfg.max_msgs = -1
    await js.update_stream(cfg)
    first = await store.append("s1", [_decision(2, "bob")], 1)
    again = await store.append("s1", [_decision(2, "bob")], 1)
    assert not first.duplicate and again.duplicate
    stored = await store.read_aggregate("s1")
    assert [(e.version, e.event.author) for e in stored] == [(1, "alice"), (2, "bob")]  # type: ignore[union-attr]


async def test_a_deleted_key_bucket_is_named_at_once_after_the_first_wait(
    keyed_store: tuple[NATS, JetStreamEventStore, JetStreamKeyStore],
) -> None:
    nc, store, keys = keyed_store
    await store.append("s1", [_decision(1, "alice")], 0)
    await nc.jetstream().delete_stream(keys.stream)
    for n, author in enumerate(("bob", "carol", "dave"), start=2):
        started = time.monotonic()
        with pytest.raises(StreamMissingError) as err:
            await store.append("s1", [_decision(n, author)], 1)
        took = time.monotonic() - started
        assert f"bucket {keys.bucket}, is gone" in str(err.value), err.value
        assert to_rpc_error(err.value).code.name == "UNAVAILABLE"
        if n > 2:  # known gone: asked first, not a timeout each time
            assert took < 0.4, took
    assert [e.version for e in await store.read_aggregate("s1")] == [1]
