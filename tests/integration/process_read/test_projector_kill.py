"""Kill -9 of the projector while processes are recorded (#15, a `make chaos` row): the
process read models lose nothing and apply nothing twice.

Writers record a random forest of processes (children often before parents, several
writers on one process) into PROCESS_EVENTS while the projector, running only the
process models as its own process, is killed with SIGKILL three times and started
again. Then the registry, the timelines and the graph equal the fold of the log, as in
the model-based test (an event applied twice would double a count or a timeline entry;
one lost would leave a gap or a stale row)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import free_port
from jetsource.domains.process.descriptor import DOMAIN as PROCESS_DOMAIN
from jetsource.domains.process.models import PROCESS_GRAPH, PROCESSES, TIMELINE
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from tests.integration.process_read.ledger import (
    Ev,
    Writer,
    caught_up,
    forest,
    forget_consumers,
    histories,
)
from tests.integration.process_read.test_model_based import verify
from tests.projector_fixtures import projector_settings, start_projector
from tests.stack import environment

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
MODELS = [PROCESSES, TIMELINE, PROCESS_GRAPH]


@pytest.fixture
async def ledger(
    settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[Projection, dict[str, str]]]:
    ps = projector_settings(settings, unique, models=MODELS, http_port=free_port())
    p = await open_projection(ps, domains=DomainRegistry([PROCESS_DOMAIN]))
    await p.domain_store("process").ensure_streams()
    await forget_consumers(p.nc, PROCESS_DOMAIN.stream)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= environment(ps)
    env["JETSOURCE_LOG_LEVEL"] = "WARNING"
    yield p, env
    await forget_consumers(p.nc, PROCESS_DOMAIN.stream)
    for name in MODELS:
        await p.model(name, 1).drop()
    await p.close()


async def test_kill_9_of_the_projector_loses_and_doubles_nothing(
    nc: NATS, ledger: tuple[Projection, dict[str, str]], unique: str, tmp_path: Path
) -> None:
    p, env = ledger
    rng = random.Random(99)
    parents = forest(rng, roots=6, fanout=3, depth=4)
    plan = histories(rng, parents, base_ns=1_700_000_000_000_000_000)
    rename = {pid: f"{unique}-{pid}" for pid in plan}
    for evs in plan.values():
        for e in evs:
            e.process_id = rename[e.process_id]
            e.parent = rename.get(e.parent, "")
    writer = Writer(nc, PROCESS_DOMAIN)
    order = list(plan)
    rng.shuffle(order)
    queues: list[list[Ev]] = [[] for _ in range(4)]
    for i, pid in enumerate(order):
        cut = rng.randint(0, len(plan[pid]))
        queues[i % 4].extend(plan[pid][:cut])
        queues[(i + 1) % 4].extend(plan[pid][cut:])

    async def write(queue: list[Ev]) -> None:
        for ev in queue:
            await writer.record(ev)
            await asyncio.sleep(0.004)  # spread the writes over the kills

    log = tmp_path / "projector.log"
    proc = start_projector(env, log)
    writing = asyncio.gather(*(write(q) for q in queues))
    kills = 0
    try:
        while not writing.done() or kills < 3:
            await asyncio.sleep(rng.uniform(0.8, 1.6))
            if kills < 3:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
                proc = start_projector(env, log)
        await writing
        store = p.domain_store("process")
        last = (await store.stream_info())["state"]["last_seq"]
        started = time.monotonic()
        while not (await caught_up(p, MODELS, last))[0]:
            assert time.monotonic() - started < 90, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(15)
    assert kills == 3
    sent = {e.event_id for evs in plan.values() for e in evs}
    await verify(p, set(rename.values()), sent)
