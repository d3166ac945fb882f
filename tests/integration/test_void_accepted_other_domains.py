"""A void of an accepted event in the process ledger's and omni's streams: the read
models that had applied it write its aggregate again from the stream without it
(``rewind``), so they equal a clean rebuild (which steps over the void) and their reads
no longer show it; later events keep flowing. The context domain's version is
test_void_everywhere.py. A model that cannot write one aggregate alone says, in the
void's report, that it needs a side-by-side rebuild."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.eventstore.jetstream import voided_event
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.repair import void_sequence
from jetsource.projection.runtime import Worker
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


async def caught_up(p: Projection, name: str, version: int = 1) -> Worker:
    await p.control.ensure(name, 1)
    worker = Worker(
        p.nc, p.store_for(name), p.model(name, version), p.dead_letters, p.settings.projector
    )
    await worker.run(until_caught_up=True)
    return worker


# -- the process ledger -------------------------------------------------------------------

VALKEY_LEDGER = ("processes", "process_timeline")


@pytest.fixture
async def ledger(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    domain = dataclasses.replace(
        PROCESS_DOMAIN, stream=f"PV_{unique}", subject_prefix=f"pv{unique}.events"
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
    def __init__(self, p: Projection) -> None:
        self.store = p.domain_store("process")
        self.versions: dict[str, int] = {}

    async def add(self, pid: str, event_type: str, parent: str = "", **data: Any) -> int:
        payload = struct_pb2.Struct()
        payload.update({"kind": "session", "name": f"run {pid}", **data})
        event = NewEvent(
            ProcessEventBody(data=payload), event_type=event_type, parent_aggregate_id=parent
        )
        version = self.versions.get(pid, 0)
        result = await self.store.append(pid, [event], version)
        self.versions[pid] = version + 1
        return int(result.stream_seqs[0])


async def test_a_voided_ending_of_a_process_is_gone_from_the_ledger_models(
    ledger: Projection,
) -> None:
    p = ledger
    w = Ledger(p)
    await w.add("root", "process_started")
    await w.add("root", "step_done", n=1)
    await w.add("child", "process_started", parent="root")
    await w.add("grandchild", "process_started", parent="child")
    # Accepted by every model: the root ends (its subtree is interrupted), voided below.
    wrong = await w.add("root", "process_failed", error="not really")
    await w.add("other", "process_started")
    # A process whose only real event is voided: its child goes back to waiting for it.
    lone = await w.add("lone", "process_started")
    await w.add("orphan", "process_started", parent="lone")
    for name in PROCESS_MODELS:
        await caught_up(p, name)
    registry: Any = p.model("processes", 1)
    assert (await registry.read("child")).status == "interrupted"
    before = {name: await p.model(name, 1).digest() for name in VALKEY_LEDGER}

    report = await void_sequence(p, wrong, "a mistaken failure", "tester", domain="process")
    assert report.aggregate_id == "root"
    for name in VALKEY_LEDGER:
        entry = report.models[f"{name} v1"]
        assert entry["replayed"] and not entry["failed"], (name, entry)
    # The graph cannot yet write one process alone: the report says what to do.
    graph = report.models["process_graph v1"]
    assert "projector rebuild process_graph --to-version 2" in str(graph["failed"]), graph
    assert graph["replayed"] is False, graph
    lone_report = await void_sequence(p, lone, "never was", "tester", domain="process")
    assert not lone_report.models["processes v1"]["failed"], lone_report.models

    row = await registry.read("root")
    assert row.status == "running" and row.error == "" and row.event_count == 2
    for pid in ("child", "grandchild"):
        kid = await registry.read(pid)
        assert kid.status == "running" and kid.ended_at is None and kid.root == "root", kid
    assert await registry.read("lone") is None
    orphan = await registry.read("orphan")
    assert orphan.parent_pending and orphan.root == "orphan", orphan
    timeline: Any = p.model("process_timeline", 1)
    _, seqs, _ = await timeline.page("root", True, 0, 100)
    assert wrong not in seqs and len(seqs) == 4, seqs
    assert not await timeline.exists("lone")

    # Later events keep flowing, and the live models equal a clean rebuild.
    await w.add("root", "process_completed")
    await w.add("lone", "process_started")  # now it appears: the orphan is attached
    for name in VALKEY_LEDGER:
        await caught_up(p, name)
        clean = await caught_up(p, name, 2)
        assert clean.stats.dead_letters == 0, name
        live = p.model(name, 1)
        assert await live.digest() == await clean.model.digest(), name
        assert before[name] != await live.digest(), name
    assert (await registry.read("grandchild")).status == "interrupted"
    assert (await registry.read("orphan")).root == "lone"


async def test_a_process_rewind_is_guarded_and_idempotent(ledger: Projection) -> None:
    p = ledger
    w = Ledger(p)
    await w.add("a", "process_started")
    await w.add("b", "process_started", parent="a")
    wrong = await w.add("a", "process_cancelled")
    for name in VALKEY_LEDGER:
        await caught_up(p, name)
    events = await p.domain_store("process").read_aggregate("a")
    history = [voided_event(e) if e.stream_seq == wrong else e for e in events]
    for name in VALKEY_LEDGER:
        model: Any = p.model(name, 1)
        applied = await model.digest()
        # A stale guard (a live worker moved the process): nothing is written.
        assert await model.rewind("a", 2, events=history, guard=(0, 1)) == 2
        assert await model.digest() == applied, name
        assert await model.rewind("a", 2, events=history, guard=(2, 2)) == 2
        once = await model.digest()
        assert once != applied, name
        assert await model.rewind("a", 2, events=history, guard=(2, 2)) == 2
        assert await model.digest() == once, name
    assert (await p.model("processes", 1).read("b")).status == "running"  # type: ignore[attr-defined]


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


async def omni_history(p: Projection, aggregate_id: str, n: int, seed: int = 0) -> list[int]:
    from jetsource.domains.omni.samples import sample_history

    store = p.domain_store("omni")
    seqs = []
    for i, message in enumerate(sample_history(aggregate_id, n, seed)):
        result = await store.append(aggregate_id, [NewEvent(message)], i)
        seqs.append(int(result.stream_seqs[0]))
    return seqs


async def test_a_voided_omni_event_is_gone_from_omni_events(omni: Projection) -> None:
    from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
    from jetsource.domains.omni.reads import OmniReads

    p = omni
    seqs = await omni_history(p, "evt-a", 3)  # received, processing, completed
    received = await omni_history(p, "evt-b", 2, seed=2)
    idn = await omni_history(p, "idn-a", 2, seed=1)
    for name in (OMNI_EVENTS, OMNI_IDENTITIES):
        await caught_up(p, name)

    async def active(name: str) -> int:
        return 1

    reads = OmniReads(p.redis, p.settings.projector.valkey_prefix, active, None, None)  # type: ignore[arg-type]
    done = (await reads.event("evt-a")).status.state
    before = await p.model(OMNI_EVENTS, 1).digest()

    report = await void_sequence(p, seqs[2], "not completed", "tester", domain="omni")
    entry = report.models[f"{OMNI_EVENTS} v1"]
    assert entry["replayed"] and not entry["failed"], entry
    after = (await reads.event("evt-a")).status.state
    assert after != done and after == (await reads.event("evt-b")).status.state
    # A stale guard writes nothing; the same rewind twice writes the same.
    model: Any = p.model(OMNI_EVENTS, 1)
    history = await p.domain_store("omni").read_aggregate("evt-a")
    once = await model.digest()
    assert await model.rewind("evt-a", 3, events=history, guard=(0, 2)) == 3
    assert await model.rewind("evt-a", 3, events=history, guard=(3, 3)) == 3
    assert await model.digest() == once
    # EventReceived voided: its processing status would be refused by a rebuild (a
    # dead letter), which a write from the history cannot give: the report says so.
    refused = await void_sequence(p, received[0], "never received", "tester", domain="omni")
    assert "rebuild" in str(refused.models[f"{OMNI_EVENTS} v1"]["failed"]), refused.models
    # omni_identities cannot write one identity alone: the report names the rebuild.
    merged = await void_sequence(p, idn[1], "not linked", "tester", domain="omni")
    failed = str(merged.models[f"{OMNI_IDENTITIES} v1"]["failed"])
    assert f"projector rebuild {OMNI_IDENTITIES} --to-version 2" in failed, failed

    await omni_history(p, "evt-c", 2, seed=4)
    live = await caught_up(p, OMNI_EVENTS)
    assert (await reads.event("evt-c")).event.id == "evt-c"
    assert await live.model.digest() != before
    # evt-b stays as it was live (the rebuild parks it): compare without it.
    clean = await caught_up(p, OMNI_EVENTS, 2)
    assert [d.aggregate_id for d in await p.dead_letters.list(clean.spec)] == ["evt-b"]
    rebuilt: Any = clean.model
    for m in (model, rebuilt):
        await m.rewind("evt-b", 0, events=[], guard=(0, 2))
    assert await live.model.digest() == await clean.model.digest()
