"""Purge rights on the ledger, enforced by nats-server itself:

- the process stream, made from the process domain's own descriptor, allows purges
  (its policy names the ``pruner`` role); the context stream still denies them, even to
  the pruner's user;
- the account: the services' NATS user (the observer's, the projector's) is denied
  ``$JS.API.STREAM.PURGE.>``; a prune with it is refused before anything is written
  (no tombstone: the read models forget nothing) and nothing is removed; the pruner's
  user prunes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from jetsource.core.settings import JetsourceSettings, NatsSettings
from jetsource.domains.process.descriptor import DOMAIN
from jetsource.domains.process.pruning import PRUNER_ID
from jetsource.domains.sessions.connect import open_sessions
from jetsource.domains.sessions.service import PruneDeniedError
from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.jetstream import JetStreamEventStore, stream_config
from tests.infra import Server, _embedded

from .test_prune import ended

pytestmark = pytest.mark.integration

# What an operator gives nats-server (README, sessions: pruning): the services may not
# purge or delete anything; the pruner may purge (the streams' own policies decide where).
AUTHORIZATION = """
authorization {
  users: [
    {user: services, password: services-secret, permissions: {
      publish: {deny: ["$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>",
                       "$JS.API.STREAM.DELETE.>"]}}}
    {user: pruner, password: pruner-secret, permissions: {
      publish: {deny: ["$JS.API.STREAM.MSG.DELETE.>", "$JS.API.STREAM.DELETE.>"]}}}
  ]
}
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from jetsource.devstack.servers import NatsServer, free_port

    folder: Path = tmp_path_factory.mktemp("nats-prune-rights")
    server = _embedded(
        NatsServer(
            folder / "nats",
            port=free_port(),
            monitor_port=free_port(),
            sync_interval=None,
            extra_config=AUTHORIZATION,
        )
    )
    yield server
    server.stop()


def as_user(url: str, user: str) -> SessionsAppSettings:
    return SessionsAppSettings(
        nats=NatsSettings(url=url, user=user, password=SecretStr(f"{user}-secret")),
        sessions=SessionsSettings(purge_timeout_s=1.0),
    )


async def test_only_the_pruner_user_purges_the_ledger(guarded: Server) -> None:
    services = as_user(guarded.url, "services")
    # The stream as the observer makes it, from the process domain's descriptor.
    nc = await connect(services)
    try:
        store = JetStreamEventStore(nc, DOMAIN.registry, DOMAIN.eventstore(services))
        info = await store.ensure_streams()
        assert info["config"]["name"] == "PROCESS_EVENTS"
        assert info["config"]["deny_purge"] is False and info["config"]["deny_delete"] is True
        context = JetStreamEventStore(nc, DOMAIN.registry, JetsourceSettings().eventstore)
        assert (await context.ensure_streams())["config"]["deny_purge"] is True
    finally:
        await release(nc)

    async with open_sessions(services) as c:
        ids = await ended(c, 3)
        with pytest.raises(PruneDeniedError, match="may not purge"):
            await c.sessions.prune(c.purger, older_than_s=0, keep=1)
        assert {r.session_id for r in await c.sessions.list_sessions()} == set(ids)
        assert await c.store.last_version(PRUNER_ID) == 0  # no tombstone written

    async with open_sessions(as_user(guarded.url, "pruner")) as c:
        report = await c.sessions.prune(c.purger, older_than_s=0, keep=1)
        assert [r.session_id for r in report.pruned] == ids[:2]
        assert {r.session_id for r in await c.sessions.list_sessions()} == {ids[2]}
        # The context stream keeps denying purge, whoever asks.
        with pytest.raises(jsapi.JsApiError) as refused:
            await jsapi.api(
                c.purger._replies,
                "STREAM.PURGE.CONTEXT_EVENTS",
                {"filter": "context.events.x.>"},
                2.0,
            )
        assert refused.value.err_code == 10110
    assert stream_config(DOMAIN.eventstore(services))["deny_purge"] is False
