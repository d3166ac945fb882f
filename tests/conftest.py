"""Shared fixtures: real servers once per session, chained server -> client -> context.

Servers start lazily: a run of unit tests alone starts none.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource.core.settings import JetsourceSettings
from tests.infra import Server, settings_for, start_graph, start_nats, start_valkey, stop_all


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Servers a test started and did not stop (and, with tests/infra.py's SIGTERM and
    SIGINT handlers, those of an interrupted session) stop with the session."""
    stop_all()


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
