"""The projector against real NATS, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf.message import Message

from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.graph_model import GraphModel
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.serialize import state_to_dict
from jetsource.domains.context.valkey_models import ContextModel, TimelineModel
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import expected_state, projection_of, seed, story_ids

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique, models=MODELS) as p:
        yield p


async def build(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(p.nc, p.store, p.model(name, version), p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    return worker


async def test_models_follow_the_stream_and_redelivery_changes_nothing(
    projection: Projection,
) -> None:
    stories = story_ids(12)
    histories = await seed(projection.store, stories, 40)
    total = 12 * 40
    digests = {}
    for name in MODELS:
        worker = await build(projection, name)
        assert worker.stats.applied == total, name
        checkpoint = await worker.model.checkpoint()
        assert checkpoint.applied == total
        digests[name] = await worker.model.digest()

    context = projection.model("context", 1)
    assert isinstance(context, ContextModel)
    for story in stories:
        doc = await context.read(story)
        assert doc is not None
        assert doc["state"] == state_to_dict(expected_state(story, histories[story]))
        assert doc["applied"] == 40
    timeline = projection.model("timeline", 1)
    assert isinstance(timeline, TimelineModel)
    entries = await timeline.read(stories[0], limit=100)
    assert [e["version"] for e in entries] == list(range(40, 0, -1))
    graph = projection.model("graph", 1)
    assert isinstance(graph, GraphModel)
    hood = await graph.neighbourhood(stories[0])
    state = expected_state(stories[0], histories[stories[0]])
    assert hood["story"]["version"] == 40
    has = [e for e in hood["edges"] if e[0] in ("HAS_DECISION", "HAS_SUBTASK")]
    assert len(has) == len(state.decisions) + len(state.subtasks)
    depends = [e for e in hood["edges"] if e[0] == "DEPENDS_ON"]
    assert len(depends) == len(state.dependencies)

    # Every event again, from a fresh consumer: all duplicates, nothing changes.
    for name in MODELS:
        spec = projection.model(name, 1).spec
        await jsapi.delete_consumer(
            projection.store._replies, projection.store.settings.stream, spec.durable, 5
        )
        worker = await build(projection, name)
        assert worker.stats.applied == 0, name
        assert worker.stats.duplicates == total, name
        assert await worker.model.digest() == digests[name], name


class FlakyContext(ContextModel):
    """The context model with a handler that refuses some events until fixed."""

    poison: set[int] = set()  # noqa: RUF012 (set per instance by the test)
    fixed = False

    async def apply(self, events):  # type: ignore[no-untyped-def]
        from jetsource.projection.contract import Outcome

        if self.fixed:
            return await super().apply(events)
        refused = Outcome()
        kept = []
        for e in events:
            if e.stream_seq in self.poison:
                refused.failed[e.stream_seq] = "handler bug: cannot project this"
            else:
                kept.append(e)
        outcome = await super().apply(kept)
        outcome.merge(refused)
        return outcome


async def test_poison_goes_to_dead_letters_and_retry_applies_it_once(
    projection: Projection,
) -> None:
    from jetsource.projection import admin

    p = projection
    o = p.settings.projector
    flaky = FlakyContext(
        p.model("context", 1).spec, p.redis, o.valkey_prefix, p.store, o.state_cache_size
    )
    p.extra_models["context"] = lambda version: flaky
    stories = story_ids(3)
    histories = await seed(p.store, stories, 10)
    # A message that is not an envelope at all, on a story of its own.
    await p.nc.jetstream().publish(f"{p.store.settings.subject_prefix}.junk.DecisionAdded", b"\xff")
    # The handler refuses s0001's 4th event: its 5th..10th must wait behind it.
    s1 = await p.store.read_aggregate("s0001")
    flaky.poison = {s1[3].stream_seq}

    worker = await build(p, "context")
    letters = await admin.dlq_list(p, "context")
    by_story: dict[str, list[str]] = {}
    for letter in letters:
        by_story.setdefault(letter.aggregate_id, []).append(letter.reason)
    assert set(by_story) == {"junk", "s0001"}, letters
    assert by_story["junk"] == [by_story["junk"][0]]
    assert by_story["junk"][0].startswith("undecodable")
    assert by_story["s0001"][0] == "handler bug: cannot project this"
    assert all(r.startswith("parked behind") for r in by_story["s0001"][1:])
    assert len(by_story["s0001"]) == 7  # the refused event and the six after it
    assert next(d.tries for d in letters if d.aggregate_id == "s0001") == o.max_deliver
    # Everybody else went on.
    assert await flaky.position("s0000") == 10
    assert await flaky.position("s0002") == 10
    assert await flaky.position("s0001") == 3
    assert worker.stats.dead_letters == 8

    # New events of the parked story queue up behind it, in order.
    more = {"s0001": await seed_more(p, "s0001", histories["s0001"], 12)}
    await build(p, "context")
    assert len(await admin.dlq_list(p, "context", "s0001")) == 9

    # Still broken: retry fails and keeps everything.
    report = await admin.dlq_retry(p, "context", "s0001")
    assert not report.done and len(report.failed) == 9
    flaky.fixed = True
    report = await admin.dlq_retry(p, "context", "s0001")
    assert len(report.done) == 9 and not report.failed
    doc = await flaky.read("s0001")
    assert doc is not None
    assert doc["state"] == state_to_dict(expected_state("s0001", more["s0001"]))
    assert doc["applied"] == 12
    assert (await flaky.checkpoint()).applied == 32

    # The undecodable one stays undecodable; discarding steps past it.
    report = await admin.dlq_retry(p, "context", "junk")
    assert next(iter(report.failed.values())).startswith("still undecodable")
    report = await admin.dlq_discard(p, "context", "junk")
    assert len(report.done) == 1
    assert await admin.dlq_list(p, "context") == []
    # The live worker sees the story unparked and goes on with new events.
    await seed_more(p, "s0001", more["s0001"], 15)
    await build(p, "context")
    assert await flaky.position("s0001") == 15


async def seed_more(p: Projection, story: str, history: list[Message], upto: int) -> list[Message]:
    """Extend a seeded story (same generator, same seed) to ``upto`` events."""
    full = story_events(story, upto)
    assert full[: len(history)] == history
    for i in range(len(history), upto):
        await p.store.append(story, [NewEvent(full[i])], i)
    return full


async def test_replay_reapplies_only_the_slice(projection: Projection) -> None:
    from jetsource.projection import admin

    p = projection
    stories = story_ids(4)
    for story in stories:  # one after the other: each story's events are contiguous
        await seed(p.store, [story], 20)
    for name in MODELS:
        await build(p, name)
    clean = {name: await p.model(name, 1).digest() for name in MODELS}
    context = p.model("context", 1)
    assert isinstance(context, ContextModel)
    ns = context.ns

    async def corrupt(story: str) -> None:
        # The story's hash (the document's shell and its nodes) replaced by junk.
        await p.redis.delete(f"{ns}:doc:{story}")
        await p.redis.hset(f"{ns}:doc:{story}", "broken", "true")

    async def broken(story: str) -> bool:
        return bool(await p.redis.hget(f"{ns}:doc:{story}", "broken") == b"true")

    for story in stories:
        await corrupt(story)
    report = await admin.replay(p, "context", aggregate_id="s0000")
    assert (report.events, report.reapplied, report.aggregates) == (20, 20, 1)
    assert [await broken(s) for s in stories] == [False, True, True, True]

    # A sequence range inside s0001 (its events are 21..40): only s0001 is touched;
    # its later events are carried forward so the model ends where it was.
    report = await admin.replay(p, "context", from_seq=25, to_seq=30)
    assert (report.events, report.reapplied, report.aggregates) == (6, 6, 1)
    assert report.carried_forward == 10
    assert [await broken(s) for s in stories] == [False, False, True, True]

    # A time range: s0002's events only.
    s2 = await p.store.read_aggregate("s0002")
    report = await admin.replay(
        p, "context", from_time=s2[0].recorded_at_ns, to_time=s2[-1].recorded_at_ns
    )
    assert report.aggregates == 1 and report.events == 20
    assert [await broken(s) for s in stories] == [False, False, False, True]
    await admin.replay(p, "context", aggregate_id="s0003")
    assert await context.digest() == clean["context"]

    # The timeline and the graph re-apply a slice the same way and end unchanged.
    graph = p.model("graph", 1)
    assert isinstance(graph, GraphModel)
    before = await graph.dump()
    for name in ("timeline", "graph"):
        report = await admin.replay(p, name, from_seq=5, to_seq=65)
        if name == "graph":
            after = set(map(repr, await graph.dump()))
            assert sorted(after ^ set(map(repr, before))) == []
        assert report.events == 61 and report.reapplied == 61, name
        assert await p.model(name, 1).digest() == clean[name], name


async def test_rebuild_and_cutover_under_live_traffic(projection: Projection) -> None:
    import asyncio

    from jetsource.projection import admin
    from jetsource.projection.host import ProjectorService

    p = projection
    p.settings.projector.models = ["context"]
    p.settings.projector.control_poll_s = 0.2
    stories = story_ids(8)
    histories = await seed(p.store, stories, 30)
    service = ProjectorService(p)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    traffic_stop = asyncio.Event()
    lengths = dict.fromkeys(stories, 30)

    async def traffic() -> None:
        n = 0
        while not traffic_stop.is_set():
            story = stories[n % len(stories)]
            histories[story] = await seed_more(p, story, histories[story], lengths[story] + 1)
            lengths[story] += 1
            n += 1
            await asyncio.sleep(0.002)

    reads = {"ok": 0, "missing": 0}
    versions: set[int] = set()

    async def reader() -> None:
        while not traffic_stop.is_set():
            control = await p.control.get("context")
            if control is not None:
                model = p.model("context", control.active)
                assert isinstance(model, ContextModel)
                for story in stories:
                    doc = await model.read(story)
                    reads["ok" if doc and doc["state"]["exists"] else "missing"] += 1
                versions.add(control.active)
            await asyncio.sleep(0.005)

    try:
        for _ in range(400):
            if (await p.model("context", 1).checkpoint()).applied >= 8 * 30:
                break
            await asyncio.sleep(0.05)
        writers = [asyncio.create_task(traffic()), asyncio.create_task(reader())]
        report = await admin.rebuild(p, "context", 2)
        assert report.applied >= 8 * 30
        await asyncio.sleep(0.5)  # the service picks v2 up
        result = await admin.cutover(p, "context", 2)
        assert (result["previous"], result["active"]) == (1, 2)
        await asyncio.sleep(0.3)
        traffic_stop.set()
        await asyncio.gather(*writers)
        total = sum(lengths.values())
        for version in (1, 2):
            model = p.model("context", version)
            for _ in range(200):
                if (await model.checkpoint()).applied == total:
                    break
                await asyncio.sleep(0.05)
        assert reads["missing"] == 0 and reads["ok"] > 0
        assert versions == {1, 2}
        v1, v2 = p.model("context", 1), p.model("context", 2)
        assert (await v2.checkpoint()).applied == total
        assert await v1.digest() == await v2.digest()
        # A clean build after the traffic equals both.
        await admin.rebuild(p, "context", 3)
        assert await p.model("context", 3).digest() == await v2.digest()
        # The old version goes on request; the service stops its worker.
        assert await admin.drop(p, "context", 1) > 0
        with pytest.raises(admin.AdminError, match="active"):
            await admin.drop(p, "context", 2)
        await asyncio.sleep(0.5)
        assert set(service.workers) == {("context", 2), ("context", 3)}
    finally:
        stop.set()
        await running
        for v in (2, 3):
            await p.model("context", v).drop()


async def test_graph_content_does_not_depend_on_batching(projection: Projection) -> None:
    """A subtask update that changes nothing (the same status and progress again)
    still names the subtask: whether it shares a batch with the change before it or
    not, the node ends with the same properties, sequence included. (A fault run with
    redelivery once batched differently from the clean rebuild and the graphs
    differed in exactly this.)"""
    from jetsource._gen.context.v1 import events_pb2 as ev

    doing = ev.SUBTASK_STATUS_IN_PROGRESS
    events: list[Message] = [
        ev.ContextCreated(title="batching"),
        ev.SubtaskAdded(subtask_id="t1", title="one"),
        ev.SubtaskUpdated(subtask_id="t1", status=doing, progress=10),
        ev.DecisionAdded(decision_id="d1", title="d", affects=["t1"]),
        ev.SubtaskUpdated(subtask_id="t1", status=doing, progress=10),
    ]
    story = "batching-story"
    for e in events:
        await projection.store.append(story, [NewEvent(e)], ANY)
    records = await projection.store.read_aggregate(story)
    together, apart = projection.model("graph", 1), projection.model("graph", 2)
    assert isinstance(together, GraphModel) and isinstance(apart, GraphModel)
    try:
        await together.apply(records[:3])
        await together.apply(records[3:])
        for r in records:
            await apart.apply([r])
        assert await together.dump() == await apart.dump()
        node = next(row for kind, row in await apart.dump() if kind == "Subtask")
        assert dict(node[1])["seq"] == records[-1].stream_seq
    finally:
        await apart.drop()
