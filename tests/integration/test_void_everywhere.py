"""A void reaches every reader, whatever the voided message is and whichever stream holds it.

- A message that reads as a valid event (a well-formed hostile publish, or one an operator
  wants gone) is applied by the read models like any other. Once voided, the stream
  readers step over it, so the models must too: the void replays the aggregate in each
  model that applied it, and a rebuild steps over it, so every model ends equal to a
  clean rebuild and to the stream's own history.
- Each domain has its own stream and stream sequences of two streams coincide: a void
  that does not say which stream's sequence it means is refused (naming ``domain``) and
  voids nothing, instead of voiding another domain's message at the same number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.errors import ValidationError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context import model as m
from jetsource.domains.context.commands import CommandHandler, CommandOptions
from jetsource.domains.context.descriptor import DOMAIN as CONTEXT_DOMAIN
from jetsource.domains.context.history import StateLoader
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique, snapshots={"every": 2}, max_deliver=3)
    )
    yield p
    await p.model("snapshots", 1).drop()
    for name in MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


async def caught_up(
    p: Projection, name: str, version: int = 1, worker: Worker | None = None
) -> Worker:
    """The model run to the stream's head, as the projector runs it (its control entry,
    which says the model is in use and which version is active, made first); ``worker``
    runs again, with what its model keeps in memory, as a long-running projector's."""
    await p.control.ensure(name, 1)
    if worker is None:
        model = p.model(name, version)
        worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, p.settings.projector)
    await worker.run(until_caught_up=True)
    return worker


async def test_a_voided_event_the_models_had_applied_is_gone_from_them_and_from_a_rebuild(
    projection: Projection,
) -> None:
    p = projection
    await seed(p.store, ["calm"], 4)
    await p.store.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    await p.store.append("story", [NewEvent(ev.DecisionAdded(decision_id="d1", title="keep"))], 1)
    # Well formed, at its place, accepted by every model: voided afterwards.
    wrong = await p.store.append(
        "story", [NewEvent(ev.DecisionAdded(decision_id="d2", title="mistake"))], 2
    )
    await p.store.append("story", [NewEvent(ev.DecisionAdded(decision_id="d3", title="keep"))], 3)
    seq = wrong.stream_seqs[0]
    live = {name: await caught_up(p, name) for name in (*MODELS, "snapshots")}
    applied = {name: await p.model(name, 1).digest() for name in MODELS}
    # What a publisher and a query service keep in memory: a loader's and a command
    # handler's states, read before the void.
    kept = StateLoader(p.store, p.snapshots)
    assert set((await kept.load("story")).state.decisions) == {"d1", "d2", "d3"}
    handler = CommandHandler(p.store, loader=StateLoader(p.store, p.snapshots))
    await handler.execute("story", m.AddDecision("d5", "t", "", "", "", []), CommandOptions("k5"))

    # Nothing names the sequence (no dead letter) and the projection holds every
    # domain: the void says which stream's it is.
    report = await void_sequence(p, seq, "a mistaken decision", "tester", domain="context")
    assert report.aggregate_id == "story" and report.domain == "context"
    for name in (*MODELS, "snapshots"):
        entry = report.models[f"{name} v1"]
        assert entry["replayed"] and not entry["failed"], (name, entry)

    # The stream's readers step over it (a no-op at its place): a fresh loader (its
    # snapshot at version 4 was deleted with the void), the loader that had read the
    # story before, and time travel to the voided version...
    for loader in (StateLoader(p.store, p.snapshots), kept):
        point = await loader.load("story")
        assert point.state.version == 5
        assert set(point.state.decisions) == {"d1", "d3", "d5"}
        assert set((await loader.load("story", to_version=3)).state.decisions) == {"d1"}
    # ...and the command handler, whose cached state had d2: it takes d2 as new.
    result = await handler.execute(
        "story", m.AddDecision("d2", "again", "", "", "", []), CommandOptions("k2")
    )
    assert result.last_version == 6
    # ...and so does every model, live (what it kept in memory from before the void
    # forgotten) and rebuilt.
    for name in (*MODELS, "snapshots"):
        await caught_up(p, name, worker=live[name])
    row = await p.model("context", 1).read("story")  # type: ignore[attr-defined]
    assert row is not None and sorted(row["state"]["decisions"]) == ["d1", "d2", "d3", "d5"]
    assert row["state"]["decisions"]["d2"]["title"] == "again", row
    for name in MODELS:
        clean = await caught_up(p, name, 2)
        assert clean.stats.dead_letters == 0, name
        assert await live[name].model.digest() == await clean.model.digest(), name
        assert applied[name] != await live[name].model.digest(), name


async def test_a_void_the_projector_has_not_reached_yet_is_stepped_over_when_it_comes(
    projection: Projection,
) -> None:
    p = projection
    await p.store.append("late", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    wrong = await p.store.append(
        "late", [NewEvent(ev.DecisionAdded(decision_id="d1", title="mistake"))], 1
    )
    # The models are in use but behind (their projector stopped): the void finds none
    # past the sequence and replays nothing; each steps over it when it comes.
    for name in MODELS:
        await p.control.ensure(name, 1)
    report = await void_sequence(
        p, wrong.stream_seqs[0], "mistaken", "tester", domain="context", caught_up_s=0.2
    )
    assert sorted(report.models) == [f"{name} v1" for name in sorted(MODELS)]
    assert all(e.get("not_yet_applied") for e in report.models.values()), report.models
    for name in MODELS:
        live = await caught_up(p, name)
        clean = await caught_up(p, name, 2)
        assert await live.model.digest() == await clean.model.digest(), name
    point = await StateLoader(p.store, p.snapshots).load("late")
    assert point.state.version == 2 and not point.state.decisions
    row = await p.model("context", 1).read("late")  # type: ignore[attr-defined]
    assert row is not None and row["state"]["version"] == 2
    assert not row["state"]["decisions"], row


@pytest.fixture
async def two_domains(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    ps = projector_settings(settings, unique)
    process = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
    )
    context = dataclasses.replace(
        CONTEXT_DOMAIN,
        stream=ps.eventstore.stream,
        subject_prefix=ps.eventstore.subject_prefix,
    )
    p = await open_projection(ps, domains=DomainRegistry([context, process]))
    yield p
    await p.close()


async def test_a_void_that_does_not_say_which_stream_is_refused_and_voids_nothing(
    two_domains: Projection,
) -> None:
    from google.protobuf import struct_pb2

    from jetsource._gen.process.v1.events_pb2 import ProcessEventBody

    p = two_domains
    context, process = p.domain_store("context"), p.domain_store("process")
    story = await context.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    body = ProcessEventBody(data=struct_pb2.Struct())
    run = await process.append("run", [NewEvent(body, event_type="process_started")], NO_STREAM)
    assert story.stream_seqs == run.stream_seqs == [1]  # the same number in two streams

    with pytest.raises(ValidationError) as refused:
        await void_sequence(p, 1, "which one?", "tester")
    assert refused.value.field == "domain"
    assert "context" in str(refused.value) and "process" in str(refused.value)
    assert not await context.voided("story", 1)
    assert not await process.voided("run", 1)

    report = await void_sequence(p, 1, "the process one", "tester", domain="process")
    assert (report.domain, report.aggregate_id) == ("process", "run")
    assert report.stream == process.settings.stream
    assert await process.voided("run", 1)
    assert not await context.voided("story", 1)

    with pytest.raises(Exception, match="unknown domain"):
        await void_sequence(p, 1, "no such domain", "tester", domain="nope")


async def test_a_void_without_its_domain_reads_the_letters_of_the_story_alone(
    two_domains: Projection,
) -> None:
    """`repair void` without --domain over several streams read every dead letter of
    the dead-letter stream (payloads and all) to find which domain filed the sequence;
    with --domain it reads the story's letters alone. It now reads the story's letters
    of each domain holding an event there, and still finds the one that filed it."""
    from google.protobuf import struct_pb2

    from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
    from jetsource.eventstore import jsapi
    from jetsource.eventstore.jsapi import RawMessage
    from jetsource.projection.deadletters import DeadLetter

    p = two_domains
    context, process = p.domain_store("context"), p.domain_store("process")
    story = await context.append("story", [NewEvent(ev.ContextCreated(title="t"))], NO_STREAM)
    body = ProcessEventBody(data=struct_pb2.Struct())
    await process.append("run", [NewEvent(body, event_type="process_started")], NO_STREAM)
    seq = story.stream_seqs[0]
    # 50 letters of other stories, and the context model's letter of this sequence.
    spec = p.spec("context", 1)
    for i in range(50):
        raw = RawMessage(f"x.o{i}", 10**9 + i, 0, {}, b"x")
        await p.dead_letters.publish(spec, f"o{i}", raw, "r", 1)
    await p.control.ensure("context", 1)
    raw_story = await jsapi.direct_get(context._replies, context.settings.stream, {"seq": seq}, 5)
    assert raw_story is not None
    await p.dead_letters.publish(spec, "story", raw_story, "refused", 1)

    parsed = 0
    parse = p.dead_letters._parse

    def counted(raw: RawMessage) -> DeadLetter:
        nonlocal parsed
        parsed += 1
        return parse(raw)

    p.dead_letters._parse = counted  # type: ignore[method-assign]
    report = await void_sequence(p, seq, "filed by context", "tester", caught_up_s=0.2)
    assert (report.domain, report.aggregate_id) == ("context", "story")
    assert await context.voided("story", seq)
    assert not await process.voided("run", seq)
    assert parsed <= 4, parsed  # was every letter of the stream (51) and then the story's
    assert len(await p.dead_letters.list(spec)) == 50
