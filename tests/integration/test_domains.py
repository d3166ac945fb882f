"""One engine, many domains (#21), against real NATS, Valkey and the graph store.

- A throwaway domain (tests/notes_domain.py: its own stream and events, a Valkey
  model and a graph model) runs in the same projector process beside the context
  models: both project, both rebuild, both show in `projector status`. No engine
  module knows it.
- Determinism, for every registered model of every domain (a new model is covered by
  registering it): built once in one pass and once in small overlapping batches with
  redeliveries, from a generated history, the digests are equal. A model made
  batching-dependent on purpose fails the same check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from urllib.parse import urlsplit

import pytest

from jetsource.core.envelope import NewEvent, RecordedEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains import REGISTRY
from jetsource.domains.context.descriptor import DOMAIN as CONTEXT
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.contract import Outcome, ReadModel
from jetsource.projection.domain import Domain, DomainRegistry
from jetsource.projection.host import ProjectorService
from tests.notes_domain import NOTES, NOTES_GRAPH, NotesModel, notes_domain
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    domains = DomainRegistry([CONTEXT, notes_domain(unique)])
    p = await open_projection(
        projector_settings(settings, unique, snapshots={"every": 5}), domains=domains
    )
    yield p
    for name in p.model_names():
        for version in (1, 2):
            if p.pinned_version(name) not in (None, version):
                continue
            await p.model(name, version).drop()
    await p.close()


async def write_histories(
    store: JetStreamEventStore, domain: Domain, aggregates: int, events: int, seed: int = 0
) -> int:
    """Append a generated history per aggregate, interleaved in the stream."""
    assert domain.sample_history is not None
    histories = {
        f"a{i:03d}": domain.sample_history(f"a{i:03d}", events, seed + i) for i in range(aggregates)
    }
    longest = max(len(h) for h in histories.values())
    for step in range(longest):
        for aggregate, history in histories.items():
            if step < len(history):
                e = history[step]
                await store.append(aggregate, [e if isinstance(e, NewEvent) else NewEvent(e)], step)
    return sum(len(h) for h in histories.values())


async def applied(p: Projection, name: str) -> int:
    return (await p.model(name, p.pinned_version(name) or 1).checkpoint()).applied


async def test_a_throwaway_domain_projects_beside_context_in_one_process(
    projection: Projection,
) -> None:
    p = projection
    context_events = await write_histories(p.store_for("context"), CONTEXT, 4, 12)
    notes = p.domains.get("notes")
    note_events = await write_histories(p.domain_store("notes"), notes, 5, 9)
    assert p.store_for(NOTES).settings.stream != p.store_for("context").settings.stream

    service = ProjectorService(p)
    assert set(service.models) == {"context", "timeline", "graph", NOTES, NOTES_GRAPH}
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        want = {
            "context": context_events,
            "timeline": context_events,
            "graph": context_events,
            NOTES: note_events,
            NOTES_GRAPH: note_events,
        }
        started = time.monotonic()
        while {m: await applied(p, m) for m in want} != want:
            assert time.monotonic() - started < 60, {m: await applied(p, m) for m in want}
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        await task

    rows = {(r["model"], r["version"]): r for r in await admin.status(p)}
    for model, count in want.items():
        row = rows[(model, 1)]
        assert (row["applied"], row["lag"], row["state"]) == (count, 0, "live"), row
    # Listed at its schema's version; its consumer belongs to the snapshotter service.
    snapshots = rows[("snapshots", p.pinned_version("snapshots"))]
    assert (snapshots["state"], snapshots["domain"]) == ("not started", "context")
    assert rows[(NOTES, 1)]["stream"] == p.store_for(NOTES).settings.stream
    assert rows[(NOTES, 1)]["contract"]["rebuild_strategy"] == "side-by-side"

    for model in (NOTES, NOTES_GRAPH, "context"):
        report = await admin.rebuild(p, model, 2)
        assert report.applied == want[model]
        assert await p.model(model, 2).digest() == await p.model(model, 1).digest(), model


# -- determinism -------------------------------------------------------------------


async def build_digests(
    make: Callable[[], ReadModel],
    records: Sequence[RecordedEvent],
) -> tuple[str, str]:
    """The model's digest built in one pass, then (after a drop) in batches of 3 that
    overlap the previous one (every event delivered twice, a batch's events again
    with the next)."""
    model: ReadModel = make()
    await model.setup()
    outcome: Outcome = await model.apply(records)
    assert not outcome.failed and not outcome.waiting, outcome
    one_pass = await model.digest()
    await model.drop()
    model = make()
    await model.setup()
    for i in range(0, len(records), 3):
        await model.apply(records[i : i + 3])
        await model.apply(records[max(0, i - 2) : i + 3])  # redelivered, and again
    batched = await model.digest()
    await model.drop()
    return one_pass, batched


async def test_every_registered_model_is_deterministic(
    settings: JetsourceSettings, unique: str
) -> None:
    """Covers every model of every domain in jetsource.domains.REGISTRY (plus the
    throwaway one): registering a model is all it takes to be checked."""
    domains = DomainRegistry([*REGISTRY, notes_domain(unique)])
    # Its own Valkey database: a digest or a drop scans the database's keys, and the
    # session's shared one holds millions by now (81 s of make test, 7 s alone).
    url = urlsplit(str(settings.valkey.url))._replace(path="/15").geturl()
    own = settings.model_copy(update={"valkey": settings.valkey.model_copy(update={"url": url})})
    p = await open_projection(
        projector_settings(own, unique, snapshots={"every": 5}), domains=domains
    )
    try:
        checked = []
        for domain in p.domains:
            store = p.domain_store(domain.name)
            await write_histories(store, domain, 3, 16, seed=7)
            records = [r async for r in store.read_all()]
            for name in domain.models:
                version = p.pinned_version(name) or 1
                one, batched = await build_digests(partial(p.model, name, version), records)
                assert one == batched, f"{domain.name}/{name} depends on how it is batched"
                checked.append(name)
        assert set(checked) == set(p.model_names())
        assert {"context", "timeline", "graph", "snapshots", NOTES, NOTES_GRAPH} <= set(checked)
    finally:
        await p.close()


class BatchCounting(NotesModel):
    """Made batching-dependent on purpose: it stores how many batches it saw."""

    async def apply(self, events: Sequence[RecordedEvent]) -> Outcome:
        outcome = await super().apply(events)
        await self.redis.hincrby(f"{self.ns}:batches", "seen", 1)
        return outcome


async def test_the_determinism_check_catches_a_batching_dependent_model(
    projection: Projection,
) -> None:
    p = projection
    notes = p.domains.get("notes")
    store = p.domain_store("notes")
    await write_histories(store, notes, 2, 10)
    records = [r async for r in store.read_all()]
    spec = p.spec(NOTES, 3)
    env_model = p.model(NOTES, 3)
    assert isinstance(env_model, NotesModel)

    def make() -> ReadModel:
        model = BatchCounting.__new__(BatchCounting)
        model.__dict__.update(env_model.__dict__)
        model.spec = spec
        return model

    one, batched = await build_digests(make, records)
    assert one != batched
