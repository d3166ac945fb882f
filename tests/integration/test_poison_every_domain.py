"""Poison in every domain's stream other than the context's (test_poison.py covers it):
the process ledger (its three read models, the process query service and the sessions
reader on the same stream) and omni (its two read models and its reads).

Poison is what a client with publish rights on a stream can store there with no
checks: random bytes, an empty message, a valid envelope of another message or with
no schema or version, a version that breaks the aggregate's chain, an envelope naming
another aggregate, an event type no writer of the domain writes, and a well-formed
event the domain refuses. Each read model must dead-letter each poison once within
its retry budget and go on with other aggregates; reads of a poisoned aggregate name
the sequence (never UNKNOWN/INTERNAL); ``void`` makes the models equal a clean rebuild.
What is no poison (a missing Nats-Msg-Id, a far schema version of a process event,
a large body) is applied once like any event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1 import query_pb2
from jetsource._gen.process.v1 import query_pb2_grpc as query_grpc
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.errors import CorruptEventError
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage
from jetsource.processquery.server import build as build_query
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import process_query_settings, projector_settings

pytestmark = pytest.mark.integration


async def raw_publish(store: JetStreamEventStore, subject: str, data: bytes) -> int:
    """A publish as a hostile client with publish rights would make it: no checks, no
    expected sequence, no Nats-Msg-Id."""
    ack = await jsapi.publish(store._replies, OutMessage(subject, data, {}), 5.0)
    return int(ack.seq)


async def run_until_caught_up(p: Projection, name: str, version: int = 1) -> Worker:
    worker = Worker(
        p.nc, p.store_for(name), p.model(name, version), p.dead_letters, p.settings.projector
    )
    await asyncio.wait_for(worker.run(until_caught_up=True), 60)
    return worker


# -- the process ledger -----------------------------------------------------------------


def body(**data: Any) -> bytes:
    s = struct_pb2.Struct()
    s.update(data)
    return ProcessEventBody(data=s).SerializeToString()


def envelope(pid: str, event_type: str, version: int, **fields: Any) -> bytes:
    fields.setdefault("payload", body())
    fields.setdefault("schema_version", 1)
    return EventEnvelope(
        event_id=f"{pid}-{version}-{event_type}",
        event_type=event_type,
        aggregate_type="process",
        aggregate_id=pid,
        aggregate_version=version,
        **fields,
    ).SerializeToString()


@pytest.fixture
async def ledger(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    domain = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
    )
    p = await open_projection(
        projector_settings(settings, unique, max_deliver=3, max_waits=3),
        domains=DomainRegistry([domain]),
    )
    yield p
    for name in PROCESS_MODELS:
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


class Ledger:
    """Good events of processes, appended the way the observer appends them (version
    by optimistic concurrency), and hostile ones published raw."""

    def __init__(self, p: Projection) -> None:
        self.store = p.domain_store("process")
        self.prefix = self.store.settings.subject_prefix
        self.versions: dict[str, int] = {}

    async def good(self, pid: str, event_type: str = "step_done", **data: Any) -> int:
        from jetsource.core.envelope import NewEvent

        if pid not in self.versions:
            self.versions[pid] = await self.store.last_version(pid)
        payload = struct_pb2.Struct()
        payload.update({"kind": "session", "name": f"run {pid}", **data})
        event = NewEvent(ProcessEventBody(data=payload), event_type=event_type)
        result = await self.store.append(pid, [event], self.versions[pid])
        self.versions[pid] += 1
        return int(result.stream_seqs[0])

    async def started(self, pid: str, steps: int = 1) -> None:
        await self.good(pid, "process_started")
        for i in range(steps):
            await self.good(pid, "step_done", n=i)

    async def raw(self, pid: str, event_type: str, data: bytes) -> int:
        return await raw_publish(self.store, f"{self.prefix}.{pid}.{event_type}", data)


async def test_process_poison_is_dead_lettered_once_by_every_model_and_voided(
    ledger: Projection, settings: JetsourceSettings, unique: str
) -> None:
    p = ledger
    w = Ledger(p)
    for pid in ("healthy", "other", "renamed", "jump", "twice", "wrongtype"):
        await w.started(pid, 2)  # versions 1..3
    poison = {
        "random": await w.raw("random", "process_started", os.urandom(64)),
        "empty": await w.raw("empty", "process_started", b""),
        # A valid envelope whose payload is another message, claiming version 7.
        "foreign": await w.raw(
            "foreign",
            "process_started",
            envelope(
                "foreign",
                "process_started",
                7,
                payload=EventEnvelope(aggregate_id="x", aggregate_version=3).SerializeToString(),
            ),
        ),
        "noschema": await w.raw(
            "noschema",
            "process_started",
            envelope("noschema", "process_started", 1, schema_version=0),
        ),
        "noversion": await w.raw(
            "noversion", "process_started", envelope("noversion", "process_started", 0)
        ),
        # After three good events: naming another process, a version ahead, a
        # version again.
        "renamed": await w.raw("renamed", "step_done", envelope("elsewhere", "step_done", 4)),
        "jump": await w.raw("jump", "step_done", envelope("jump", "step_done", 9)),
        "twice": await w.raw("twice", "step_done", envelope("twice", "step_done", 2)),
    }
    # No poison either: a type no writer of the ledger writes (not snake_case) is an
    # unknown event, skipped at its place by every reader (never fatal).
    await w.raw("wrongtype", "Step-Done", envelope("wrongtype", "Step-Done", 4))
    # No poison: an event without a Nats-Msg-Id at its place, a far schema version
    # (a process event's schema version is its writer's own), a large body.
    await w.raw("nomsgid", "process_started", envelope("nomsgid", "process_started", 1))
    await w.raw(
        "farschema",
        "process_started",
        envelope("farschema", "process_started", 1, schema_version=999_999),
    )
    await w.raw(
        "large",
        "process_started",
        envelope("large", "process_started", 1, payload=body(blob="x" * 600_000)),
    )
    await w.good("other", "step_done", n=9)  # other processes flow on
    await w.started("after", 2)

    # The stream's readers name each poison's sequence.
    named = {}
    for pid in poison:
        try:
            await w.store.read_aggregate(pid)
        except CorruptEventError as exc:
            named[pid] = exc.stream_seq
    assert named == poison

    # Each model files each poison once, within its retry budget. A version again
    # included: it comes from a stream sequence above the one the model applied that
    # version from, so it is no redelivery but a second event for one version (as the
    # stream's readers name it), never skipped in silence.
    filed = dict(poison)
    for name in PROCESS_MODELS:
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        got = sorted(d.original_seq for d in letters)
        assert got == sorted(filed.values()), (name, [(d.aggregate_id, d.reason) for d in letters])
        assert worker.stats.dead_letters == len(filed), name
    for name in PROCESS_MODELS:
        await p.control.ensure(name, 1)
    rows = {r["model"]: r for r in await admin.status(p) if r.get("version") == 1}
    for name in PROCESS_MODELS:
        assert rows[name]["dead_letters"] == len(filed), rows[name]

    # Reads: the others as the log says, the poisoned ones named.
    query = await build_query(process_query_settings(p.settings))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            stub = query_grpc.ProcessQueryServiceStub(channel)
            await check_process_reads(stub, filed)
            # Repair: void each poison; nothing is deleted, every model steps over it.
            for pid, seq in poison.items():
                report = await void_sequence(p, seq, "poison from a test", "tester")
                assert report.aggregate_id == pid
                assert all(not e["failed"] for e in report.models.values()), report.models
            assert await p.dead_letters.list() == []
            for pid in poison:
                await w.store.read_aggregate(pid)  # readable again
            await w.good("renamed", "process_completed")
            await w.good("jump", "process_completed")
            await w.good("twice", "process_completed")
            for name in PROCESS_MODELS:
                live = await run_until_caught_up(p, name)
                assert await p.dead_letters.list(live.spec) == [], name
                clean = await run_until_caught_up(p, name, 2)
                assert clean.stats.dead_letters == 0, name
                assert await live.model.digest() == await clean.model.digest(), name
            got = await stub.GetProcess(query_pb2.GetProcessRequest(process_id="renamed"))
            assert got.process.event_count == 4
            assert got.process.status == query_pb2.PROCESS_STATUS_COMPLETED
            timeline = await stub.GetProcessTimeline(
                query_pb2.GetProcessTimelineRequest(process_id="jump")
            )
            assert [e.process_seq for e in timeline.events] == [1, 2, 3, 4]
            # The repeat was stepped over: the process goes on from version 3.
            timeline = await stub.GetProcessTimeline(
                query_pb2.GetProcessTimelineRequest(process_id="twice")
            )
            assert [e.process_seq for e in timeline.events] == [1, 2, 3, 4]
            assert timeline.events[-1].global_seq > poison["twice"]
    finally:
        await query.stop(0)


async def check_process_reads(stub: Any, filed: dict[str, int]) -> None:
    ok = await stub.GetProcess(query_pb2.GetProcessRequest(process_id="other"))
    assert ok.process.event_count == 4
    after = await stub.GetProcess(query_pb2.GetProcessRequest(process_id="after"))
    assert after.process.event_count == 3
    for pid, count in (("nomsgid", 1), ("farschema", 1), ("large", 1), ("wrongtype", 3)):
        got = await stub.GetProcess(query_pb2.GetProcessRequest(process_id=pid))
        assert got.process.event_count == count, pid
    timeline = await stub.GetProcessTimeline(
        query_pb2.GetProcessTimelineRequest(process_id="wrongtype")
    )
    assert [e.event.event_type for e in timeline.events] == [
        "process_started",
        "step_done",
        "step_done",
    ]
    # A process whose models hold a dead letter: named, with its sequence.
    for pid in ("renamed", "jump", "twice"):
        for call in (
            stub.GetProcess(query_pb2.GetProcessRequest(process_id=pid)),
            stub.GetProcessTimeline(query_pb2.GetProcessTimelineRequest(process_id=pid)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.DATA_LOSS, caught.value
            assert f"stream sequence {filed[pid]}" in (caught.value.details() or "")


# -- sessions (root processes of kind "session" on the ledger's stream) ----------------


async def test_a_poisoned_session_is_named_and_the_others_list_show_and_follow(
    ledger: Projection,
) -> None:
    from jetsource.domains.sessions.ledger import LedgerReader
    from jetsource.domains.sessions.service import Sessions

    p = ledger
    w = Ledger(p)
    reader = LedgerReader(w.store, p.nc.jetstream(), w.store.settings.stream, w.prefix)
    sessions = Sessions(reader)
    for sid in ("s-ok", "s-tail", "s-live"):
        await w.started(sid, 2)
    # A lifecycle subject of a process that never was, and a session's last message
    # naming another session.
    lifecycle = await w.raw("s-ghost", "process_started", os.urandom(40))
    tail = await w.raw("s-tail", "step_done", envelope("s-ok", "step_done", 4))
    # An unknown type at its place: no event of the session, its place kept.
    await w.raw("s-ok", "Odd", envelope("s-ok", "Odd", 4))
    w.versions["s-ok"] += 1
    await w.good("s-ok", "step_done", n=5)

    listed = {r.session_id: r for r in await sessions.list_sessions()}
    assert set(listed) == {"s-ok", "s-tail", "s-live"}
    assert listed["s-ok"].event_count == 5
    assert f"stream sequence {tail}" in listed["s-tail"].error
    _, _, recorded = await sessions.show("s-ok")
    assert [r.event.seq for r in recorded] == [1, 2, 3, 5]
    with pytest.raises(CorruptEventError) as caught:
        await sessions.show("s-tail")
    assert caught.value.stream_seq == tail

    # Live follow meets a poison: named, never yielded as an event.
    seen: list[int] = []
    backlog = asyncio.Event()

    async def follow() -> None:
        async for r in sessions.follow("s-live", until_end=False):
            seen.append(r.event.seq)
            if len(seen) == 3:
                backlog.set()

    task = asyncio.create_task(follow())
    await asyncio.wait_for(backlog.wait(), 10)
    jump = await w.raw("s-live", "step_done", envelope("s-live", "step_done", 7))
    with pytest.raises(CorruptEventError) as caught:
        await asyncio.wait_for(task, 10)
    assert caught.value.stream_seq == jump
    assert seen == [1, 2, 3]

    # Voided, each reads as if it had never been published.
    for seq in (lifecycle, tail, jump):
        await void_sequence(p, seq, "poison from a test", "tester")
    listed = {r.session_id: r for r in await sessions.list_sessions()}
    assert listed["s-tail"].error == "" and listed["s-tail"].event_count == 3
    await w.good("s-live", "step_done", n=9)
    await w.good("s-live", "session_ended")
    followed = [r.event.seq async for r in sessions.follow("s-live")]
    assert followed == [1, 2, 3, 4, 5]


# -- omni ---------------------------------------------------------------------------------


@pytest.fixture
async def omni(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    from jetsource.domains.omni.descriptor import omni_domain
    from tests.integration.omni.harness import omni_settings

    base = omni_settings(settings.nats_url(), str(settings.valkey.url), unique)
    isettings = base.model_copy(
        update={"projector": base.projector.model_copy(update={"max_deliver": 3, "max_waits": 3})}
    )
    p = await open_projection(isettings, domains=DomainRegistry([omni_domain(isettings.omni)]))
    yield p
    for name in p.model_names():
        for version in (1, 2):
            await p.model(name, version).drop()
    await p.close()


async def omni_history(p: Projection, aggregate_id: str, n: int, seed: int = 0) -> None:
    from jetsource.core.envelope import NewEvent
    from jetsource.domains.omni.samples import sample_history

    store = p.domain_store("omni")
    for i, message in enumerate(sample_history(aggregate_id, n, seed)):
        await store.append(aggregate_id, [NewEvent(message)], i)


async def test_omni_poison_is_dead_lettered_once_by_each_model_and_voided(
    omni: Projection,
) -> None:
    from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
    from jetsource.domains.omni.reads import OmniReads

    p = omni
    store = p.domain_store("omni")
    prefix = store.settings.subject_prefix
    await omni_history(p, "evt-ok", 3)
    await omni_history(p, "idn-ok", 3, seed=1)

    async def raw(aggregate_id: str, event_type: str, data: bytes) -> int:
        return await raw_publish(store, f"{prefix}.{aggregate_id}.{event_type}", data)

    def env(aggregate_id: str, event_type: str, version: int, **fields: Any) -> bytes:
        fields.setdefault("schema_version", 1)
        return EventEnvelope(
            event_type=event_type,
            aggregate_type="omni",
            aggregate_id=aggregate_id,
            aggregate_version=version,
            **fields,
        ).SerializeToString()

    poison = {
        OMNI_EVENTS: {
            "evt-random": await raw("evt-random", "EventReceived", os.urandom(64)),
            "evt-empty": await raw("evt-empty", "ProcessingStarted", b""),
            "evt-ok": await raw(
                "evt-ok", "ProcessingStarted", env("evt-x", "ProcessingStarted", 4)
            ),
            "evt-noschema": await raw(
                "evt-noschema",
                "EventReceived",
                env("evt-noschema", "EventReceived", 1, schema_version=0),
            ),
        },
        OMNI_IDENTITIES: {
            "idn-random": await raw("idn-random", "IdentityCreated", os.urandom(64)),
            "idn-ok": await raw("idn-ok", "ExternalIdLinked", env("idn-ok", "ExternalIdLinked", 0)),
        },
    }
    # Unknown type tokens: no model consumes them (nothing to file, nothing read).
    await raw("evt-odd", "Whatever", env("evt-odd", "Whatever", 1))
    await omni_history(p, "evt-after", 3, seed=2)
    await omni_history(p, "idn-after", 2, seed=3)

    for name, filed in poison.items():
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == sorted(filed.values()), (
            name,
            [(d.aggregate_id, d.reason) for d in letters],
        )
        assert worker.stats.dead_letters == len(filed), name

    async def active(name: str) -> int:
        return 1

    reads = OmniReads(p.redis, p.settings.projector.valkey_prefix, active, None, None)  # type: ignore[arg-type]
    assert (await reads.event("evt-after")).event.id == "evt-after"
    assert (await reads.event("evt-ok")).status.state != ""  # as before the poison

    for filed in poison.values():
        for aggregate_id, seq in filed.items():
            report = await void_sequence(p, seq, "poison from a test", "tester")
            assert report.aggregate_id == aggregate_id
    assert await p.dead_letters.list() == []
    for name in poison:
        live = await run_until_caught_up(p, name)
        clean = await run_until_caught_up(p, name, 2)
        assert clean.stats.dead_letters == 0, name
        assert await live.model.digest() == await clean.model.digest(), name


async def test_omni_events_the_domain_refuses_are_dead_lettered(omni: Projection) -> None:
    """Well-formed events the omni models must not take: each model checks each
    aggregate's chain (versions 1, 2, 3, ...) and the domain's rules, dead-letters
    what breaks them once, lets the rest flow, and after the voids equals a rebuild."""
    from google.protobuf.message import Message

    from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
    from jetsource._gen.omni.v1.lifecycle_pb2 import (
        ExternalIdLinked,
        IdentityCreated,
        ProcessingCompleted,
        ProcessingStarted,
    )
    from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
    from jetsource.domains.omni.processing import record_status
    from jetsource.domains.omni.reads import OmniReads
    from jetsource.domains.omni.samples import sample_history

    p = omni
    store = p.domain_store("omni")
    prefix = store.settings.subject_prefix
    await omni_history(p, "evt-ok", 2)  # received, processing
    for aggregate_id in ("evt-two", "evt-five", "evt-again", "evt-mid"):
        await omni_history(p, aggregate_id, 1)  # received
    await omni_history(p, "idn-ok", 2, seed=1)  # created, linked

    async def publish(aggregate_id: str, version: int, message: Message, kind: str = "") -> int:
        event_type = kind or type(message).__name__
        if event_type == "NormalizedEvent":
            event_type = "EventReceived"
        env = EventEnvelope(
            event_type=event_type,
            aggregate_id=aggregate_id,
            aggregate_version=version,
            schema_version=1,
            payload=message.SerializeToString(),
        )
        return await raw_publish(
            store, f"{prefix}.{aggregate_id}.{event_type}", env.SerializeToString()
        )

    done = ProcessingCompleted(worker="w", attempt=1)
    received = sample_history("evt-two", 1)[0]
    assert isinstance(received, NormalizedEvent)
    poison = {
        OMNI_EVENTS: {
            # Processing of an event never received.
            "evt-ghost": await publish("evt-ghost", 1, done),
            # A version ahead: 9 after 2, and 5 after 1.
            "evt-ok": await publish("evt-ok", 9, done),
            "evt-five": await publish("evt-five", 5, ProcessingStarted(worker="w", attempt=1)),
            # A second EventReceived, at the next version (it overwrote the event and
            # reset its status).
            "evt-two": await publish("evt-two", 2, received),
            # Version 1 again, from a new sequence: no redelivery.
            "evt-again": await publish("evt-again", 1, sample_history("evt-again", 1, 2)[0]),
        },
        OMNI_IDENTITIES: {
            "idn-ok": await publish("idn-ok", 3, IdentityCreated(identity_id="idn-ok")),
            "idn-ghost": await publish(
                "idn-ghost",
                1,
                ExternalIdLinked(identity_id="idn-ghost", provider="discord", external_id="9"),
            ),
        },
    }
    # No poison: a type no model consumes at its place, then the next version (the
    # model reads the version between from the stream: a no-op at its place).
    await raw_publish(
        store,
        f"{prefix}.evt-mid.Whatever",
        EventEnvelope(aggregate_version=2, schema_version=1).SerializeToString(),
    )
    await publish("evt-mid", 3, ProcessingStarted(worker="w", attempt=1))
    await omni_history(p, "evt-after", 3, seed=2)
    await omni_history(p, "idn-after", 2, seed=3)

    for name, filed in poison.items():
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == sorted(filed.values()), (
            name,
            [(d.aggregate_id, d.reason) for d in letters],
        )
        assert worker.stats.dead_letters == len(filed), name

    async def active(name: str) -> int:
        return 1

    reads = OmniReads(p.redis, p.settings.projector.valkey_prefix, active, None, None)  # type: ignore[arg-type]
    # Nothing of the poison was taken: no event made of a status, the event and the
    # status as they were, the others as their histories say.
    events = p.model(OMNI_EVENTS, 1)
    assert not await p.redis.exists(f"{events.ns}:e:evt-ghost")  # type: ignore[attr-defined]
    assert (await reads.event("evt-ok")).status.state == "processing"
    two = await reads.event("evt-two")
    assert two.status.state == "received" and two.event.content_text == received.content_text
    assert (await reads.event("evt-mid")).status.state == "processing"
    assert (await reads.event("evt-after")).event.id == "evt-after"

    for filed in poison.values():
        for aggregate_id, seq in filed.items():
            report = await void_sequence(p, seq, "poison from a test", "tester")
            assert report.aggregate_id == aggregate_id
    assert await p.dead_letters.list() == []
    await record_status(store, "evt-ok", "completed", "w", 1)  # version 3: flows again
    for name in poison:
        live = await run_until_caught_up(p, name)
        clean = await run_until_caught_up(p, name, 2)
        assert clean.stats.dead_letters == 0, name
        assert await live.model.digest() == await clean.model.digest(), name
    assert (await reads.event("evt-ok")).status.state == "completed"
