"""Projector entrypoint: one worker per live (model, version), kept in step with the
read-model control entries; /metrics and /healthz over HTTP; SIGTERM finishes the
batch in progress, then stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from jetsource.core.grpcserver import stop_on_signals
from jetsource.core.runner import run_service
from jetsource.domain.context.serialize import STATE_SCHEMA_VERSION
from jetsource.projector.bootstrap import Projection, open_projection
from jetsource.projector.graph_model import GRAPH
from jetsource.projector.runtime import Worker
from jetsource.projector.settings import ProjectorOptions, ProjectorSettings
from jetsource.projector.valkey_models import CONTEXT, TIMELINE
from jetsource.snapshotter.model import SNAPSHOTS

log = logging.getLogger("jetsource.projector")


@dataclass
class ProjectorService:
    projection: Projection
    workers: dict[tuple[str, int], tuple[Worker, asyncio.Task[None]]] = field(default_factory=dict)
    stopping: bool = False

    @property
    def options(self) -> ProjectorOptions:
        return self.projection.settings.projector

    async def sync(self) -> None:
        """Start a worker for every live version of the configured models; stop the
        ones whose version is gone (dropped after a cutover)."""
        wanted: set[tuple[str, int]] = set()
        for name in self.options.models:
            if name == SNAPSHOTS:  # its version follows the state schema, not a cutover
                wanted.add((name, STATE_SCHEMA_VERSION))
                continue
            control = await self.projection.control.ensure(name, 1)
            wanted |= {(name, v) for v in control.live()}
        for key in wanted - set(self.workers):
            worker = Worker(
                self.projection.nc,
                self.projection.store,
                self.projection.model(*key),
                self.projection.dead_letters,
                self.options,
            )
            task = asyncio.create_task(worker.run(), name=f"worker-{key[0]}-v{key[1]}")
            self.workers[key] = (worker, task)
            log.info("started %s v%d", *key)
        for key in set(self.workers) - wanted:
            await self._stop_worker(key)
        for key, (_, task) in list(self.workers.items()):
            if task.done():  # crashed: log and restart on the next sync
                exc = task.exception()
                log.error("worker %s v%d stopped: %r", *key, exc)
                del self.workers[key]

    async def _stop_worker(self, key: tuple[str, int]) -> None:
        worker, task = self.workers.pop(key)
        worker.stop()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(task, self.options.shutdown_grace_s)
        log.info("stopped %s v%d", *key)

    def healthy(self) -> bool:
        return (
            not self.stopping
            and self.projection.nc.is_connected
            and bool(self.workers)
            and all(not t.done() for _, t in self.workers.values())
        )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sync()
            except Exception as exc:  # NATS briefly away: keep the workers, retry
                log.warning("control sync failed: %r", exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.options.control_poll_s)
        self.stopping = True
        for worker, _ in self.workers.values():
            worker.stop()
        await asyncio.gather(
            *(asyncio.wait_for(t, self.options.shutdown_grace_s) for _, t in self.workers.values()),
            return_exceptions=True,
        )


async def http_server(service: ProjectorService, host: str, port: int) -> asyncio.Server:
    """/metrics (Prometheus text) and /healthz (200 when every worker runs)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            path = request.split(b" ")[1].decode() if request.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path.startswith("/healthz") or path.startswith("/readyz"):
                ok = service.healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", b"ok\n" if ok else b"unhealthy\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve(settings: ProjectorSettings, name: str = "projector") -> None:
    projection = await open_projection(settings, provision=True)
    o = settings.projector
    try:
        await projection.check_access(
            valkey=bool({CONTEXT, TIMELINE} & set(o.models)), graph=GRAPH in o.models
        )
    except BaseException:
        await projection.close()
        raise
    service = ProjectorService(projection)
    server = await http_server(service, o.host, o.http_port) if o.http_port else None
    stop = stop_on_signals()
    log.info("%s running models %s", name, ", ".join(o.models))
    await service.run(stop)
    log.info("%s stopped", name)
    if server is not None:
        server.close()
    await projection.close()


def main() -> None:
    run_service("projector", ProjectorSettings.load(), serve)


if __name__ == "__main__":
    main()
