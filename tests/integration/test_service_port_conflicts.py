"""Every service, started as `jetsource up` starts it (``python -m <module>``), on a port
another process holds: it ends with exit 2 (``EXIT_ACCESS_DENIED``: restarting cannot
help) and one line naming the variable that moves that port, no traceback. Each of
its ports in turn: gRPC, /metrics, HTTP.

The port is held as `make up` met it on a fresh clone: the local end of another
process's outgoing connection (no listener; the default gRPC ports 50051-50055 lie in
Linux's ephemeral range), so `jetsource up`'s own check for a listener cannot see it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jetsource.core.runner import EXIT_ACCESS_DENIED
from tests.infra import Server

pytestmark = pytest.mark.integration

# service module, its settings section (env), its ports; the first port is the busy one
CASES = [
    ("jetsource.publisher.server", "PUBLISHER", "GRPC_PORT", "METRICS_PORT"),
    ("jetsource.publisher.server", "PUBLISHER", "METRICS_PORT", "GRPC_PORT"),
    ("jetsource.query.server", "QUERY", "GRPC_PORT", "METRICS_PORT"),
    ("jetsource.query.server", "QUERY", "METRICS_PORT", "GRPC_PORT"),
    ("jetsource.observer.server", "OBSERVER", "GRPC_PORT", "METRICS_PORT"),
    ("jetsource.observer.server", "OBSERVER", "METRICS_PORT", "GRPC_PORT"),
    ("jetsource.processquery.server", "PROCESS_QUERY", "GRPC_PORT", "METRICS_PORT"),
    ("jetsource.processquery.server", "PROCESS_QUERY", "METRICS_PORT", "GRPC_PORT"),
    ("jetsource.ingest.server", "INGEST", "GRPC_PORT", "HTTP_PORT"),
    ("jetsource.ingest.server", "INGEST", "HTTP_PORT", "GRPC_PORT"),
    ("jetsource.projector.server", "PROJECTOR", "HTTP_PORT"),
    ("jetsource.snapshotter.server", "SNAPSHOTTER", "HTTP_PORT"),
]


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


@pytest.mark.parametrize(
    ("module", "section", "busy", "others"),
    [(c[0], c[1], c[2], c[3:]) for c in CASES],
    ids=[f"{c[1].lower()}-{c[2].lower()}" for c in CASES],
)
def test_a_busy_port_names_its_setting(
    module: str,
    section: str,
    busy: str,
    others: tuple[str, ...],
    nats_server: Server,
    valkey_server: Server,
    graph_server: Server,
    unique: str,
    tmp_path: Path,
) -> None:
    setting = f"JETSOURCE_{section}__{busy}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_NATS__URL": nats_server.url,
        "JETSOURCE_VALKEY__URL": valkey_server.url,
        "JETSOURCE_GRAPH__URI": graph_server.url,
        "JETSOURCE_GRAPH__USER": graph_server.extra["user"],
        "JETSOURCE_GRAPH__PASSWORD": graph_server.extra["password"],
        "JETSOURCE_GRAPH__DATABASE": graph_server.extra["database"],
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path),
        "JETSOURCE_EVENTSTORE__STREAM": f"PC_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"pc{unique}.events",
        "JETSOURCE_SNAPSHOTS__STREAM": f"PCS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"pc{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"PCD_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"pc{unique}.dlq",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"PCC_{unique}",
        "JETSOURCE_PROJECTOR__VALKEY_PREFIX": f"pc{unique}",
        "JETSOURCE_PROJECTOR__GRAPH_LABEL_PREFIX": f"Pc{unique}",
        "JETSOURCE_OBSERVER__CLAIMS_BUCKET": f"PCK_{unique}",
        "JETSOURCE_OMNI__EVENTS_STREAM": f"PCO_{unique}",
        "JETSOURCE_OMNI__EVENTS_SUBJECT_PREFIX": f"pco{unique}.events",
        "JETSOURCE_OMNI__RAW_STREAM": f"PCR_{unique}",
        "JETSOURCE_OMNI__RAW_SUBJECT_PREFIX": f"pc{unique}.raw",
        "JETSOURCE_OMNI__IDENTITY_BUCKET": f"PCH_{unique}",
        "JETSOURCE_LOG_JSON": "false",
    }
    # Its other ports: 0 (a free one, or off); never a default (the session holds them).
    env |= {f"JETSOURCE_{section}__{other}": "0" for other in others}
    with held_port() as port:
        env[setting] = str(port)
        run = subprocess.run(
            [sys.executable, "-m", module],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
        )
    out = run.stdout.decode() + run.stderr.decode()
    assert run.returncode == EXIT_ACCESS_DENIED, out
    assert f"cannot listen on 127.0.0.1:{port}" in out, out
    assert f"set {setting} to a free port" in out, out
    assert "Traceback" not in out, out
