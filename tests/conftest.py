"""Shared fixtures: real servers once per session, chained server -> client -> context.

Servers start lazily: a run of unit tests alone starts none.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource.core.settings import JetsourceSettings
from tests.infra import Server, settings_for, start_graph, start_nats, start_valkey, stop_all

# The suite starts hundreds of Python processes (the CLI, services, benchmarks). Where
# the environment sets PYTHONDONTWRITEBYTECODE (these machines do), each compiled every
# jetsource module again; the children may cache bytecode (``__pycache__`` is ignored by
# git), so only the first pays it.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# Some tests start a child with ``preexec_fn`` (a file size limit, SIGINT ignored, the
# supervisor's parent-death signal), which makes Python fork() rather than vfork. With
# gRPC running in this process, grpcio's fork handlers (on by default) restarted its
# poller in the child, which then found its epoll fd closed before exec and aborted
# (SIGABRT, "Epoll1Poller encountered epoll_wait error: Bad file descriptor"): about 1
# child in 100. grpc reads the setting as it is imported: set for this process alone,
# then taken back, so the services and CLIs the tests start run as they do elsewhere.
_FORK_SUPPORT = os.environ.get("GRPC_ENABLE_FORK_SUPPORT")
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"
import grpc  # noqa: E402, F401

if _FORK_SUPPORT is None:
    del os.environ["GRPC_ENABLE_FORK_SUPPORT"]
else:
    os.environ["GRPC_ENABLE_FORK_SUPPORT"] = _FORK_SUPPORT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Servers a test started and did not stop (and, with tests/infra.py's SIGTERM and
    SIGINT handlers, those of an interrupted session) stop with the session."""
    stop_all()


def default_service_ports() -> list[int]:
    """Every port a jetsource service listens on by default (what `make up` holds)."""
    from pydantic import BaseModel

    from jetsource.domains.context.query_settings import QueryOptions
    from jetsource.ingest.settings import IngestOptions
    from jetsource.observer.settings import ObserverOptions
    from jetsource.processquery.settings import ProcessQueryOptions
    from jetsource.projection.settings import ProjectorOptions
    from jetsource.publisher.settings import PublisherOptions
    from jetsource.snapshotter.settings import SnapshotterOptions

    options: list[type[BaseModel]] = [
        QueryOptions,
        IngestOptions,
        ObserverOptions,
        ProcessQueryOptions,
        ProjectorOptions,
        PublisherOptions,
        SnapshotterOptions,
    ]
    ports = {
        f.default
        for model in options
        for name, f in model.model_fields.items()
        if name.endswith("_port") and isinstance(f.default, int) and f.default > 0
    }
    return sorted(ports)


@pytest.fixture(scope="session", autouse=True)
def default_ports_held() -> Iterator[list[int]]:
    """Hold every service's default port for the session (those not in use already):
    a test that starts a service on its default port fails here, in CI, as it fails
    beside a running `make up`, instead of only there. Bound but not listening, so a
    client of a default address is refused at once, as with nothing there."""
    held: list[socket.socket] = []
    for port in default_service_ports():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", port))  # bound, not listening: a client is refused
        except OSError:  # in use (a `make up` beside this run): already held
            sock.close()
            continue
        held.append(sock)
    yield [s.getsockname()[1] for s in held]
    for sock in held:
        sock.close()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_valkey(tmp_path_factory.mktemp("valkey"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_graph(tmp_path_factory.mktemp("graph"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def settings(nats_server: Server, valkey_server: Server, graph_server: Server) -> JetsourceSettings:
    return settings_for(nats_server, valkey_server, graph_server)


@pytest.fixture
async def nc(nats_server: Server) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url, max_reconnect_attempts=10)
    yield client
    await client.drain()


@pytest.fixture
def unique() -> str:
    """A short unique token for stream, key and label names in shared servers."""
    return uuid.uuid4().hex[:10]
