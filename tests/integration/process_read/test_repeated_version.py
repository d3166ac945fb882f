"""Every process read model tells a redelivery from a second event for one version.

A process_seq the model applied already is a redelivery when it comes from the stream
sequence it was applied from (or an earlier one): nothing changes, it is acked. From a
later sequence it is a second event claiming that version (a hostile publish; the
stream's readers name it as corrupt): the model refuses it, so the runtime
dead-letters it, and the process's later events in the same call wait behind it; a
refused sequence stays refused when retried after a later event was applied.
Rows written before the models kept the sequence (no ``pseq`` / ``seq``) take a
repeat for a redelivery, as before, until the process's next event is applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.models import MODELS, PROCESS_GRAPH
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.contract import ReadModel
from jetsource.projection.domain import DomainRegistry
from tests.integration.process_read.ledger import process_domain
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(
        projector_settings(settings, unique), domains=DomainRegistry([process_domain(unique)])
    )
    yield p
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


def event(pid: str, version: int, seq: int, event_type: str = "step_done") -> RecordedEvent:
    data = struct_pb2.Struct()
    data.update({"kind": "session", "name": pid, "n": version})
    body = ProcessEventBody(data=data)
    envelope = EventEnvelope(
        event_id=f"{pid}-{seq}",
        event_type=event_type,
        schema_version=1,
        aggregate_type="process",
        aggregate_id=pid,
        aggregate_version=version,
        payload=body.SerializeToString(),
    )
    return RecordedEvent(envelope, body, seq, 1_000_000 * seq)


async def forget_sequences(p: Projection, model: ReadModel, name: str, pid: str) -> None:
    """The model's row of ``pid`` as the code before this one wrote it."""
    if name == PROCESS_GRAPH:
        async with p.graph.session(database=p.settings.graph.database) as session:
            await session.run(
                f"MATCH (n:{model.process} {{id: $id}}) REMOVE n.seq",  # type: ignore[attr-defined]
                id=pid,
            )
    else:
        await p.redis.hdel(f"{model.ns}:pseq", pid)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(MODELS))
async def test_a_repeated_version_from_a_later_sequence_is_refused_not_skipped(
    projection: Projection, name: str
) -> None:
    p = projection
    model = p.model(name, 1)
    await model.setup()
    first = await model.apply(
        [event("a", 1, 1, "process_started"), event("a", 2, 2), event("a", 3, 3)]
    )
    assert sorted(first.done) == [1, 2, 3] and first.applied == 3
    before = await model.digest()

    # A redelivery (the sequence it was applied from): acked, nothing changes.
    again = await model.apply([event("a", 2, 2), event("a", 3, 3)])
    assert sorted(again.done) == [2, 3] and again.applied == 0
    assert not again.failed and not again.waiting

    # Version 2 again from sequence 5, then the true version 4: refused, and version 4
    # waits behind it (applied, it would pass the poison by).
    poisoned = await model.apply([event("a", 2, 5), event("a", 4, 6), event("b", 1, 7)])
    assert list(poisoned.failed) == [5], poisoned
    assert "where 4 belongs" in poisoned.failed[5]
    assert poisoned.waiting == {6: "behind refused sequence 5"}
    assert poisoned.done == [7] and poisoned.applied == 1  # another process flows on
    assert await model.position("a") == 3
    # Refused again when retried: it is no redelivery whatever the batching.
    assert list((await model.apply([event("a", 2, 5)])).failed) == [5]

    # The true version 4 comes again alone (the runtime retries the poison with
    # backoff, so it may) and is applied; the poison, retried after it, is still
    # refused (remembered: its sequence is now below the one version 4 came from), and
    # the real events stay redeliveries.
    on = await model.apply([event("a", 4, 6)])
    assert on.done == [6] and on.applied == 1
    assert list((await model.apply([event("a", 2, 5)])).failed) == [5]
    assert (await model.apply([event("a", 3, 3), event("a", 4, 6)])).applied == 0
    assert await model.digest() != before  # (version 4 and b are in)


@pytest.mark.parametrize("name", sorted(MODELS))
async def test_rows_without_a_sequence_take_a_repeat_for_a_redelivery_until_the_next_event(
    projection: Projection, name: str
) -> None:
    p = projection
    model = p.model(name, 1)
    await model.setup()
    await model.apply([event("a", 1, 1, "process_started"), event("a", 2, 2)])
    await forget_sequences(p, model, name, "a")

    # Unknown sequence: what the previous code did (a redelivery, nothing changes).
    old = await model.apply([event("a", 1, 9)])
    assert old.done == [9] and old.applied == 0 and not old.failed
    # The next event is applied and records its sequence: from then on, checked.
    assert (await model.apply([event("a", 3, 10)])).applied == 1
    assert list((await model.apply([event("a", 1, 11)])).failed) == [11]
    assert (await model.apply([event("a", 3, 10)])).done == [10]
