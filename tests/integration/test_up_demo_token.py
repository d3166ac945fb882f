"""`jetsource up`'s demo against services that ask a token: with
``JETSOURCE_GRPC__AUTH_TOKENS`` set in the shell (the services started from it take only
those) and no ``JETSOURCE_CLIENT__TOKEN``, the demo sent no token and failed
UNAUTHENTICATED. It sends the first of the services' tokens now (the client's own, when
set). Against a real publisher and observer (in this process) asking a token."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from jetsource.cli import infra
from jetsource.core.settings import GrpcClientSettings, GrpcServerSettings, NatsSettings
from jetsource.observer.server import Observer
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from jetsource.publisher.server import Publisher
from jetsource.publisher.server import build as build_publisher
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration
TOKENS = [SecretStr("first-token"), SecretStr("second-token")]


@pytest.fixture
def asking(nats_server: Server) -> PublisherSettings:
    """Settings as `jetsource up` loads them from a shell holding the services' tokens."""
    return PublisherSettings(
        nats=NatsSettings(url=nats_server.url),
        eventstore=isolated_settings(uuid.uuid4().hex[:10]),
        grpc=GrpcServerSettings(auth_tokens=TOKENS),
        publisher=PublisherOptions(grpc_port=0, metrics_port=0),
    )


@pytest.fixture
async def publisher(asking: PublisherSettings) -> AsyncIterator[Publisher]:
    publisher = await build_publisher(asking)
    yield publisher
    await publisher.stop(0)


@pytest.fixture
async def observer(asking: PublisherSettings) -> AsyncIterator[Observer]:
    observer = await build_observer(
        ObserverSettings(
            nats=asking.nats,
            grpc=asking.grpc,
            observer=ObserverOptions(grpc_port=0, metrics_port=0),
        )
    )
    yield observer
    await observer.stop(0)


async def test_the_demo_sends_a_token_the_services_take(
    asking: PublisherSettings,
    publisher: Publisher,
    observer: Observer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JETSOURCE_PUBLISHER__GRPC_PORT", str(publisher.port))
    monkeypatch.setenv("JETSOURCE_OBSERVER__GRPC_PORT", str(observer.port))
    monkeypatch.delenv("JETSOURCE_CLIENT__TOKEN", raising=False)
    reads: list[tuple[Any, ...]] = []

    async def read_back(*args: Any) -> None:  # the read models: not started here
        reads.append(args)

    monkeypatch.setattr(infra, "_demo_read_models", read_back)
    monkeypatch.setattr(infra, "_demo_process_read", read_back)
    await infra._demo(asking)
    await infra._demo_process_tree(asking)
    # The story and the process tree were written; the reads are asked with the token.
    (story, version, story_security), (root, events, tree_security) = reads
    assert version == 4 and await publisher.store.last_version(story) == 4
    assert root and events > 0
    for security in (story_security, tree_security):
        assert security.token.get_secret_value() == "first-token"


def test_the_demo_prefers_the_clients_own_token() -> None:
    own = GrpcClientSettings(token=SecretStr("second-token"))
    settings = PublisherSettings(client=own, grpc=GrpcServerSettings(auth_tokens=TOKENS))
    assert infra.demo_client(settings).token == SecretStr("second-token")
    # Neither set: no token, as before.
    none = PublisherSettings(client=GrpcClientSettings(), grpc=GrpcServerSettings())
    assert infra.demo_client(none).token is None
