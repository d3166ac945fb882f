"""A port in use names the setting that moves it (README "Local servers": "A port
conflict names the setting that moves it"), whichever listener hits it: a gRPC port, the
plain-text gRPC health port, /metrics, the projector's /healthz, ingest's HTTP port, or
`jetsource up`'s own check before it starts a service. And a service that cannot start
under `jetsource up` shows this start's log lines only (its log file is appended to by
every start) and says what became of the other services.

The port is held as the defect found it: the local end of an outgoing connection, no
listener on it (the default gRPC ports lie in Linux's ephemeral range)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jetsource.core.errors import ListenError, ephemeral_ports
from jetsource.core.grpcserver import HEALTH_PORT_SETTING, start_grpc
from jetsource.core.metrics import bind_socket, start_metrics_server
from jetsource.core.procs import pid_alive
from jetsource.core.settings import GrpcServerSettings, JetsourceSettings, env_var
from jetsource.devstack.servers import ServerError, free_port
from jetsource.devstack.services import GrpcService, LocalServices
from jetsource.domains.context.query_settings import QuerySettings
from jetsource.ingest.settings import IngestSettings
from jetsource.observer.settings import ObserverSettings
from jetsource.processquery.settings import ProcessQuerySettings
from jetsource.projection.host import PROJECTOR_HTTP_PORT, HealthServer
from jetsource.projection.settings import ProjectorSettings
from jetsource.publisher.settings import PublisherSettings
from jetsource.snapshotter.settings import SnapshotterSettings


@contextmanager
def held_port() -> Iterator[int]:
    """A port taken by an outgoing connection's local end (nothing listens on it)."""
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        accepted, _ = server.accept()
        with accepted:
            yield client.getsockname()[1]


def test_env_var_follows_prefix_and_nesting() -> None:
    assert env_var(PublisherSettings, "publisher", "grpc_port") == "JETSOURCE_PUBLISHER__GRPC_PORT"
    assert env_var(QuerySettings, "query", "metrics_port") == "JETSOURCE_QUERY__METRICS_PORT"
    assert env_var(IngestSettings, "ingest", "http_port") == "JETSOURCE_INGEST__HTTP_PORT"
    assert env_var(ProjectorSettings, "projector", "http_port") == PROJECTOR_HTTP_PORT
    assert PROJECTOR_HTTP_PORT == "JETSOURCE_PROJECTOR__HTTP_PORT"
    assert (
        env_var(SnapshotterSettings, "snapshotter", "http_port")
        == "JETSOURCE_SNAPSHOTTER__HTTP_PORT"
    )
    assert (
        env_var(ProcessQuerySettings, "process_query", "grpc_port")
        == "JETSOURCE_PROCESS_QUERY__GRPC_PORT"
    )
    assert HEALTH_PORT_SETTING == "JETSOURCE_GRPC__HEALTH_PORT"
    with pytest.raises(KeyError, match=r"observer\.grpcport"):
        env_var(ObserverSettings, "observer", "grpcport")
    with pytest.raises(KeyError, match="has no fields"):
        env_var(ObserverSettings, "log_level", "x")


def test_the_named_variable_really_moves_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    name = env_var(IngestSettings, "ingest", "grpc_port")
    monkeypatch.setenv(name, "41234")
    assert IngestSettings.load().ingest.grpc_port == 41234
    monkeypatch.setenv(HEALTH_PORT_SETTING, "41235")
    assert JetsourceSettings.load().grpc.health_port == 41235


def test_the_ephemeral_range_is_explained() -> None:
    low, high = ephemeral_ports()
    if low > high:
        pytest.skip("no ip_local_port_range on this host")
    inside = str(ListenError("x", f"127.0.0.1:{low}", "in use", "JETSOURCE_X__PORT"))
    assert "JETSOURCE_X__PORT" in inside and f"ephemeral range {low}-{high}" in inside
    below = str(ListenError("x", f"127.0.0.1:{low - 1}", "in use"))
    assert "ephemeral" not in below and "choose another port" in below


async def test_grpc_port_in_use_names_its_setting() -> None:
    with held_port() as port, pytest.raises(ListenError) as caught:
        await start_grpc(
            lambda server: None,
            "test.Service",
            f"127.0.0.1:{port}",
            4,
            port_setting="JETSOURCE_INGEST__GRPC_PORT",
        )
    message = str(caught.value)
    assert f"test.Service cannot listen on 127.0.0.1:{port}" in message
    assert "set JETSOURCE_INGEST__GRPC_PORT to a free port" in message
    assert caught.value.setting == "JETSOURCE_INGEST__GRPC_PORT"


async def test_grpc_health_port_in_use_names_its_setting() -> None:
    with held_port() as port, pytest.raises(ListenError) as caught:
        await start_grpc(
            lambda server: None,
            "test.Service",
            "127.0.0.1:0",
            4,
            GrpcServerSettings(health_port=port),
            port_setting="JETSOURCE_QUERY__GRPC_PORT",
        )
    assert f"test.Service health cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert "set JETSOURCE_GRPC__HEALTH_PORT to a free port" in str(caught.value)


def test_metrics_port_in_use_names_its_setting() -> None:
    with held_port() as port, pytest.raises(ListenError) as caught:
        start_metrics_server(port, "127.0.0.1", setting="JETSOURCE_QUERY__METRICS_PORT")
    assert f"/metrics cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert "JETSOURCE_QUERY__METRICS_PORT" in str(caught.value)


def test_projector_http_port_in_use_names_its_setting() -> None:
    with held_port() as port, pytest.raises(ListenError) as caught:
        HealthServer(object(), "127.0.0.1", port, PROJECTOR_HTTP_PORT)  # type: ignore[arg-type]
    assert f"cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert "set JETSOURCE_PROJECTOR__HTTP_PORT to a free port" in str(caught.value)


def test_http_socket_in_use_names_its_setting() -> None:
    with held_port() as port, pytest.raises(ListenError) as caught:
        bind_socket("HTTP", "127.0.0.1", port, "JETSOURCE_INGEST__HTTP_PORT")
    assert f"HTTP cannot listen on 127.0.0.1:{port}" in str(caught.value)
    assert "JETSOURCE_INGEST__HTTP_PORT" in str(caught.value)
    free = bind_socket("HTTP", "127.0.0.1", 0)
    free.close()


def test_up_names_the_setting_of_a_busy_port(tmp_path: Path) -> None:
    """`jetsource up` checks every port of a service before starting it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        busy = listener.getsockname()[1]
        service = GrpcService(
            "ingest",
            "jetsource.ingest.server",
            tmp_path,
            "127.0.0.1",
            free_port(),
            port_settings={busy: "JETSOURCE_INGEST__GRPC_PORT"},
        )
        with pytest.raises(ServerError) as caught:
            service.start()
    assert f"port(s) [{busy}]" in str(caught.value)
    assert "move it with JETSOURCE_INGEST__GRPC_PORT" in str(caught.value)


class Script(GrpcService):
    """A service that is a small Python script: ``ok`` runs until stopped."""

    def __init__(self, name: str, home: Path, code: str, ok: bool = True) -> None:
        super().__init__(name, "jetsource_test_script", home / name, "127.0.0.1", 0)
        self.code = code
        self.ok = ok

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code, "jetsource_test_script"]

    def find_pid(self, known: int | None = None) -> int | None:
        return known if known and pid_alive(known) else None

    def ready(self) -> bool:
        return self.ok


def test_a_failed_start_shows_its_own_lines_and_what_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Script("first", tmp_path, "import time; time.sleep(60)")
    failing = Script(
        "failing",
        tmp_path,
        "import sys; print('this start: cannot listen', flush=True); sys.exit(2)",
        ok=False,
    )
    later = Script("later", tmp_path, "import time; time.sleep(60)")
    failing.data_dir.mkdir(parents=True)
    failing.log_path.write_text("an earlier start's line\n" * 20)
    services = LocalServices(tmp_path)
    monkeypatch.setattr(services, "services", lambda: [first, failing, later])
    try:
        with pytest.raises(ServerError) as caught:
            services.up(timeout=30)
        message = str(caught.value)
        assert "failing exited with code 2" in message
        assert "this start: cannot listen" in message
        assert "an earlier start's line" not in message
        assert "left running: first" in message and "`make down`" in message
        assert "not started: later" in message
        state = services._state()
        assert "later" not in state
        first_pid = state["first"]["pid"]
    finally:
        stopped = services.down()
    assert stopped == ["first"]
    assert not pid_alive(first_pid)
