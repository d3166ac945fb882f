"""Poison on a subject no writer uses: the stream takes any subject under its prefix, so
someone with publish rights can store a valid envelope on ``<prefix>.x.y.Type`` (a token
too many), ``<prefix>.Type`` (one too few) or ``<prefix>.a%b.Type`` / an id of 2,000
characters (an aggregate id no writer takes). Each was read as an event of aggregate
``y``, of the prefix's last token (``events``), of ``a%b``: the read models listed
stories no read or command reaches (GetContext refuses the id; time travel reads
``<prefix>.y.*`` and finds nothing). Each is named now (CorruptEventError naming its
subject) and dead-lettered by every model, nothing of it is applied, the other stories
flow on, and ``dlq discard`` clears the letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline", "graph")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=2))
    yield p
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


async def test_an_event_on_a_subject_no_writer_uses_is_dead_lettered_not_applied(
    projection: Projection,
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    envelope = EventEnvelope(aggregate_version=1, schema_version=1)
    envelope.payload = ev.ContextCreated(title="hostile").SerializeToString()
    subjects = [
        f"{prefix}.x.y.ContextCreated",
        f"{prefix}.ContextCreated",
        f"{prefix}.a%b.ContextCreated",
        f"{prefix}.{'a' * 2000}.ContextCreated",
    ]
    seqs = []
    for subject in subjects:
        out = OutMessage(subject, envelope.SerializeToString(), {})
        seqs.append(int((await jsapi.publish(p.store._replies, out, 5.0)).seq))
    await seed(p.store, ["after"], 3)

    for name in MODELS:
        worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
        await asyncio.wait_for(worker.run(until_caught_up=True), 30)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == seqs, name
        assert worker.stats.applied == 3, (name, worker.stats)  # the three of "after"
        named = {d.original_seq: d.reason for d in letters}
        assert "is not <subject prefix>.<aggregate id>.<event type>" in named[seqs[0]]
        assert "names no aggregate a writer takes" in named[seqs[2]]
    model = p.model("context", 1)
    assert isinstance(model, ContextModel)
    assert await model.recent(None, 0, 100) == ["after"]  # was: after, a%b, aaa..., y, events

    report = await admin.dlq_discard(p)
    assert not report.failed and len(report.done) == len(seqs) * len(MODELS), report
    assert await p.dead_letters.list() == []
