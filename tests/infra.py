"""Real servers for the test session: embedded (default), external, or containers.

Per server, an environment URL selects an external one:
  JETSOURCE_TEST_NATS_URL, JETSOURCE_TEST_VALKEY_URL, JETSOURCE_TEST_GRAPH_URI
  (+ JETSOURCE_TEST_GRAPH_USER / _PASSWORD / _DATABASE).
JETSOURCE_TEST_INFRA=containers starts NATS, Valkey and Neo4j 5 with testcontainers
where a Docker engine answers (and fails loudly where none does).
Otherwise each server is started from its Python wheel on free ports in a temp dir.

Every server started here is stopped when the session ends, also when pytest is
stopped by SIGTERM (a CI time limit) or SIGINT: the servers run in sessions of their
own (no terminal signal reaches them), so without this they would be orphaned.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jetsource.core.settings import GraphSettings, JetsourceSettings, NatsSettings, ValkeySettings
from jetsource.devstack.servers import (
    ArcadeGraphServer,
    EmbeddedServer,
    NatsServer,
    ValkeyServer,
    free_port,
    stop_pid,
)

MODE = os.environ.get("JETSOURCE_TEST_INFRA", "embedded")


@dataclass
class Server:
    """One running server as the tests see it."""

    kind: str  # embedded | external | containers
    url: str
    embedded: EmbeddedServer | None = None
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _stop: Callable[[], None] | None = None

    def stop(self, timeout: float = 20.0) -> None:
        _LIVE.pop(id(self), None)
        if self.proc is not None:
            stop_pid(self.proc.pid, timeout)
            self.proc.wait(timeout=5)
        if self._stop is not None:
            self._stop()

    def restart(self) -> None:
        """Stop and start an embedded server on the same ports and data (fault tests)."""
        assert self.embedded is not None, "only embedded servers can be restarted here"
        self.stop()
        self.proc = self.embedded.start()
        track(self)
        self.embedded.wait_ready(self.proc, 60)


# Servers this process started and has not stopped yet.
_LIVE: dict[int, Server] = {}
_HANDLED: dict[int, Any] = {}  # signal -> the handler ours replaced


def track(server: Server) -> Server:
    """Stop ``server`` at exit and on SIGTERM / SIGINT, whatever else happens."""
    _LIVE[id(server)] = server
    _install_stop_handlers()
    return server


def stop_all(timeout: float = 5.0) -> None:
    """Stop every server still running (SIGTERM, SIGKILL after ``timeout``)."""
    for server in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            server.stop(timeout)


def _on_signal(signum: int, frame: Any) -> None:
    stop_all()
    previous = _HANDLED.pop(signum, signal.SIG_DFL)
    signal.signal(signum, previous)
    if callable(previous):
        previous(signum, frame)  # SIGINT: pytest's KeyboardInterrupt
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # the default action: die of that signal


def _install_stop_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can be set from the main thread only
    for sig in (signal.SIGTERM, signal.SIGINT):
        if sig in _HANDLED:
            continue
        current = signal.getsignal(sig)
        if current is _on_signal:
            continue
        _HANDLED[sig] = current
        signal.signal(sig, _on_signal)


atexit.register(stop_all)


def _embedded(server: EmbeddedServer, **extra: Any) -> Server:
    proc = server.start()
    started = track(Server("embedded", server.address(), server, proc, extra))
    try:
        server.wait_ready(proc, 90)
    except BaseException:
        started.stop()
        raise
    return started


def _docker() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception as exc:
        raise RuntimeError(
            "JETSOURCE_TEST_INFRA=containers needs a Docker engine and "
            f"`pip install 'jetsource[containers]'`: {exc}"
        ) from exc


def _container(image: str, port: int, command: str | None = None, **env: str) -> tuple[Any, str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    _docker()
    container = DockerContainer(image).with_exposed_ports(port)
    if command:
        container = container.with_command(command)
    for key, value in env.items():
        container = container.with_env(key, value)
    container.start()
    ready = {"nats": "Server is ready", "valkey": "Ready to accept", "neo4j": "Started."}
    for key, message in ready.items():
        if key in image:
            wait_for_logs(container, message, timeout=120)
    return container, f"{container.get_container_host_ip()}:{container.get_exposed_port(port)}"


def second_nats(tmp: Path) -> Iterator[Server]:
    """A second, empty nats-server to restore into (a test given an external NATS has
    none: skipped, saying so); stopped afterwards."""
    import pytest

    server = start_nats(tmp / "second")
    if server.url == os.environ.get("JETSOURCE_TEST_NATS_URL"):
        pytest.skip("an external NATS: no second, empty server to restore into")
    yield server
    server.stop()


def start_nats(tmp: Path) -> Server:
    if url := os.environ.get("JETSOURCE_TEST_NATS_URL"):
        return Server("external", url)
    if MODE == "containers":
        c, addr = _container("nats:2.15.1-alpine", 4222, "-js")
        return track(Server("containers", f"nats://{addr}", _stop=c.stop))
    # sync_interval=None: the server's own 2m, for speed (`jetsource infra up` uses
    # "always"; a test server's data is thrown away with its temp dir).
    return _embedded(
        NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port(), sync_interval=None)
    )


def start_valkey(tmp: Path) -> Server:
    if url := os.environ.get("JETSOURCE_TEST_VALKEY_URL"):
        return Server("external", url)
    if MODE == "containers":
        c, addr = _container("valkey/valkey:8", 6379)
        return track(Server("containers", f"redis://{addr}/0", _stop=c.stop))
    return _embedded(ValkeyServer(tmp / "valkey", port=free_port()))


def start_graph(tmp: Path) -> Server:
    if uri := os.environ.get("JETSOURCE_TEST_GRAPH_URI"):
        return Server(
            "external",
            uri,
            extra={
                "user": os.environ.get("JETSOURCE_TEST_GRAPH_USER", "neo4j"),
                "password": os.environ.get("JETSOURCE_TEST_GRAPH_PASSWORD", ""),
                "database": os.environ.get("JETSOURCE_TEST_GRAPH_DATABASE", "neo4j"),
            },
        )
    if MODE == "containers":
        password = "jetsource-test"
        c, addr = _container("neo4j:5", 7687, NEO4J_AUTH=f"neo4j/{password}")
        return track(
            Server(
                "containers",
                f"bolt://{addr}",
                _stop=c.stop,
                extra={"user": "neo4j", "password": password, "database": "neo4j"},
            )
        )
    server = ArcadeGraphServer(
        tmp / "graph", http_port=free_port(), bolt_port=free_port(), password="jetsource-test"
    )
    return _embedded(server, user="root", password="jetsource-test", database=server.database)


def settings_for(nats: Server, valkey: Server, graph: Server) -> JetsourceSettings:
    """Settings that point every component at the test servers."""
    return JetsourceSettings(
        nats=NatsSettings(url=nats.url),
        valkey=ValkeySettings(url=valkey.url),
        graph=GraphSettings(
            uri=graph.url,
            user=graph.extra["user"],
            password=graph.extra["password"],
            database=graph.extra["database"],
        ),
    )
