"""Chaos scenarios on a running stack under load (`make chaos`), printed as a table.

`test_short_subset` (kill -9 of the publisher and the projector under a small load)
runs in `make test`; the whole table runs in `make chaos`, one test per row (so one
row runs alone with `pytest -m chaos -s tests/chaos -k hot-story`), and the table is
printed and written to `.jetsource/chaos-table.txt` when the rows are done.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection import admin
from tests.chaos.harness import (
    HEADER,
    Fault,
    Row,
    Run,
    Stack,
    applied,
    line,
    scenario,
    start_stack,
)
from tests.chaos.pauses import (
    pause_graph,
    pause_nats,
    pause_publisher,
    pause_query,
    pause_valkey,
)
from tests.infra import Server

pytestmark = pytest.mark.e2e


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


def kill9(*names: str, times: int = 2, gap: float = 2.0) -> Fault:
    async def fault(run: Run) -> str:
        for _ in range(times):
            await _pause(gap)
            for name in names:
                run.services.kill(name, signal.SIGKILL)
            await _pause(0.3)
            for name in names:
                await asyncio.to_thread(run.services.start, name)
        return f"kill -9 {'+'.join(names)} x{times}"

    return fault


async def restart_nats(run: Run) -> str:
    await _pause(2.0)
    await asyncio.to_thread(run.stack.nats.restart, 0)
    return "nats-server restarted"


async def restart_valkey(run: Run) -> str:
    await _pause(2.0)
    await asyncio.to_thread(run.stack.restart_valkey)
    return "valkey restarted"


async def restart_graph(run: Run) -> str:
    await _pause(2.0)
    await asyncio.to_thread(run.stack.graph.restart)
    return "graph store restarted"


async def sigstop_projector(run: Run) -> str:
    await _pause(2.0)
    stopped = run.settings.projector.ack_wait_s * 3
    run.services.kill("projector", signal.SIGSTOP)
    await _pause(stopped)
    run.services.kill("projector", signal.SIGCONT)
    return f"projector stopped {stopped:.0f}s (ack wait {run.settings.projector.ack_wait_s:.0f}s)"


async def poison(run: Run) -> str:
    await _pause(1.0)
    js = run.projection.nc.jetstream()
    subject = f"{run.settings.eventstore.subject_prefix}.poison-1.x"
    await js.publish(subject, b"\xff not an event", stream=run.settings.eventstore.stream)
    return "1 undecodable message"


async def kill_stream_leader(run: Run) -> str:
    await _pause(2.0)
    stream = run.settings.eventstore.stream
    leader = await asyncio.to_thread(run.stack.nats.leader_of, stream)
    run.stack.nats.kill(leader)
    await _pause(4.0)
    await asyncio.to_thread(run.stack.nats.start, leader)
    return f"stream leader n{leader} killed, back after 4s"


def replay_under_writes(*models: str, seconds: float = 10.0) -> Fault:
    """Replays of the hot story (and of the last few hundred sequences) while its
    writers append to it; every replay must complete, and the models must end equal
    to a clean rebuild (checked after the load)."""

    async def fault(run: Run) -> str:
        await _pause(2.0)
        p, hot = run.projection, run.load.hot
        replays, failed = 0, []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for m in models:
                head = (await p.store.stream_info())["state"]["last_seq"]
                for report in (
                    await admin.replay(p, m, aggregate_id=hot),
                    await admin.replay(p, m, from_seq=max(1, head - 300)),
                ):
                    replays += 1
                    failed += list(report.failed.values())
        if failed:
            run.failures.append(f"{len(failed)} replay failures, e.g. {failed[0][:160]}")
        hot_events = len(await p.store.read_aggregate(hot))
        return f"{replays} replays of {'+'.join(models)}; hot story {hot_events} events"

    return fault


async def hot_story(run: Run) -> str:
    """Three writers on one story plus background stories; the projector killed -9
    three times. The time from the last restart to every model at the stream head
    is bounded (checked after the load, against this row's measured rebuild rate)."""
    for _ in range(3):
        await _pause(5.0)
        run.services.kill("projector", signal.SIGKILL)
        await _pause(0.3)
        run.restarted_at = time.monotonic()
        run.applied_at_restart = await applied(run)
        await asyncio.to_thread(run.services.start, "projector")
    await _pause(1.0)
    hot_events = len(await run.projection.store.read_aggregate(run.load.hot))
    return f"kill -9 projector x3; hot story {hot_events} events"


HOT = {"writers": 4, "events": 20, "hot_writers": 3}

SCENARIOS: list[tuple[str, Fault, dict[str, int]]] = [
    ("kill9-publisher", kill9("publisher"), {}),
    ("kill9-projector", kill9("projector", times=3), {}),
    ("kill9-snapshotter", kill9("snapshotter"), {}),
    ("kill9-query", kill9("query"), {}),
    ("restart-nats", restart_nats, {}),
    ("restart-valkey", restart_valkey, {}),
    ("restart-graph", restart_graph, {}),
    ("sigstop-projector", sigstop_projector, {}),
    # Four consumers see the poison (context, timeline, graph, snapshots): four letters.
    ("poison", poison, {"expected_dead_letters": 4, "poison": 1}),
    ("replay-under-writes-valkey", replay_under_writes("context", "timeline"), HOT),
    ("replay-under-writes-graph", replay_under_writes("graph"), HOT),
    ("hot-story", hot_story, HOT),
    # Hung, not gone: SIGSTOP past every client timeout, then SIGCONT (tests/chaos/pauses.py).
    ("pause-nats", pause_nats, {}),
    ("pause-valkey", pause_valkey, {}),
    ("pause-graph", pause_graph, {}),
    ("pause-publisher", pause_publisher, {}),
    ("pause-query", pause_query, {}),
]
CLUSTER = "cluster-leader-kill-r3"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, graph_server: Server) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("chaos"), graph_server)
    yield s
    s.stop()


async def _run(
    name: str, stack: Stack, settings: JetsourceSettings, fault: Fault, **kw: int
) -> Row:
    try:
        return await scenario(name, stack, settings, fault, **kw)
    except Exception as exc:  # a broken scenario is a failed row, not a lost table
        return Row(name, notes=[f"error: {exc!r}"[:300]])


def _table(rows: list[Row]) -> str:
    return "\n".join([HEADER, *(line(r) for r in rows)])


async def test_short_subset(stack: Stack, settings: JetsourceSettings) -> None:
    row = await _run(
        "kill9-publisher+projector",
        stack,
        settings,
        kill9("publisher", "projector", times=1, gap=1.5),
        writers=4,
        events=10,
    )
    print("\n" + _table([row]))
    assert row.passed, _table([row])


@pytest.fixture(scope="module")
def table() -> Iterator[list[Row]]:
    """The rows run in this session; printed and written when they are done."""
    rows: list[Row] = []
    yield rows
    if rows:
        text = _table(rows)
        print("\n" + text)
        (Path(".jetsource") / "chaos-table.txt").parent.mkdir(exist_ok=True)
        (Path(".jetsource") / "chaos-table.txt").write_text(text + "\n")


@pytest.mark.chaos
@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", [*(n for n, _, _ in SCENARIOS), CLUSTER])
async def test_chaos(
    name: str, stack: Stack, settings: JetsourceSettings, table: list[Row], tmp_path: Path
) -> None:
    if name == CLUSTER:
        cluster = start_stack(tmp_path / "cluster", stack.graph, nats_nodes=3)
        try:
            row = await _run(name, cluster, settings, kill_stream_leader, replicas=3)
        finally:
            cluster.stop()
    else:
        fault, kw = next((f, kw) for n, f, kw in SCENARIOS if n == name)
        row = await _run(name, stack, settings, fault, **kw)
    table.append(row)
    print(line(row), flush=True)
    assert row.passed, "\n".join([HEADER, line(row)])
