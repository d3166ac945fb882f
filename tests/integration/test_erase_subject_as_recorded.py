"""`jetsource erase SUBJECT` erases what the context write path recorded: an actor that
shows nothing ("\\u3164", a Hangul filler) is one a context command takes (its one-line
rule) and seals as created_by and the envelope's actor, under that subject's key; the
erasure's blank rule (1875b42) refused it, so that person could never be erased.
Against a real publisher (gRPC), nats-server, Valkey and the graph store."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.settings import JetsourceSettings
from jetsource.projection import erasure
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import context_projection, create_contexts

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with context_projection(settings, unique, versions=(1,)) as p:
        yield p


@pytest.mark.parametrize("actor", ["\u3164", " "])
async def test_an_actor_showing_nothing_that_a_command_recorded_is_erased(
    projection: Projection, actor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = projection
    monkeypatch.setattr(erasure, "GRACE_S", 0.05)
    await create_contexts(p, {"s1": actor})
    [recorded] = await p.store.read_aggregate("s1")
    assert isinstance(recorded.event, ev.ContextCreated)
    assert recorded.event.created_by == actor  # recorded as it is, sealed under its key

    report = await erasure.erase_subject(p, actor)

    assert report.key_destroyed and not report.failed, report
    assert report.aggregates == {"context": ["s1"]}
    [after] = await p.store.read_aggregate("s1")
    assert isinstance(after.event, ev.ContextCreated)
    assert after.event.created_by != actor
