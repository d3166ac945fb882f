from __future__ import annotations

from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.devstack.servers import (
    ArcadeGraphServer,
    NatsServer,
    ServerError,
    ValkeyServer,
    parse_version,
)
from jetsource.devstack.stack import LocalStack


def test_parse_version() -> None:
    assert parse_version("v2.15.1") == (2, 15, 1)
    assert parse_version("2.12.0-RC.1") == (2, 12, 0)
    assert parse_version("26.10.2 (build abc)") == (26, 10, 2)


def test_nats_config_has_jetstream_store_and_optional_sync(tmp_path: Path) -> None:
    plain = NatsServer(tmp_path, port=1234, monitor_port=1235).config_text()
    assert '"127.0.0.1:1234"' in plain and "jetstream {" in plain
    assert str(tmp_path / "jetstream") in plain
    assert "sync_interval" not in plain
    synced = NatsServer(tmp_path, sync_interval="always").config_text()
    assert 'sync_interval: "always"' in synced


def test_graph_command_enables_bolt_on_loopback(tmp_path: Path) -> None:
    cmd = ArcadeGraphServer(tmp_path, http_port=1, bolt_port=2).command()
    assert "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin" in cmd
    assert "-Darcadedb.bolt.port=2" in cmd and "-Darcadedb.bolt.host=127.0.0.1" in cmd
    assert cmd[-1] == "com.arcadedb.server.ArcadeDBServer"


def test_valkey_keeps_data_in_its_dir(tmp_path: Path) -> None:
    cmd = ValkeyServer(tmp_path, port=7).command()
    assert cmd[cmd.index("--dir") + 1] == str(tmp_path)
    assert cmd[cmd.index("--appendonly") + 1] == "yes"


def test_external_url_means_not_started(tmp_path: Path) -> None:
    settings = JetsourceSettings(nats=NatsSettings(url="nats://elsewhere:4222"))
    settings.devstack.home = tmp_path
    embedded = LocalStack(settings).embedded()
    assert embedded["nats"] is None
    assert isinstance(embedded["valkey"], ValkeyServer)
    assert isinstance(embedded["graph"], ArcadeGraphServer)


def test_start_refuses_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"port.*{port}.*in use"):
            ValkeyServer(tmp_path, port=port).start()


def test_local_nats_fsyncs_every_write_by_default(tmp_path: Path) -> None:
    settings = JetsourceSettings()
    settings.devstack.home = tmp_path
    nats = LocalStack(settings).embedded()["nats"]
    assert isinstance(nats, NatsServer)
    assert 'sync_interval: "always"' in nats.config_text()
    # relaxed for benchmarks: a duration, or "default" for the server's own 2m
    settings.devstack.nats_sync_interval = "default"
    relaxed = LocalStack(settings).embedded()["nats"]
    assert isinstance(relaxed, NatsServer) and "sync_interval" not in relaxed.config_text()
    settings.devstack.nats_sync_interval = "10s"
    ten = LocalStack(settings).embedded()["nats"]
    assert isinstance(ten, NatsServer) and 'sync_interval: "10s"' in ten.config_text()
    # a test server keeps the fast default unless it asks
    assert "sync_interval" not in NatsServer(tmp_path, sync_interval=None).config_text()


def test_nats_config_sizes_and_pid_file(tmp_path: Path) -> None:
    text = NatsServer(tmp_path, max_file_store="512KB").config_text()
    assert "max_file_store: 524288" in text
    assert f'pid_file: "{tmp_path / "nats.pid"}"' in text
