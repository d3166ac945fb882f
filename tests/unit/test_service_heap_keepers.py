"""jetsource-ingest and the process query service keep their heaps as the publisher,
the observer and the projector do (jetsource.core.heap): full collections walked the
modules and what lives for nothing, a pause of every call in flight (gc.callbacks in
each under load: the ingest at 200 webhooks/s 2-3 gen-2 collections of 65-376 ms per
6,000 webhooks, the process query 3 of 81-128 ms per 7,900 reads; none with the
keeper). ``JETSOURCE_INGEST__FREEZE_EVERY_S`` / ``JETSOURCE_PROCESS_QUERY__FREEZE_EVERY_S``
(1 s; 0 leaves the collector as it is)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from jetsource.ingest import server as ingest_server
from jetsource.ingest.settings import IngestOptions, IngestSettings
from jetsource.processquery import server as pq_server
from jetsource.processquery.settings import ProcessQueryOptions, ProcessQuerySettings


class FakeServer:
    """What serve() uses of a built service: no servers (the keeper is what is tested)."""

    def __init__(self) -> None:
        self.nc = type("NC", (), {"is_connected": True})()
        self.grpc = type("Grpc", (), {"port": 0})()
        self.port = self.http_port = 0
        self.valkey_down = False
        self.stopped = False

    async def start_http(self, host: str, port: int) -> None:
        pass

    async def stop(self, grace: float) -> None:
        self.stopped = True


def ingest_settings(every_s: float) -> IngestSettings:
    return IngestSettings(ingest=IngestOptions(freeze_every_s=every_s))


def pq_settings(every_s: float) -> ProcessQuerySettings:
    return ProcessQuerySettings(
        process_query=ProcessQueryOptions(freeze_every_s=every_s, metrics_port=0)
    )


SERVICES = {
    "ingest": (ingest_server, "follow_reads", ingest_settings),
    "process-query": (pq_server, "follow_valkey", pq_settings),
}


def keepers() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "HeapKeeper.keep" and not t.done()
    ]


async def serving(monkeypatch: pytest.MonkeyPatch, service: str, every_s: float) -> tuple[int, int]:
    """Run the service's serve() with ``freeze_every_s``; the frozen objects and running
    keepers while it serves, then stop it as SIGTERM does."""
    module, follow, settings = SERVICES[service]
    fake = FakeServer()
    stop = asyncio.Event()

    async def build(_: Any) -> FakeServer:
        return fake

    async def following(server: Any, every_s: float) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(module, "build", build)
    monkeypatch.setattr(module, follow, following)
    monkeypatch.setattr(module, "watch_nats", lambda nc, name: asyncio.create_task(stop.wait()))
    monkeypatch.setattr(module, "stop_on_signals", lambda: stop)
    gc.unfreeze()
    try:
        task = asyncio.create_task(module.serve(settings(every_s)))
        await asyncio.sleep(0.1)
        assert not task.done()
        frozen, running = gc.get_freeze_count(), len(keepers())
        stop.set()
        await asyncio.wait_for(task, 5)
        assert fake.stopped
        await asyncio.sleep(0)
        assert keepers() == []  # cancelled with the rest at shutdown
        return frozen, running
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("service", list(SERVICES))
async def test_the_service_keeps_its_heap_while_it_serves(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    frozen, running = await serving(monkeypatch, service, 0.05)
    assert frozen > 0  # start-up's objects out of the full walks
    assert running == 1


@pytest.mark.parametrize("service", list(SERVICES))
async def test_freeze_every_0_leaves_the_collector_as_it_is(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    frozen, running = await serving(monkeypatch, service, 0)
    assert frozen == 0 and running == 0


@pytest.mark.parametrize("options", [IngestOptions, ProcessQueryOptions])
def test_the_setting_is_the_services_own(options: type[Any]) -> None:
    assert options().freeze_every_s == 1.0
    with pytest.raises(ValueError):
        options(freeze_every_s=-1)
