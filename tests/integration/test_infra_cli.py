"""`jetsource infra up | status | down` as a user runs it, on free ports in a temp home.

`jetsource up` / `infra up` restart exactly what is down (#22 item 5, #18): NATS after
kill -9, a server restarted by hand shows as up (its own pid), a killed projector is
restarted while the other services are left alone, `infra status` lists the services
and exits 1 while one is down. That runs on the stack the first test brought up (it
was tests/integration/test_local_stack_restart.py, which started a stack of its own:
its start and its `down` were 20 s of `make test`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import valkey
from nats.js.api import StreamConfig
from neo4j import GraphDatabase

from jetsource.core.procs import pid_alive
from jetsource.devstack.servers import free_port, port_open, stop_pid
from tests.infra import Server

pytestmark = pytest.mark.integration

PASSWORD = "cli-test"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    ports = {
        "NATS_PORT": free_port(),
        "NATS_MONITOR_PORT": free_port(),
        "VALKEY_PORT": free_port(),
        "GRAPH_HTTP_PORT": free_port(),
        "GRAPH_BOLT_PORT": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {f"JETSOURCE_DEVSTACK__{k}": str(v) for k, v in ports.items()}
    env["JETSOURCE_DEVSTACK__HOME"] = str(tmp_path / "home")
    env["JETSOURCE_DEVSTACK__GRAPH_PASSWORD"] = PASSWORD
    env["JETSOURCE_PUBLISHER__GRPC_PORT"] = str(free_port())
    env["JETSOURCE_PUBLISHER__METRICS_PORT"] = str(free_port())
    env["JETSOURCE_PROJECTOR__HTTP_PORT"] = str(free_port())
    env["JETSOURCE_SNAPSHOTTER__HTTP_PORT"] = str(free_port())
    env["JETSOURCE_QUERY__GRPC_PORT"] = str(free_port())
    env["JETSOURCE_QUERY__METRICS_PORT"] = str(free_port())
    env["JETSOURCE_OBSERVER__GRPC_PORT"] = str(free_port())
    env["JETSOURCE_OBSERVER__METRICS_PORT"] = str(free_port())
    env["JETSOURCE_PROCESS_QUERY__GRPC_PORT"] = str(free_port())
    env["JETSOURCE_PROCESS_QUERY__METRICS_PORT"] = str(free_port())
    env["JETSOURCE_INGEST__HTTP_PORT"] = str(free_port())
    env["JETSOURCE_INGEST__GRPC_PORT"] = str(free_port())
    env["COLUMNS"] = "200"  # keep rich tables on one line per server
    # The projector stops when its pending pull expires: 1 s, not the default 5 s, so
    # each `down` here does not wait 5 s for it.
    env["JETSOURCE_PROJECTOR__PULL_EXPIRES_S"] = "1.0"
    return env


def jetsource(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def rows(output: str) -> dict[str, str]:
    """Server rows of `infra status` (a Rich table on a terminal, tab-separated piped)."""
    found = {}
    for line in output.splitlines():
        sep = "\t" if "\t" in line else "│"
        cells = [c.strip() for c in line.strip("│ ").split(sep)]
        if cells and cells[0] in {"nats", "valkey", "graph"}:
            found[cells[0]] = line
    return found


def status_json(env: dict[str, str]) -> tuple[int, dict[str, dict[str, Any]]]:
    done = jetsource(env, "-o", "json", "infra", "status")
    body = json.loads(done.stdout)
    return done.returncode, {r["name"]: r for r in body["servers"] + body["services"]}


def wait_healthy(env: dict[str, str], within: float = 30) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        code, found = status_json(env)
        if code == 0 or time.monotonic() > deadline:
            assert code == 0, found
            return found
        time.sleep(0.5)


SERVICES = (
    "publisher",
    "projector",
    "snapshotter",
    "query",
    "observer",
    "process-query",
    "ingest",
)


def write_data(env: dict[str, str]) -> None:
    async def publish() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{env['JETSOURCE_DEVSTACK__NATS_PORT']}")
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        await js.publish("keep.one", b"kept")
        await nc.close()

    asyncio.run(publish())
    valkey.Valkey(port=int(env["JETSOURCE_DEVSTACK__VALKEY_PORT"])).set("keep", "kept")
    bolt = f"bolt://127.0.0.1:{env['JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT']}"
    with GraphDatabase.driver(bolt, auth=("root", PASSWORD)) as driver:
        driver.execute_query("MERGE (n:Keep {key: 'kept'})", database_="jetsource")


def read_data(env: dict[str, str]) -> tuple[bytes, bytes | None, int]:
    async def fetch() -> bytes:
        nc = await nats.connect(f"nats://127.0.0.1:{env['JETSOURCE_DEVSTACK__NATS_PORT']}")
        msg = await nc.jetstream().get_msg("KEEP", seq=1)
        await nc.close()
        return bytes(msg.data or b"")

    kept = asyncio.run(fetch())
    value = valkey.Valkey(port=int(env["JETSOURCE_DEVSTACK__VALKEY_PORT"])).get("keep")
    bolt = f"bolt://127.0.0.1:{env['JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT']}"
    with GraphDatabase.driver(bolt, auth=("root", PASSWORD)) as driver:
        records, _, _ = driver.execute_query(
            "MATCH (n:Keep {key: 'kept'}) RETURN count(n) AS n", database_="jetsource"
        )
    return kept, value, records[0]["n"]


def test_up_status_down_and_data_survives_and_up_restarts_what_is_down(
    env: dict[str, str],
) -> None:
    home = Path(env["JETSOURCE_DEVSTACK__HOME"])
    hand: subprocess.Popen[bytes] | None = None
    try:
        up = jetsource(env, "infra", "up")
        assert up.returncode == 0, up.stdout + up.stderr

        status = jetsource(env, "infra", "status")
        assert status.returncode == 0, status.stdout
        table = rows(status.stdout)
        assert set(table) == {"nats", "valkey", "graph"}
        for name, port in [
            ("nats", "NATS_PORT"),
            ("valkey", "VALKEY_PORT"),
            ("graph", "GRAPH_BOLT_PORT"),
        ]:
            assert "healthy" in table[name], table[name]
            assert f"127.0.0.1:{env['JETSOURCE_DEVSTACK__' + port]}" in table[name]

        # Nothing is down: a second `up` says so and succeeds (scripts can run it always).
        again = jetsource(env, "infra", "up")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout

        write_data(env)
        down = jetsource(env, "infra", "down")
        assert down.returncode == 0, down.stdout + down.stderr
        stopped = jetsource(env, "infra", "status")
        assert stopped.returncode != 0
        assert all("stopped" in line for line in rows(stopped.stdout).values())

        assert jetsource(env, "infra", "up").returncode == 0
        assert read_data(env) == (b"kept", b"kept", 1)

        # `jetsource up` (what `make up` runs) with servers up: starts the publisher and
        # shows a story going through it.
        shown = jetsource(env, "up")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "already running" in shown.stdout
        text = " ".join(shown.stdout.split())
        for service in (
            "publisher",
            "projector",
            "snapshotter",
            "query",
            "observer",
            "process-query",
            "ingest",
        ):
            assert f"service {service}" in text, text
        assert "reached version 4; read back ContextCreated, DecisionAdded" in text
        # and a process tree through the observer, emitted by the Python SDK
        assert "demo process tree" in text and "recorded through the SDK (19 events)" in text
        # read back through the process query service (the registry model)
        assert "process query at" in text and "6 processes of" in text, text
        assert "GetContext(min_version=4) answered version 4" in text, text
        # Piped: each report on one line, not wrapped at 80 columns.
        lines = shown.stdout.splitlines()
        assert any(
            x.startswith("query at ") and "answered version 4" in x and "graph: " in x
            for x in lines
        ), shown.stdout
        assert any(x.startswith("observer at ") and "(19 events)" in x for x in lines)

        status = jetsource(env, "infra", "status")
        assert status.returncode == 0, status.stdout
        for service in (
            "publisher",
            "projector",
            "snapshotter",
            "query",
            "observer",
            "process-query",
            "ingest",
        ):
            assert any(
                line.split("\t")[0] == service and "healthy" in line
                for line in status.stdout.splitlines()
            ), status.stdout
        metrics = httpx.get(
            f"http://127.0.0.1:{env['JETSOURCE_PUBLISHER__METRICS_PORT']}/metrics", timeout=5
        ).text
        assert 'jetsource_publisher_commands_total{command="AddDecision",outcome="ok"}' in metrics

        hand, pids = restart_exactly_what_is_down(env, home)
        down = jetsource(env, "down")
        assert down.returncode == 0 and "publisher" in down.stdout, down.stdout
        hand.wait(timeout=20)  # the hand-started server was stopped too
        assert not any(pid_alive(pid) for pid in pids.values())
    finally:
        jetsource(env, "down")
        jetsource(env, "infra", "down")
        if hand is not None and hand.poll() is None:
            hand.kill()


def restart_exactly_what_is_down(
    env: dict[str, str], home: Path
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Kills NATS, then the projector, then the query service; `infra up` and `up` bring
    back what is down and nothing else. Returns the NATS server started by hand and the
    services' pids (the query service's is dead)."""
    rows = wait_healthy(env)
    assert all(rows[s]["health"] == "healthy" for s in SERVICES), rows
    assert rows["nats"]["detail"].startswith("JetStream storage"), rows["nats"]
    # the local NATS fsyncs every write by default (#22 item 10)
    conf = (home / "data" / "nats" / "nats.conf").read_text()
    assert 'sync_interval: "always"' in conf

    # kill -9 of nats-server: status says so, `infra up` starts it (and only it)
    nats_pid = int(rows["nats"]["pid"])
    os.kill(nats_pid, signal.SIGKILL)
    time.sleep(0.3)
    code, rows = status_json(env)
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
    try:
        rows = wait_healthy(env)
        assert int(rows["nats"]["pid"]) == hand.pid, rows["nats"]

        # kill -9 of the projector: status names it, `jetsource up` restarts it alone
        before = {s: int(rows[s]["pid"]) for s in SERVICES}
        os.kill(before["projector"], signal.SIGKILL)
        time.sleep(0.3)
        code, rows = status_json(env)
        assert code == 1 and rows["projector"]["health"] == "down", rows["projector"]
        restarted = jetsource(env, "up", "--no-demo")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "already running" in restarted.stdout
        assert "GetContext" not in restarted.stdout  # --no-demo
        rows = wait_healthy(env)
        after = {s: int(rows[s]["pid"]) for s in SERVICES}
        assert after["projector"] != before["projector"]
        assert {s: after[s] for s in SERVICES if s != "projector"} == {
            s: before[s] for s in SERVICES if s != "projector"
        }

        # the query service dead: status is not "all healthy"
        os.kill(after["query"], signal.SIGKILL)
        time.sleep(0.3)
        code, rows = status_json(env)
        assert code == 1 and rows["query"]["health"] == "down", rows["query"]
    except BaseException:
        hand.kill()
        raise
    return hand, after


def test_external_servers_are_probed_not_started(
    env: dict[str, str], nats_server: Server, valkey_server: Server, graph_server: Server
) -> None:
    env |= {
        "JETSOURCE_NATS__URL": nats_server.url,
        "JETSOURCE_VALKEY__URL": valkey_server.url,
        "JETSOURCE_GRAPH__URI": graph_server.url,
        "JETSOURCE_GRAPH__USER": graph_server.extra["user"],
        "JETSOURCE_GRAPH__PASSWORD": graph_server.extra["password"],
        "JETSOURCE_GRAPH__DATABASE": graph_server.extra["database"],
    }
    try:
        up = jetsource(env, "infra", "up")
        assert up.returncode == 0, up.stdout + up.stderr
        table = rows(up.stdout)
        assert set(table) == {"nats", "valkey", "graph"}
        assert all("healthy" in line and "external" in line for line in table.values()), table
        # Nothing was started, so nothing listens on the devstack ports.
        assert not port_open("127.0.0.1", int(env["JETSOURCE_DEVSTACK__NATS_PORT"]))
    finally:
        jetsource(env, "infra", "down")


def test_external_servers_that_are_down_are_named_at_once_with_their_setting(
    env: dict[str, str],
) -> None:
    """probe9b: an external NATS that took no connection read `external: ` (an empty
    TimeoutError) after 6 s, with three `nats: encountered error` lines (and tracebacks
    in the log) on stderr, and `infra up` said "local servers already running" of three
    external servers that were down."""
    closed = {name: free_port() for name in ("nats", "valkey", "graph")}
    env |= {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{closed['nats']}",
        "JETSOURCE_VALKEY__URL": f"redis://127.0.0.1:{closed['valkey']}/0",
        "JETSOURCE_GRAPH__URI": f"bolt://127.0.0.1:{closed['graph']}",
    }
    started = time.monotonic()
    done = jetsource(env, "-o", "json", "infra", "status")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == ""
    servers = {r["name"]: r for r in json.loads(done.stdout)["servers"]}
    assert servers["nats"]["detail"] == (
        f"external: not reachable (127.0.0.1:{closed['nats']}: Connection refused); "
        "check JETSOURCE_NATS__URL"
    )
    assert servers["valkey"]["detail"].endswith("; check JETSOURCE_VALKEY__URL")
    assert servers["graph"]["detail"].endswith("; check JETSOURCE_GRAPH__URI")
    assert all("\n" not in r["detail"] for r in servers.values())
    assert took < 5, took

    up = jetsource(env, "infra", "up")
    assert up.returncode == 1, up.stdout + up.stderr
    assert up.stdout.splitlines()[0] == "no local server to start: nats, valkey, graph external"
    assert "already running" not in up.stdout
    assert up.stderr == ""
