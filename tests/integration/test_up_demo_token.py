"""`jetsource up`'s demo against services that ask a token: with
``JETSOURCE_GRPC__AUTH_TOKENS`` set in the shell (the services started from it take only
those) and no ``JETSOURCE_CLIENT__TOKEN``, the demo sent no token and failed
UNAUTHENTICATED. It sends the first of the services' tokens now (the client's own, when
set). Against a real publisher and observer (in this process) asking a token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from jetsource.cli import infra
from jetsource.core.settings import (
    GrpcClientSettings,
    GrpcServerSettings,
    NatsSettings,
    ServerTlsSettings,
    TlsSettings,
)
from jetsource.devstack.process_demo import demo_observer
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


async def test_the_demo_tree_goes_through_the_client_tls_as_its_reads_do(
    nats_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's process tree went through the SDK with the bearer token alone, in
    plain text, while its reads (and the story) used ``JETSOURCE_CLIENT__TLS__*``:
    against an observer serving mutual TLS, `jetsource up` hung in the demo (its sends
    retried in plain text; 30 s here) with the reads' settings right. It uses the
    client's TLS now:
    CA, client certificate and the server-name override (the certificate here names
    only ``observer.internal``, reached at 127.0.0.1)."""
    import trustme

    ca = trustme.CA(organization_name="jetsource demo CA")
    files = {"ca": ca.cert_pem}
    server, client = ca.issue_cert("observer.internal"), ca.issue_cert("demo@test")
    files |= {"server": server.cert_chain_pems[0], "server_key": server.private_key_pem}
    files |= {"client": client.cert_chain_pems[0], "client_key": client.private_key_pem}
    paths = {}
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / f"{name}.pem"))
        paths[name] = tmp_path / f"{name}.pem"
    observer = await build_observer(
        ObserverSettings(
            nats=NatsSettings(url=nats_server.url),
            grpc=GrpcServerSettings(
                tls=ServerTlsSettings(
                    cert_file=paths["server"],
                    key_file=paths["server_key"],
                    client_ca_file=paths["ca"],
                ),
                auth_tokens=TOKENS,
            ),
            observer=ObserverOptions(grpc_port=0, metrics_port=0),
        )
    )
    try:
        security = GrpcClientSettings(
            tls=TlsSettings(
                enabled=True,
                ca_file=paths["ca"],
                cert_file=paths["client"],
                key_file=paths["client_key"],
            ),
            server_name="observer.internal",
        )
        settings = ObserverSettings(client=security, grpc=GrpcServerSettings(auth_tokens=TOKENS))
        # The SDK client it builds: the client's credentials and name override, the token.
        built = demo_observer("127.0.0.1:1", infra.demo_client(settings))
        assert built._credentials is not None and built._token == "first-token"
        assert ("grpc.ssl_target_name_override", "observer.internal") in built._channel_options

        monkeypatch.setenv("JETSOURCE_OBSERVER__GRPC_HOST", "127.0.0.1")
        monkeypatch.setenv("JETSOURCE_OBSERVER__GRPC_PORT", str(observer.port))
        reads: list[tuple[Any, ...]] = []

        async def read_back(*args: Any) -> None:  # the process query service: not here
            reads.append(args)

        monkeypatch.setattr(infra, "_demo_process_read", read_back)
        await asyncio.wait_for(infra._demo_process_tree(settings), 30)
        ((root, events, _),) = reads
        recorded = await observer.store.read_aggregate(root)
        assert events > 0 and recorded[0].envelope.event_type == "process_started"
    finally:
        await observer.stop(0)
