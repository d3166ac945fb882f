"""Poison in the event stream, a projector that converges after a crash, and the
idempotency key winning over the expected version: against real NATS, Valkey and
the graph store.

Poison is what someone with publish rights on the stream can put there: random
bytes, an empty message, a valid envelope of the wrong shape (a version that breaks
the story's chain), a well-formed event the domain refuses. Each must be named
(CorruptEventError / DATA_LOSS with its sequence), dead-lettered once by every model
within its retry budget, and made harmless by ``repair void`` without deleting
anything; afterwards every read model equals a clean rebuild.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context import model as m
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.history import StateLoader
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph", "snapshots")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=3))
    yield p
    for name in MODELS:
        for version in (1, 2) if name != "snapshots" else (1,):
            await p.model(name, version).drop()
    await p.close()


async def raw_publish(p: Projection, subject: str, data: bytes) -> int:
    """A publish as a hostile client with publish rights would make it (no checks)."""
    ack = await jsapi.publish(p.store._replies, OutMessage(subject, data, {}), 5.0)
    return ack.seq


async def run_until_caught_up(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    return worker


async def test_poison_is_named_dead_lettered_once_and_voided(projection: Projection) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    await seed(p.store, ["healthy", "tail"], 6)
    poison = {
        "random": await raw_publish(p, f"{prefix}.random.ContextCreated", os.urandom(64)),
        "empty": await raw_publish(p, f"{prefix}.empty.ContextCreated", b""),
        # A valid envelope whose payload is another message, claiming version 7.
        "foreign": await raw_publish(
            p,
            f"{prefix}.foreign.ContextCreated",
            EventEnvelope(
                aggregate_version=7,
                schema_version=1,
                payload=ev.DecisionAdded(decision_id="x").SerializeToString(),
            ).SerializeToString(),
        ),
        # After six good events, an envelope naming another story.
        "tail": await raw_publish(
            p,
            f"{prefix}.tail.DecisionAdded",
            EventEnvelope(
                aggregate_id="elsewhere", aggregate_version=7, schema_version=1
            ).SerializeToString(),
        ),
    }
    await seed(p.store, ["after"], 3)  # other stories flow on

    # Every reader names the sequence; commands too.
    handler = CommandHandler(p.store, loader=StateLoader(p.store, p.snapshots))
    for story, seq in poison.items():
        with pytest.raises(CorruptEventError) as caught:
            await p.store.read_aggregate(story)
        assert caught.value.stream_seq == seq, story
        with pytest.raises(CorruptEventError):
            await handler.execute(
                story, m.AddDecision("d9", "t", "", "", "", []), CommandOptions(f"k-{story}")
            )
    assert len(await p.store.read_aggregate("healthy")) == 6

    # Each model dead-letters each poison exactly once, within its retry budget. The
    # snapshotter applies only at snapshot versions (every 100): a message that
    # decodes but breaks the chain is no business of it until a snapshot would fold
    # it, and then its loader names it like every reader.
    for name in MODELS:
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        expected = [s for k, s in poison.items() if name != "snapshots" or k != "foreign"]
        assert sorted(d.original_seq for d in letters) == sorted(expected), name
        assert worker.stats.dead_letters == len(expected), name
    # `projector status` shows them too (what `dlq list` lists is the list above).
    from jetsource.projection import admin

    for name in ("context", "timeline", "graph"):
        await p.control.ensure(name, 1)
    rows = {r["model"]: r for r in await admin.status(p) if r.get("version") == 1}
    for name in ("context", "timeline", "graph"):
        assert rows[name]["dead_letters"] == len(poison), rows[name]

    # Repair: void each; nothing is deleted, every reader steps over it.
    last_seq_before = int((await p.store.stream_info())["state"]["last_seq"])
    for story, seq in poison.items():
        report = await void_sequence(p, seq, "poison from a test", "tester")
        assert report.aggregate_id == story
        assert not report.voided_before
        assert all(not e["failed"] for e in report.models.values()), report.models
        again = await void_sequence(p, seq, "twice", "tester")
        assert again.voided_before
    assert await p.dead_letters.list() == []
    info = await p.store.stream_info()
    assert int(info["state"]["messages"]) == last_seq_before + len(poison)  # voids added

    for story in ("random", "empty", "foreign"):
        assert await p.store.read_aggregate(story) == []
        # The story is commandable again: created as version 1.
        result = await handler.execute(
            story, m.CreateContext("again", "", "tester", []), CommandOptions(f"c-{story}")
        )
        assert result.last_version == 1
    assert [e.version for e in await p.store.read_aggregate("tail")] == [1, 2, 3, 4, 5, 6]
    result = await handler.execute(
        "tail", m.AddDecision("d99", "after repair", "", "", "", []), CommandOptions("t-1")
    )
    assert result.last_version == 7

    # The live models take the new events; each equals a clean rebuild (the snapshots
    # model's version is the state schema, so it has no second version to compare).
    for name in MODELS:
        live = await run_until_caught_up(p, name)
        assert await p.dead_letters.list(live.spec) == []
        if name == "snapshots":
            continue
        clean = await run_until_caught_up(p, name, 2)
        assert clean.stats.dead_letters == 0, name
        assert await live.model.digest() == await clean.model.digest(), name


async def test_an_event_the_domain_refuses_is_named_and_voided_at_its_place(
    projection: Projection,
) -> None:
    p = projection
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    # A second ContextCreated: well formed, version 2, refused by the domain.
    bad = await p.store.append("story", [NewEvent(ev.ContextCreated(title="again"))], 1)
    loader = StateLoader(p.store, p.snapshots)
    with pytest.raises(CorruptEventError) as caught:
        await loader.load("story")
    assert caught.value.stream_seq == bad.stream_seqs[0]
    for name in ("context", "graph"):
        await run_until_caught_up(p, name)
    await void_sequence(p, bad.stream_seqs[0], "duplicate creation", "tester")
    point = await loader.load("story")
    assert point.state.version == 2  # the voided event keeps its place, as a no-op
    assert point.state.title == "t"
    await p.store.append("story", [NewEvent(ev.DecisionAdded(decision_id="d1", title="x"))], 2)
    for name in ("context", "graph"):
        live = await run_until_caught_up(p, name)
        clean = await run_until_caught_up(p, name, 2)
        assert await live.model.digest() == await clean.model.digest(), name


async def test_a_crashed_consumers_unacked_events_do_not_hold_a_hot_story_back(
    settings: JetsourceSettings, unique: str
) -> None:
    """Kill -9 leaves a batch delivered and never acked: it comes back only after the
    ack wait (60 s here). The story's later events must not wait for it: the worker
    reads the missing versions from the stream and converges within seconds."""
    p = await open_projection(projector_settings(settings, unique, ack_wait_s=60.0))
    try:
        await seed(p.store, ["hot"], 800, batch=4)
        await seed(p.store, story_ids(20, "bg"), 10)
        total = 800 + 200
        for name in ("context", "timeline", "graph"):
            worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
            await worker.ensure_consumer()
            crashed = jsapi.PullConsumer(p.nc, p.store.settings.stream, worker.spec.durable, 300)
            taken: list[jsapi.Delivery] = []
            while len(taken) < 300:
                taken += await crashed.next_batch(300 - len(taken), 5.0)
            await crashed.stop()  # never acked: as if the process died here
            task = asyncio.create_task(worker.run())
            started = time.monotonic()
            try:
                while (await worker.model.checkpoint()).applied < total:
                    assert time.monotonic() - started < 20, f"{name} did not converge"
                    await asyncio.sleep(0.2)
            finally:
                worker.stop()
                await task
            assert (await worker.model.checkpoint()).applied == total, name
            assert worker.stats.filled >= 1, name
    finally:
        for name in ("context", "timeline", "graph"):
            await p.model(name, 1).drop()
        await p.close()


async def test_a_repeated_key_returns_its_result_whatever_the_expected_version(
    projection: Projection,
) -> None:
    """A reply lost to a deadline, then a retry with the same key and expected
    version through a publisher whose cache predates the first attempt."""
    p = projection
    first = CommandHandler(p.store)
    retrying = CommandHandler(p.store)
    await first.execute("s", m.CreateContext("t", "", "a", []), CommandOptions("c"))
    await retrying.load("s")  # its cache: version 1
    options = CommandOptions("k-1", expected_version=1)
    original = await first.execute("s", m.AddDecision("d1", "t", "", "", "", []), options)
    assert original.last_version == 2
    again = await retrying.execute("s", m.AddDecision("d1", "t", "", "", "", []), options)
    assert again.duplicate
    assert (again.versions, again.stream_seqs) == (original.versions, original.stream_seqs)
    assert await p.store.last_version("s") == 2


async def test_a_discarded_dead_letter_is_stepped_over_by_a_rebuild(
    projection: Projection,
) -> None:
    """#18: a rebuild sat retrying an event already discarded in the previous version.
    A discard is remembered for the model: every later version steps over it by rule,
    files no dead letter and equals the version it was discarded from."""
    from jetsource.projection import admin

    p = projection
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="again"))], 1)
    await p.store.append("other", [NewEvent(ev.ContextCreated(title="o"))], NO_STREAM)
    await p.control.ensure("context", 1)
    await run_until_caught_up(p, "context")
    letters = await p.dead_letters.list(p.spec("context", 1))
    assert len(letters) == 1
    report = await admin.dlq_discard(p, "context", dlq_seqs=[letters[0].dlq_seq])
    assert report.done == [letters[0].dlq_seq]
    await p.store.append("story", [NewEvent(ev.DecisionAdded(decision_id="d1", title="x"))], 2)
    await run_until_caught_up(p, "context")

    rebuilt = await admin.rebuild(p, "context", 2)
    assert rebuilt.applied == 4  # the discarded event counts as stepped over, at its place
    assert await p.dead_letters.list(p.spec("context", 2)) == []
    assert await p.model("context", 2).digest() == await p.model("context", 1).digest()
