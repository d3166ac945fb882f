"""`jetsource up` / `infra up` restart exactly what is down (#22 item 5, #18): NATS after
kill -9, a server restarted by hand shows as up (its own pid), a killed projector is
restarted while the other services are left alone, `infra status` lists the services
and exits 1 while one is down. Valkey and the graph store are the session's (external),
NATS and the four services are the stack's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jetsource.devstack.servers import free_port, pid_alive, stop_pid
from tests.infra import Server

pytestmark = pytest.mark.integration


@pytest.fixture
def env(tmp_path: Path, valkey_server: Server, graph_server: Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_DEVSTACK__NATS_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__NATS_MONITOR_PORT": str(free_port()),
        "JETSOURCE_VALKEY__URL": valkey_server.url,
        "JETSOURCE_GRAPH__URI": graph_server.url,
        "JETSOURCE_GRAPH__USER": graph_server.extra["user"],
        "JETSOURCE_GRAPH__PASSWORD": graph_server.extra["password"],
        "JETSOURCE_GRAPH__DATABASE": graph_server.extra["database"],
        "JETSOURCE_PUBLISHER__GRPC_PORT": str(free_port()),
        "JETSOURCE_PUBLISHER__METRICS_PORT": str(free_port()),
        "JETSOURCE_PROJECTOR__HTTP_PORT": str(free_port()),
        "JETSOURCE_SNAPSHOTTER__HTTP_PORT": str(free_port()),
        "JETSOURCE_QUERY__GRPC_PORT": str(free_port()),
        "JETSOURCE_QUERY__METRICS_PORT": str(free_port()),
        "JETSOURCE_OBSERVER__GRPC_PORT": str(free_port()),
        "JETSOURCE_OBSERVER__METRICS_PORT": str(free_port()),
        "JETSOURCE_PROCESS_QUERY__GRPC_PORT": str(free_port()),
        "JETSOURCE_PROCESS_QUERY__METRICS_PORT": str(free_port()),
        "JETSOURCE_INGEST__HTTP_PORT": str(free_port()),
        "JETSOURCE_INGEST__GRPC_PORT": str(free_port()),
    }
    return env


def jetsource(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def status(env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    done = jetsource(env, "-o", "json", "infra", "status")
    body = json.loads(done.stdout)
    return done.returncode, {r["name"]: r for r in body["servers"] + body["services"]}


def wait_healthy(env: dict[str, str], within: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        code, rows = status(env)
        if code == 0 or time.monotonic() > deadline:
            assert code == 0, rows
            return rows
        time.sleep(0.5)


def test_up_restarts_exactly_what_is_down(env: dict[str, str]) -> None:
    home = Path(env["JETSOURCE_DEVSTACK__HOME"])
    hand: subprocess.Popen[bytes] | None = None
    try:
        first = jetsource(env, "up", "--no-demo")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "GetContext" not in first.stdout  # --no-demo
        rows = wait_healthy(env)
        services = (
            "publisher",
            "projector",
            "snapshotter",
            "query",
            "observer",
            "process-query",
            "ingest",
        )
        assert all(rows[s]["health"] == "healthy" for s in services), rows
        assert rows["nats"]["detail"].startswith("JetStream storage"), rows["nats"]
        # the local NATS fsyncs every write by default (#22 item 10)
        conf = (home / "data" / "nats" / "nats.conf").read_text()
        assert 'sync_interval: "always"' in conf

        # kill -9 of nats-server: status says so, `infra up` starts it (and only it)
        nats_pid = int(rows["nats"]["pid"])
        os.kill(nats_pid, signal.SIGKILL)
        time.sleep(0.3)
        code, rows = status(env)
        assert code == 1 and rows["nats"]["health"] == "down", rows["nats"]
        again = jetsource(env, "infra", "up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "started: nats" in again.stdout, again.stdout
        rows = wait_healthy(env)
        assert int(rows["nats"]["pid"]) != nats_pid

        # nothing down: `infra up` says so and succeeds
        idle = jetsource(env, "infra", "up")
        assert idle.returncode == 0 and "already running" in idle.stdout, idle.stdout

        # a nats-server restarted by hand with the same config shows as up, its own pid
        assert stop_pid(int(rows["nats"]["pid"]))
        hand = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "nats-server"),
                "-c",
                str(home / "data/nats/nats.conf"),
            ],
            cwd=home / "data" / "nats",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        rows = wait_healthy(env)
        assert int(rows["nats"]["pid"]) == hand.pid, rows["nats"]

        # kill -9 of the projector: status names it, `jetsource up` restarts it alone
        before = {s: int(rows[s]["pid"]) for s in services}
        os.kill(before["projector"], signal.SIGKILL)
        time.sleep(0.3)
        code, rows = status(env)
        assert code == 1 and rows["projector"]["health"] == "down", rows["projector"]
        restarted = jetsource(env, "up", "--no-demo")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "already running" in restarted.stdout
        rows = wait_healthy(env)
        after = {s: int(rows[s]["pid"]) for s in services}
        assert after["projector"] != before["projector"]
        assert {s: after[s] for s in services if s != "projector"} == {
            s: before[s] for s in services if s != "projector"
        }

        # the query service dead: status is not "all healthy"
        os.kill(after["query"], signal.SIGKILL)
        time.sleep(0.3)
        code, rows = status(env)
        assert code == 1 and rows["query"]["health"] == "down", rows["query"]

        down = jetsource(env, "down")
        assert down.returncode == 0, down.stdout + down.stderr
        hand.wait(timeout=20)  # the hand-started server was stopped too
        assert not any(pid_alive(after[s]) for s in services)
    finally:
        jetsource(env, "down")
        if hand is not None and hand.poll() is None:
            hand.kill()
