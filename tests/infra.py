"""Real servers for the test session: embedded (default), external, or containers.

Per server, an environment URL selects an external one:
  JETSOURCE_TEST_NATS_URL, JETSOURCE_TEST_VALKEY_URL, JETSOURCE_TEST_GRAPH_URI
  (+ JETSOURCE_TEST_GRAPH_USER / _PASSWORD / _DATABASE).
JETSOURCE_TEST_INFRA=containers starts NATS, Valkey and Neo4j 5 with testcontainers
where a Docker engine answers (and fails loudly where none does).
Otherwise each server is started from its Python wheel on free ports in a temp dir.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
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

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc.wait(timeout=5)
        if self._stop is not None:
            self._stop()

    def restart(self) -> None:
        """Stop and start an embedded server on the same ports and data (fault tests)."""
        assert self.embedded is not None, "only embedded servers can be restarted here"
        self.stop()
        self.proc = self.embedded.start()
        self.embedded.wait_ready(self.proc, 60)


def _embedded(server: EmbeddedServer, **extra: Any) -> Server:
    proc = server.start()
    try:
        server.wait_ready(proc, 90)
    except BaseException:
        stop_pid(proc.pid)
        raise
    return Server("embedded", server.address(), server, proc, extra)


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


def start_nats(tmp: Path) -> Server:
    if url := os.environ.get("JETSOURCE_TEST_NATS_URL"):
        return Server("external", url)
    if MODE == "containers":
        c, addr = _container("nats:2.12-alpine", 4222, "-js")
        return Server("containers", f"nats://{addr}", _stop=c.stop)
    return _embedded(NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port()))


def start_valkey(tmp: Path) -> Server:
    if url := os.environ.get("JETSOURCE_TEST_VALKEY_URL"):
        return Server("external", url)
    if MODE == "containers":
        c, addr = _container("valkey/valkey:8", 6379)
        return Server("containers", f"redis://{addr}/0", _stop=c.stop)
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
        return Server(
            "containers",
            f"bolt://{addr}",
            _stop=c.stop,
            extra={"user": "neo4j", "password": password, "database": "neo4j"},
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
