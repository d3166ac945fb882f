"""`jetsource infra up | status | down`: the local servers as one unit.

State (pids, addresses) lives in ``<home>/infra.json``; data under ``<home>/data``,
so it survives a down/up cycle. A server whose URL is set in settings is
external: it is probed, never started or stopped.

`up` starts exactly what is down: a server that answers is left alone whoever
started it (a hand restart with the same config is found by its pid file or
command line); one that died is started again on its data. A local nats-server
that cannot write JetStream (a full disk leaves a stream refusing writes until
restart) is restarted once the disk has room again.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.probes import nats_condition, probe_graph, probe_nats, probe_valkey
from jetsource.devstack.servers import (
    DISK_LOW_BYTES,
    ArcadeGraphServer,
    EmbeddedServer,
    JetStreamCondition,
    NatsServer,
    ServerError,
    ValkeyServer,
    port_open,
    read_state,
    stop_pid,
)

log = logging.getLogger("jetsource.devstack")


class AlreadyRunningError(ServerError):
    """Kept for callers of old: `up` no longer refuses while servers run."""


@dataclass
class ServerStatus:
    name: str
    address: str
    managed: bool  # started by us (False: external URL from settings)
    pid: int | None
    healthy: bool
    version: str
    detail: str = ""


@dataclass
class UpResult:
    started: list[str]  # servers started (or restarted) by this `up`
    statuses: list[ServerStatus]

    @property
    def already_running(self) -> bool:
        return not self.started


# The setting that points at each external server, named when it does not answer.
URL_SETTINGS = {
    "nats": "JETSOURCE_NATS__URL",
    "valkey": "JETSOURCE_VALKEY__URL",
    "graph": "JETSOURCE_GRAPH__URI",
}

# The setting that moves each port, named in a port-conflict error.
PORT_SETTINGS = {
    "nats_port": "JETSOURCE_DEVSTACK__NATS_PORT",
    "nats_monitor_port": "JETSOURCE_DEVSTACK__NATS_MONITOR_PORT",
    "valkey_port": "JETSOURCE_DEVSTACK__VALKEY_PORT",
    "graph_http_port": "JETSOURCE_DEVSTACK__GRAPH_HTTP_PORT",
    "graph_bolt_port": "JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT",
}


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

    def _known_pid(self, name: str) -> int | None:
        entry = self._read_state().get("servers", {}).get(name) or {}
        pid = entry.get("pid")
        return int(pid) if pid else None

    def _save(self, name: str, pid: int | None, address: str) -> None:
        state = self._read_state()
        servers = state.setdefault("servers", {})
        if pid is None:
            servers.pop(name, None)
        else:
            servers[name] = {"pid": pid, "address": address}
        state.setdefault("started_at", time.time())
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self) -> dict[str, int]:
        """The local servers whose process runs now (by pid file or command line)."""
        out = {}
        for name, server in self.embedded().items():
            if server is not None and (pid := server.find_pid(self._known_pid(name))):
                out[name] = pid
        return out

    @staticmethod
    def _answers(server: EmbeddedServer) -> bool:
        try:
            return server.ready()
        except Exception:
            return False

    def up(self) -> UpResult:
        """Start each local server that is down; leave the ones that answer alone."""
        started: list[str] = []
        for name, server in self.embedded().items():
            if server is None:
                continue
            pid = server.find_pid(self._known_pid(name))
            recovered = (
                pid is not None
                and isinstance(server, NatsServer)
                and self._recover_nats(server, pid)
            )
            if recovered:
                started.append(name)
                continue
            if pid is not None and self._answers(server):
                self._save(name, pid, server.address())
                continue
            if pid is not None:
                # Its process runs but does not answer: give it the start-up time, then
                # replace it (a wedged server is what `up` is asked to fix).
                try:
                    server.wait_ready(None, self.settings.devstack.ready_timeout_s)
                    self._save(name, pid, server.address())
                    continue
                except ServerError:
                    log.warning("%s (pid %d) does not answer: restarting it", name, pid)
                    stop_pid(pid)
            self._start(name, server)
            started.append(name)
        return UpResult(started, self.status())

    def _start(self, name: str, server: EmbeddedServer) -> None:
        try:
            proc = server.start()
        except ServerError as exc:
            raise ServerError(f"{exc}{self._port_hint(name)}") from exc
        self._save(name, proc.pid, server.address())
        try:
            server.wait_ready(proc, self.settings.devstack.ready_timeout_s)
        except BaseException:
            stop_pid(proc.pid)
            self._save(name, None, server.address())
            raise

    def _port_hint(self, name: str) -> str:
        hints = [v for k, v in PORT_SETTINGS.items() if k.startswith(name)]
        return f" (move it with {' / '.join(hints)})" if hints else ""

    def _recover_nats(self, server: NatsServer, pid: int) -> bool:
        """A nats-server that answers but cannot write JetStream: after a full disk,
        nats-server 2.15 keeps the stream that hit it refusing writes (and may disable
        JetStream) until it is restarted, even once space is freed. Restart it when
        the disk has room again; raise with what to do while it has none."""
        try:
            condition = server.jetstream_condition()
        except Exception:
            return False
        if not (condition.disabled or condition.write_error):
            return False
        if condition.disk_free is not None and condition.disk_free < DISK_LOW_BYTES:
            raise ServerError(
                f"nats: {condition.describe()}. Free space on the filesystem of "
                f"{server.store_dir()}, then run `jetsource infra up` again: it restarts "
                "nats-server, which then accepts writes (nothing stored is lost)"
            )
        log.warning("nats: %s; restarting nats-server (pid %d)", condition.describe(), pid)
        if not stop_pid(pid):
            raise ServerError(f"nats (pid {pid}) did not stop")
        self._start("nats", server)
        return True

    def status(self) -> list[ServerStatus]:
        out = []
        for name, server in self.embedded().items():
            if server is None:
                out.append(self._probe_external(name))
                continue
            pid = server.find_pid(self._known_pid(name))
            try:
                healthy = server.ready()
                version = server.version() if healthy else ""
                detail = "" if healthy else "not answering"
            except Exception as exc:
                healthy, version, detail = False, "", str(exc)
            if not healthy and pid is None:
                listening = any(port_open(server.host, p) for p in server.ports())
                detail = f"port busy, not answering: {detail}" if listening else "stopped"
            if healthy and isinstance(server, NatsServer):
                healthy, detail = self._nats_detail(server)
            out.append(ServerStatus(name, server.address(), True, pid, healthy, version, detail))
        return out

    @staticmethod
    def _nats_detail(server: NatsServer) -> tuple[bool, str]:
        try:
            condition: JetStreamCondition = server.jetstream_condition()
        except Exception as exc:
            return False, f"JetStream state unknown: {exc}"
        detail = condition.describe()
        if not condition.writable:
            detail += "; `jetsource infra up` restarts it once the disk has room"
        return condition.writable, detail

    def _probe_external(self, name: str) -> ServerStatus:
        s = self.settings
        address = {"nats": s.nats_url, "valkey": s.valkey_url, "graph": s.graph_uri}[name]()
        try:
            if name == "nats":
                version = probe_nats(address)
                writable, detail = nats_condition(address)
                return ServerStatus(
                    name, address, False, None, writable, version, f"external; {detail}"
                )
            elif name == "valkey":
                version = probe_valkey(address)
            else:
                version = probe_graph(s)
            return ServerStatus(name, address, False, None, True, version, "external")
        except Exception as exc:
            # One line naming what failed and the setting that points there (an external
            # NATS that was down read "external: " after 6 s: an empty TimeoutError).
            why = " ".join(str(exc).split()) or type(exc).__name__
            return ServerStatus(
                name,
                address,
                False,
                None,
                False,
                "",
                f"external: {why}; check {URL_SETTINGS[name]}",
            )

    def down(self) -> list[str]:
        stopped = []
        # Reverse start order: the graph store and Valkey before NATS.
        for name, server in reversed(list(self.embedded().items())):
            if server is None:
                continue
            known = self._known_pid(name)
            pid = server.find_pid(known)
            if pid is None:
                if known is not None:
                    stopped.append(name)  # it had died: nothing left to stop
                continue
            if not stop_pid(pid):
                raise ServerError(f"{name} (pid {pid}) did not stop")
            stopped.append(name)
        self.state_file.unlink(missing_ok=True)
        return stopped
