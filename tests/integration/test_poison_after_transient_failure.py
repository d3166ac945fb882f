"""A second event for one version is filed once even when the model first meets it
after the aggregate's next event: its first delivery in a batch that failed
transiently (the store did not answer, so nothing was written), its redelivery after
a backoff, and the aggregate's next event delivered and applied meanwhile.

Every model that checks an aggregate's chain (the process ledger's three and omni's
two) takes a version it applied already for a redelivery when it comes from a
sequence at or below the one it applied last, unless it has refused that sequence
before. Met for the first time after the next event was applied, the poison looked
like a redelivery: acked in silence, never filed, and the model's refusals no longer
those of a rebuild. Against the real servers, with the failure injected into the
model's first write of the poison (fault injection around the real adapter): the
poison is filed exactly once, the next event applied exactly once, and the model
equals a twin version that met every event in stream order with no fault. A build
from scratch of the same stream files the poison once too (process_graph excepted,
marked: it loses a refusal made in the same call as a process's first events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.contract import Outcome, TransientError
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration

# The poison's first redelivery comes this long after the failed batch: the next
# event, published at the failure, is delivered and applied well before it.
BACKOFF = [1.5, 0.05, 0.05]


async def raw_publish(store: JetStreamEventStore, subject: str, data: bytes) -> int:
    """A publish with no checks, as a client with publish rights can make it."""
    ack = await jsapi.publish(store._replies, OutMessage(subject, data, {}), 5.0)
    return int(ack.seq)


@dataclasses.dataclass
class Case:
    """One aggregate of a model's domain and its events (type, payload). Each is
    published as a well-formed envelope with no expected sequence: after the poison,
    the publisher's optimistic concurrency would refuse the next event (the poison is
    the aggregate's last message), so that one comes raw, from a writer that does not
    check, as the poison does."""

    store: JetStreamEventStore
    aggregate_id: str
    events: list[tuple[str, bytes]]

    async def publish(self, version: int, index: int, tag: str = "") -> int:
        event_type, payload = self.events[index]
        envelope = EventEnvelope(
            event_id=f"{self.aggregate_id}-{version}{tag}",
            event_type=event_type,
            aggregate_id=self.aggregate_id,
            aggregate_version=version,
            schema_version=1,
            payload=payload,
        )
        subject = f"{self.store.settings.subject_prefix}.{self.aggregate_id}.{event_type}"
        return await raw_publish(self.store, subject, envelope.SerializeToString())

    async def good(self, version: int) -> int:
        return await self.publish(version, version - 1)

    async def poison(self) -> int:
        """A second event for version 1 (its first event again, a new event id)."""
        return await self.publish(1, 0, "-again")


def process_case(store: JetStreamEventStore, pid: str) -> Case:
    events = []
    for i, event_type in enumerate(("process_started", "step_done", "step_done")):
        data = struct_pb2.Struct()
        data.update({"kind": "session", "name": f"run {pid}", "n": i})
        events.append((event_type, ProcessEventBody(data=data).SerializeToString()))
    return Case(store, pid, events)


def omni_case(store: JetStreamEventStore, aggregate_id: str, seed: int) -> Case:
    from jetsource.domains.omni.samples import sample_history

    events = []
    for message in sample_history(aggregate_id, 3, seed):
        name = type(message).__name__
        event_type = "EventReceived" if name == "NormalizedEvent" else name
        events.append((event_type, message.SerializeToString()))
    return Case(store, aggregate_id, events)


async def open_ledger(settings: JetsourceSettings, unique: str) -> Projection:
    domain = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PR_{unique}", subject_prefix=f"pr{unique}.events"
    )
    return await open_projection(
        projector_settings(settings, unique, max_deliver=3, max_waits=3, backoff_s=BACKOFF),
        domains=DomainRegistry([domain]),
    )


async def open_omni(settings: JetsourceSettings, unique: str) -> Projection:
    from jetsource.domains.omni.descriptor import omni_domain
    from tests.integration.omni.harness import omni_settings

    base = omni_settings(settings.nats_url(), str(settings.valkey.url), unique)
    options = {"max_deliver": 3, "max_waits": 3, "backoff_s": BACKOFF}
    isettings = base.model_copy(update={"projector": base.projector.model_copy(update=options)})
    return await open_projection(isettings, domains=DomainRegistry([omni_domain(isettings.omni)]))


async def open_case(name: str, settings: JetsourceSettings, unique: str) -> tuple[Projection, Case]:
    if name in PROCESS_MODELS:
        p = await open_ledger(settings, unique)
        return p, process_case(p.domain_store("process"), "twice")
    p = await open_omni(settings, unique)
    seed = 0 if name == OMNI_EVENTS else 1
    aggregate_id = "evt-again" if name == OMNI_EVENTS else "idn-again"
    return p, omni_case(p.domain_store("omni"), aggregate_id, seed)


@pytest.fixture(params=[*sorted(PROCESS_MODELS), OMNI_EVENTS, OMNI_IDENTITIES])
async def case(
    request: pytest.FixtureRequest, settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[str, Projection, Case]]:
    """(model name, its projection, an aggregate of its domain)."""
    name: str = request.param
    p, made = await open_case(name, settings, unique)
    yield name, p, made
    for version in (1, 2):
        await p.model(name, version).drop()
    await p.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_poison_first_met_after_the_next_event_is_filed_once(
    case: tuple[str, Projection, Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, p, aggregate = case
    model = p.model(name, 1)
    worker = Worker(p.nc, p.store_for(name), model, p.dead_letters, p.settings.projector)
    # The reference: a twin version of the model that meets every event in stream
    # order, with no fault (built as far as the live one at each step).
    twin = Worker(p.nc, p.store_for(name), p.model(name, 2), p.dead_letters, p.settings.projector)
    await aggregate.good(1)
    await aggregate.good(2)
    await worker.run(until_caught_up=True)
    await twin.run(until_caught_up=True)
    assert await model.position(aggregate.aggregate_id) == 2

    # Fault injection: the model's store does not answer the first batch holding the
    # poison (nothing is written). While that batch fails, the aggregate's next event
    # (version 3) is published, so it is delivered before the poison comes again.
    poison: list[int] = []
    following: list[int] = []
    real_apply = model.apply

    async def failing_once(events: Sequence[RecordedEvent]) -> Outcome:
        if poison and not following and any(e.stream_seq == poison[0] for e in events):
            following.append(await aggregate.good(3))
            raise TransientError("injected: the store did not answer")
        return await real_apply(events)

    monkeypatch.setattr(model, "apply", failing_once)
    poison.append(await aggregate.poison())
    task = asyncio.create_task(worker.run())
    try:

        async def settled() -> bool:
            info = await jsapi.consumer_info(
                worker.store._replies, worker._stream, worker.spec.durable, 5.0
            )
            assert info is not None
            idle = int(info["num_pending"]) == 0 and int(info["num_ack_pending"]) == 0
            return bool(following) and idle

        await until(settled)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    monkeypatch.undo()

    # The next event was applied, once; the poison was filed, once.
    assert await model.position(aggregate.aggregate_id) == 3
    letters = await p.dead_letters.list(worker.spec)
    assert [(d.aggregate_id, d.original_seq) for d in letters] == [
        (aggregate.aggregate_id, poison[0])
    ], [(d.original_seq, d.reason) for d in letters]
    assert worker.stats.dead_letters == 1
    assert "version 1" in letters[0].reason, letters[0].reason

    # In stream order the poison is filed too, and the models are equal.
    await asyncio.wait_for(twin.run(until_caught_up=True), 60)
    assert [d.original_seq for d in await p.dead_letters.list(twin.spec)] == poison
    assert await twin.model.position(aggregate.aggregate_id) == 3
    live, reference = await model.checkpoint(), await twin.model.checkpoint()
    assert live.applied == reference.applied == 3, (live, reference)  # each applied once
    assert await model.digest() == await twin.model.digest()


@pytest.mark.parametrize(
    "name",
    [
        *sorted(PROCESS_MODELS),
        OMNI_EVENTS,
        OMNI_IDENTITIES,
    ],
)
async def test_a_build_from_scratch_files_the_poison_once(
    name: str, settings: JetsourceSettings, unique: str
) -> None:
    """A stream holding versions 1 and 2, the poison and version 3, built in one go:
    the poison is refused in the same call as the aggregate's first events, version 3
    is applied while the poison is retried, and the poison is still filed once."""
    p, aggregate = await open_case(name, settings, unique)
    try:
        await aggregate.good(1)
        await aggregate.good(2)
        poison = await aggregate.poison()
        await aggregate.good(3)
        worker = Worker(
            p.nc, p.store_for(name), p.model(name, 1), p.dead_letters, p.settings.projector
        )
        await asyncio.wait_for(worker.run(until_caught_up=True), 60)
        letters = await p.dead_letters.list(worker.spec)
        assert [d.original_seq for d in letters] == [poison], [
            (d.original_seq, d.reason) for d in letters
        ]
        assert await worker.model.position(aggregate.aggregate_id) == 3
        assert (await worker.model.checkpoint()).applied == 3
    finally:
        await p.model(name, 1).drop()
        await p.close()
