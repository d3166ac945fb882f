"""The query service as several worker processes on one port (``query.workers``).

Real servers and real processes (publisher, projector, query with 2 workers): reads from
many clients, each on its own connection, all answer and both workers serve some
(counted on each worker's /metrics); a worker killed with SIGKILL is restarted while
clients carry on; SIGTERM stops every worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetsource.client import ContextClient, QueryClient
from jetsource.core.settings import JetsourceSettings
from jetsource.core.workers import WORKER_METRICS_STEP as STEP
from tests.e2e.cli_fixtures import isolated_services
from tests.e2e.test_publisher_workers import alive, both_up, children, free_pair
from tests.stack import Services

pytestmark = pytest.mark.e2e


def reads_served(metrics_port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith('jetsource_query_requests_total{method="GetContext"')
    )


@pytest.fixture
def stack(settings: JetsourceSettings, tmp_path: Path) -> Iterator[tuple[Services, int]]:
    services = isolated_services(settings, tmp_path)
    metrics = free_pair(avoid=services.ports["query"])
    services.env["JETSOURCE_QUERY__WORKERS"] = "2"
    services.env["JETSOURCE_QUERY__METRICS_PORT"] = str(metrics)
    services.env["JETSOURCE_QUERY__SHUTDOWN_GRACE_S"] = "2"
    workers: list[int] = []
    try:
        for name in ("publisher", "projector", "query"):
            services.start(name)
        workers = children(services.procs["query"].pid)
        yield services, metrics
    finally:
        workers += children(services.procs["query"].pid) if "query" in services.procs else []
        services.stop_all()
        for child in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


async def test_two_query_workers_share_the_port(stack: tuple[Services, int]) -> None:
    services, metrics = stack
    proc = services.procs["query"]
    assert await both_up(proc, metrics, reads_served)
    stories = [f"qw{i}" for i in range(16)]
    async with ContextClient(services.address("publisher"), timeout=30) as c:
        for s in stories:
            await c.create_context(s, s)
            await c.add_decision(s, "d1", "first")

    async def reader(story: str) -> list[int]:
        async with QueryClient(services.address("query"), timeout=30) as q:
            return [(await q.get_context(story, min_version=2)).context.version for _ in range(5)]

    results = await asyncio.gather(*(reader(s) for s in stories))
    assert all(r == [2] * 5 for r in results)
    served = [reads_served(metrics), reads_served(metrics + STEP)]
    assert sum(served) >= 16 * 5
    assert all(n > 0 for n in served), f"one worker took every connection: {served}"

    # A worker killed with SIGKILL comes back; a client carries on meanwhile.
    victim = children(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    async with QueryClient(services.address("query"), timeout=30) as q:
        for _ in range(20):
            assert (await q.get_context("qw0")).context.version == 2
    assert await both_up(proc, metrics, reads_served)
    assert victim not in children(proc.pid)

    # SIGTERM stops them all.
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its supervisor"
