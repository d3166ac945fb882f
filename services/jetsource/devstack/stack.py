"""`jetsource infra up | status | down`: the local servers as one unit.

State (pids, addresses) lives in ``<home>/infra.json``; data under ``<home>/data``,
so it survives a down/up cycle. A server whose URL is set in settings is
external: it is probed, never started or stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.probes import probe_graph, probe_nats, probe_valkey
from jetsource.devstack.servers import (
    ArcadeGraphServer,
    EmbeddedServer,
    NatsServer,
    ServerError,
    ValkeyServer,
    pid_alive,
    read_state,
    stop_pid,
)


class AlreadyRunningError(ServerError):
    """`infra up` while the local servers already run."""


@dataclass
class ServerStatus:
    name: str
    address: str
    managed: bool  # started by us (False: external URL from settings)
    pid: int | None
    healthy: bool
    version: str
    detail: str = ""


class LocalStack:
    def __init__(self, settings: JetsourceSettings) -> None:
        self.settings = settings
        self.home = settings.devstack.home.resolve()
        self.state_file = self.home / "infra.json"

    def embedded(self) -> dict[str, EmbeddedServer | None]:
        """Each server's launcher, or None when settings point at an external one."""
        d = self.settings.devstack
        data = self.home / "data"
        return {
            "nats": None
            if self.settings.nats.url
            else NatsServer(
                data / "nats", d.host, d.nats_port, d.nats_monitor_port, d.nats_sync_interval
            ),
            "valkey": None
            if self.settings.valkey.url
            else ValkeyServer(data / "valkey", d.host, d.valkey_port),
            "graph": None
            if self.settings.graph.uri
            else ArcadeGraphServer(
                data / "graph",
                d.host,
                d.graph_http_port,
                d.graph_bolt_port,
                d.graph_password.get_secret_value(),
                self.settings.graph.database,
                d.graph_heap,
            ),
        }

    def _read_state(self) -> dict[str, Any]:
        return read_state(self.state_file)

    def running(self) -> dict[str, int]:
        return {
            name: entry["pid"]
            for name, entry in self._read_state().get("servers", {}).items()
            if pid_alive(entry["pid"])
        }

    def up(self) -> list[ServerStatus]:
        alive = self.running()
        if alive:
            listed = ", ".join(f"{n} (pid {p})" for n, p in alive.items())
            raise AlreadyRunningError(
                f"local servers already running: {listed}; `jetsource infra status` shows them, "
                "`jetsource infra down` stops them"
            )
        started: dict[str, dict[str, Any]] = {}
        try:
            for name, server in self.embedded().items():
                if server is None:
                    continue
                proc = server.start()
                started[name] = {"pid": proc.pid, "address": server.address()}
                server.wait_ready(proc, self.settings.devstack.ready_timeout_s)
        except BaseException:
            for entry in started.values():
                stop_pid(entry["pid"])
            raise
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps({"started_at": time.time(), "servers": started}, indent=2)
        )
        return self.status()

    def status(self) -> list[ServerStatus]:
        state = self._read_state().get("servers", {})
        out = []
        for name, server in self.embedded().items():
            entry = state.get(name)
            if server is None:
                out.append(self._probe_external(name))
            elif entry is None or not pid_alive(entry["pid"]):
                out.append(ServerStatus(name, server.address(), True, None, False, "", "stopped"))
            else:
                try:
                    healthy = server.ready()
                    version = server.version() if healthy else ""
                    detail = "" if healthy else "not answering"
                except Exception as exc:
                    healthy, version, detail = False, "", str(exc)
                out.append(
                    ServerStatus(
                        name, server.address(), True, entry["pid"], healthy, version, detail
                    )
                )
        return out

    def _probe_external(self, name: str) -> ServerStatus:
        s = self.settings
        address = {"nats": s.nats_url, "valkey": s.valkey_url, "graph": s.graph_uri}[name]()
        try:
            if name == "nats":
                version = probe_nats(address)
            elif name == "valkey":
                version = probe_valkey(address)
            else:
                version = probe_graph(s)
            return ServerStatus(name, address, False, None, True, version, "external")
        except Exception as exc:
            return ServerStatus(name, address, False, None, False, "", f"external: {exc}")

    def down(self) -> list[str]:
        stopped = []
        # Reverse start order: the graph store and Valkey before NATS.
        for name, entry in reversed(list(self._read_state().get("servers", {}).items())):
            if stop_pid(entry["pid"]):
                stopped.append(name)
            else:
                raise ServerError(f"{name} (pid {entry['pid']}) did not stop")
        self.state_file.unlink(missing_ok=True)
        return stopped
