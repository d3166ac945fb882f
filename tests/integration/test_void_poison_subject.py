"""`repair void` of a message whose subject names no aggregate (``<prefix>.x.y.Type``,
``<prefix>.a%b.Type``, an id of 2,000 characters; 090f134 made every reader dead-letter
such a message). The void recorded a void of aggregate ``x`` (``a%b``) and reported
success while every model's dead letters of it stayed; for the 2,000-character id it
failed on an invalid id. No reader applies such a message, so there is nothing to void:
the void is refused, naming the subject and the `projector dlq discard` that clears its
letters (their dead-letter sequences), and records nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.errors import ValidationError
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings, seed

pytestmark = pytest.mark.integration

MODELS = ("context", "timeline")


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    p = await open_projection(projector_settings(settings, unique, max_deliver=2))
    yield p
    for name in ("context", "timeline", "graph"):
        await p.model(name, 1).drop()
    await p.close()


async def test_a_void_of_a_message_naming_no_aggregate_is_refused_pointing_to_dlq_discard(
    projection: Projection,
) -> None:
    p = projection
    prefix = p.store.settings.subject_prefix
    envelope = EventEnvelope(aggregate_version=1, schema_version=1)
    envelope.payload = ev.ContextCreated(title="hostile").SerializeToString()
    subjects = [
        f"{prefix}.x.y.ContextCreated",
        f"{prefix}.a%b.ContextCreated",
        f"{prefix}.{'a' * 2000}.ContextCreated",
    ]
    seqs = []
    for subject in subjects:
        out = OutMessage(subject, envelope.SerializeToString(), {})
        seqs.append(int((await jsapi.publish(p.store._replies, out, 5.0)).seq))
    await seed(p.store, ["after"], 1)
    for name in MODELS:
        worker = Worker(p.nc, p.store, p.model(name, 1), p.dead_letters, p.settings.projector)
        await asyncio.wait_for(worker.run(until_caught_up=True), 30)
    letters = await p.dead_letters.list()
    assert len(letters) == len(seqs) * len(MODELS)
    info = f"STREAM.INFO.{p.store.settings.stream}"
    last = (await jsapi.api(p.store._replies, info, {}, 5.0))["state"]["last_seq"]

    for seq in seqs:
        with pytest.raises(ValidationError) as err:
            await void_sequence(p, seq, "poison", "ops")
        said = str(err.value)
        assert err.value.field == "seq"
        assert f"stream sequence {seq} " in said and "names no aggregate" in said, said
        mine = sorted(d.dlq_seq for d in letters if d.original_seq == seq)
        assert len(mine) == len(MODELS)
        command = "jetsource projector dlq discard " + " ".join(f"--seq {s}" for s in mine)
        assert command + " --yes" in said, said
        # The command it names clears exactly its letters.
        args = [int(s) for s in re.findall(r"--seq (\d+)", said)]
        report = await admin.dlq_discard(p, None, None, args)
        assert not report.failed and len(report.done) == len(MODELS), report
    assert await p.dead_letters.list() == []
    # Nothing was written: no void record on the stream.
    assert (await jsapi.api(p.store._replies, info, {}, 5.0))["state"]["last_seq"] == last
