"""A sessions client on a real NATS server, on a stream of its own per test with the
observability policy (purge allowed, for the pruner)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import NatsSettings
from jetsource.domains.sessions.connect import SessionsClient, event_store, open_sessions
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.jetstream import stream_config
from tests.infra import Server


def sessions_settings(nats_url: str, unique: str, **over: object) -> SessionsAppSettings:
    return SessionsAppSettings(
        nats=NatsSettings(url=nats_url),
        sessions=SessionsSettings(
            stream=f"SESSIONS_{unique}",
            subject_prefix=f"sess{unique}.events",
            **over,  # type: ignore[arg-type]
        ),
    )


async def provision(settings: SessionsAppSettings, deny_purge: bool = False) -> None:
    nc = await connect(settings)
    try:
        store = event_store(nc, settings)
        replies = jsapi.Replies(nc)
        await replies.start()
        config = {**stream_config(store.settings), "deny_purge": deny_purge}
        await jsapi.ensure_stream(replies, config, 5.0)
    finally:
        await release(nc)


@pytest.fixture
async def app_settings(nats_server: Server, unique: str) -> SessionsAppSettings:
    s = sessions_settings(nats_server.url, unique)
    await provision(s)
    return s


@pytest.fixture
async def client(app_settings: SessionsAppSettings) -> AsyncIterator[SessionsClient]:
    async with open_sessions(app_settings) as c:
        yield c
