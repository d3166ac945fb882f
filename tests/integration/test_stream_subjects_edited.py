"""An event stream whose subjects were edited away from the store's (it exists, it
just takes nothing of ours) was reported as "does not exist"; it is now named as
such, with its subjects, and `streams ensure` (``ensure_streams``) puts them back.
A stream really gone still says it does not exist."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.errors import StreamMissingError
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore, _covers
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration


async def test_edited_subjects_are_named_and_ensure_puts_them_back(
    nats_server: Server, unique: str
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    cfg = isolated_settings(unique, retry_attempts=1)
    store = JetStreamEventStore(nc, registry, cfg)
    await store.ensure_streams()
    try:
        await store.append("s1", [NewEvent(ev.DecisionAdded(decision_id="d1"), event_id="e1")], 0)
        info = await js.stream_info(cfg.stream)
        edited = info.config
        edited.subjects = [f"elsewhere{unique}.>"]
        await js.update_stream(edited)
        new = [NewEvent(ev.DecisionAdded(decision_id="d2"), event_id="e2")]
        with pytest.raises(StreamMissingError) as err:
            await store.append("s1", new, 1)
        message = str(err.value)
        assert f"stream {cfg.stream} exists but does not take" in message, message
        assert f"elsewhere{unique}.>" in message and "jetsource streams ensure" in message

        await store.ensure_streams()  # what `jetsource streams ensure` does
        await store.append("s1", new, 1)
        assert [e.version for e in await store.read_aggregate("s1")] == [1, 2]

        await js.delete_stream(cfg.stream)
        with pytest.raises(StreamMissingError, match="does not exist"):
            await store.append("s1", [NewEvent(ev.DecisionAdded(decision_id="d3"))], 2)
    finally:
        await store.close()
        await nc.close()


async def test_allow_direct_off_is_named_and_one_info_answers_an_outage(
    nats_server: Server, unique: str
) -> None:
    """A stream that still takes the store's subjects (plus others) but answers no
    direct gets was called "exists but does not take this store's subjects"; it is
    named as allow_direct off. And the failing reads of one outage share one STREAM.INFO
    (single-flight, kept for a second) instead of adding one each."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    cfg = isolated_settings(unique, retry_attempts=1)
    store = JetStreamEventStore(nc, registry, cfg)
    await store.ensure_streams()
    asked: list[str] = []

    async def heard(msg: Msg) -> None:
        asked.append(msg.subject)

    watch = await nc.subscribe(f"$JS.API.STREAM.INFO.{cfg.stream}", cb=heard)
    try:
        await store.append("s1", [NewEvent(ev.DecisionAdded(decision_id="d1"), event_id="e1")], 0)
        edited = (await js.stream_info(cfg.stream)).config
        edited.subjects = [*(edited.subjects or []), f"more{unique}.>"]
        edited.allow_direct = False
        await js.update_stream(edited)
        await nc.flush()
        asked.clear()
        results = await asyncio.gather(
            *(store.read_aggregate(f"s{i % 2}") for i in range(6)), return_exceptions=True
        )
        for r in results:
            assert isinstance(r, StreamMissingError), r
            assert "allow_direct is false" in str(r) and "does not take" not in str(r), r
        await nc.flush()
        assert len(asked) == 1, asked
    finally:
        await watch.unsubscribe()
        await store.close()
        await nc.close()


@pytest.mark.parametrize(
    ("pattern", "covers"),
    [
        ("ce.events.>", True),
        ("ce.*.>", True),
        (">", True),
        ("ce.>", True),
        ("ce.events.*", False),
        ("ce.events", False),
        ("ce.other.>", False),
        ("ce.events.x.>", False),
    ],
)
def test_which_stream_subjects_take_the_stores(pattern: str, covers: bool) -> None:
    assert _covers(pattern, "ce.events") is covers
