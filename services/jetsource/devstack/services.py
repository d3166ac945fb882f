"""jetsource's own services as local background processes, beside the embedded servers.

`jetsource up` starts them after the servers; `jetsource down` (and `infra down`) stops
them first. Each is ready when its gRPC health check answers SERVING (the projector and
snapshotter: when /healthz answers 200). `up` starts exactly the services whose process
is gone; a running one that is slow to answer is left alone, never killed for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

import jetsource
from jetsource.core.settings import JetsourceSettings, env_var
from jetsource.devstack.servers import (
    EmbeddedServer,
    ServerError,
    process_cmdline,
    process_cwd,
    read_state,
    stop_pids,
)
from jetsource.ingest.settings import IngestSettings
from jetsource.observer.settings import ObserverSettings
from jetsource.processquery.settings import ProcessQuerySettings
from jetsource.projection.settings import ProjectorSettings
from jetsource.publisher.settings import PublisherSettings
from jetsource.query.settings import QuerySettings
from jetsource.snapshotter.settings import SnapshotterSettings


class GrpcService(EmbeddedServer):
    def __init__(
        self,
        name: str,
        module: str,
        data_dir: Path,
        host: str,
        port: int,
        env: dict[str, str] | None = None,
        health_port: int | None = None,
        port_settings: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__(data_dir, host)
        self.name = name
        self.module = module
        self.port = port
        self.env = env
        # With TLS on, readiness is asked on the plain-text health-only port.
        self.health_port = health_port
        # Each port the service listens on -> the setting that moves it.
        self.port_settings = dict(port_settings or {})

    def environment(self) -> dict[str, str] | None:
        return self.env

    def ports(self) -> list[int]:
        return list(dict.fromkeys([self.port, *(p for p in self.port_settings if p)]))

    def port_setting(self, port: int) -> str | None:
        return self.port_settings.get(port)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module]

    def owns(self, pid: int) -> bool:
        """``python -m <module>`` running in this service's directory."""
        cmdline = process_cmdline(pid)
        if cmdline is None:
            return True  # no /proc to ask
        cwd = process_cwd(pid)
        return f"-m {self.module}" in cmdline and (
            cwd is None or cwd.resolve() == self.data_dir.resolve()
        )

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ready(self) -> bool:
        with grpc.insecure_channel(f"{self.host}:{self.health_port or self.port}") as channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def version(self) -> str:
        return jetsource.__version__


class WorkerService(GrpcService):
    """A service without a gRPC API (projector, snapshotter): ready when its HTTP
    /healthz answers 200."""

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://{self.address()}/healthz", timeout=2.0).status_code == 200
        except httpx.HTTPError:  # refused, or slow to answer: not ready (yet)
            return False


def _others(running: list[str], later: list[GrpcService]) -> str:
    """What a failed `up` says of the other services: those running are left so
    (`up` again starts only what is missing), those after the failed one not started."""
    parts = []
    if running:
        parts.append(
            f"left running: {', '.join(running)} (`jetsource down`, or `make down`, stops "
            "them; `jetsource up`, or `make up`, again starts only what is not running)"
        )
    if later:
        parts.append(f"not started: {', '.join(s.name for s in later)}")
    return "".join(f"\n{p}" for p in parts)


@dataclass
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    healthy: bool
    started: bool = True  # False: never started by `jetsource up` in this home
    detail: str = ""


def port_settings(settings: JetsourceSettings, section: str, *fields: str) -> dict[int, str]:
    """Each port ``fields`` of ``settings.<section>`` give (0: none) -> its variable."""
    options = getattr(settings, section)
    return {
        port: env_var(type(settings), section, f) for f in fields if (port := getattr(options, f))
    }


class LocalServices:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_file = home / "services.json"

    def services(self) -> list[GrpcService]:
        publisher = PublisherSettings.load()
        projector = ProjectorSettings.load()
        snapshotter = SnapshotterSettings.load()
        query = QuerySettings.load()
        observer = ObserverSettings.load()
        process_query = ProcessQuerySettings.load()
        ingest = IngestSettings.load()
        grpc_ports = ("grpc_port", "metrics_port")
        return [
            GrpcService(
                "publisher",
                "jetsource.publisher.server",
                self.home / "services" / "publisher",
                publisher.publisher.grpc_host,
                publisher.publisher.grpc_port,
                port_settings=port_settings(publisher, "publisher", *grpc_ports),
            ),
            WorkerService(
                "projector",
                "jetsource.projector.server",
                self.home / "services" / "projector",
                projector.projector.host,
                projector.projector.http_port,
                port_settings=port_settings(projector, "projector", "http_port"),
            ),
            WorkerService(
                "snapshotter",
                "jetsource.snapshotter.server",
                self.home / "services" / "snapshotter",
                snapshotter.snapshotter.host,
                snapshotter.snapshotter.http_port,
                port_settings=port_settings(snapshotter, "snapshotter", "http_port"),
            ),
            GrpcService(
                "query",
                "jetsource.query.server",
                self.home / "services" / "query",
                query.query.grpc_host,
                query.query.grpc_port,
                port_settings=port_settings(query, "query", *grpc_ports),
            ),
            GrpcService(
                "observer",
                "jetsource.observer.server",
                self.home / "services" / "observer",
                observer.observer.grpc_host,
                observer.observer.grpc_port,
                port_settings=port_settings(observer, "observer", *grpc_ports),
            ),
            GrpcService(
                "process-query",
                "jetsource.processquery.server",
                self.home / "services" / "process-query",
                process_query.process_query.grpc_host,
                process_query.process_query.grpc_port,
                port_settings=port_settings(process_query, "process_query", *grpc_ports),
            ),
            # The omni ingress: webhooks and REST on HTTP (ready on /healthz), gRPC beside.
            WorkerService(
                "ingest",
                "jetsource.ingest.server",
                self.home / "services" / "ingest",
                ingest.ingest.host,
                ingest.ingest.http_port,
                port_settings=port_settings(ingest, "ingest", "http_port", "grpc_port"),
            ),
        ]

    def _state(self) -> dict[str, Any]:
        return read_state(self.state_file)

    def _save(self, state: dict[str, Any]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def up(self, timeout: float = 60.0) -> list[ServiceStatus]:
        """Start each service whose process is gone and wait until it is ready. One
        that runs is left alone; one that does not get ready in ``timeout`` is left
        running (it may be catching up) and named in the error. One that cannot start
        (it exited) ends it: the error says why (its log lines of this start), which
        services run (left running) and which were not started."""
        state = self._state()
        slow: list[str] = []
        services = self.services()
        running: list[str] = []
        for i, service in enumerate(services):
            entry = state.get(service.name) or {}
            pid = service.find_pid(entry.get("pid"))
            if pid is not None:
                state[service.name] = {"pid": pid, "address": service.address()}
                self._save(state)
                running.append(service.name)
                continue
            try:
                proc = service.start()
            except ServerError as exc:
                raise ServerError(f"{exc}{_others(running, services[i + 1 :])}") from exc
            state[service.name] = {"pid": proc.pid, "address": service.address()}
            self._save(state)
            try:
                service.wait_ready(proc, timeout)
            except ServerError as exc:
                if proc.poll() is not None:  # it exited: nothing to wait for
                    raise ServerError(f"{exc}{_others(running, services[i + 1 :])}") from exc
                slow.append(f"{service.name} (pid {proc.pid}): {exc}")
            running.append(service.name)
        if slow:
            raise ServerError(
                "still starting, left running: " + "; ".join(slow) + " (`jetsource infra "
                "status` shows when they are healthy)"
            )
        return self.status()

    def status(self) -> list[ServiceStatus]:
        state = self._state()
        out = []
        for service in self.services():
            entry = state.get(service.name)
            pid = service.find_pid((entry or {}).get("pid"))
            try:
                healthy = pid is not None and service.ready()
            except Exception:
                healthy = False
            if pid is None:
                detail = "stopped" if entry else "not started (`jetsource up` starts it)"
            else:
                detail = "" if healthy else "not ready"
            out.append(
                ServiceStatus(
                    service.name,
                    service.address(),
                    pid,
                    healthy,
                    started=entry is not None or pid is not None,
                    detail=detail,
                )
            )
        return out

    def down(self) -> list[str]:
        """Stop every running service, all at once (their graceful stops overlap)."""
        state = self._state()
        running: dict[str, int] = {}
        for service in self.services():
            entry = state.get(service.name)
            pid = service.find_pid((entry or {}).get("pid"))
            if pid is not None:
                running[service.name] = pid
        left = stop_pids(list(running.values()))
        if left:
            names = [f"{n} (pid {pid})" for n, pid in running.items() if pid in left]
            raise ServerError(f"{', '.join(names)} did not stop")
        self.state_file.unlink(missing_ok=True)
        return list(running)
