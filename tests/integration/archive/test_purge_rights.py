"""Purge rights belong to the archiver alone, enforced twice by nats-server itself:

- the stream: only a stream whose policy is age+compaction is created without
  deny_purge, and a stream created with it can never drop it (the server refuses);
  so even the archiver's credentials cannot purge a keep-forever stream;
- the account: the services' NATS user is denied ``$JS.API.STREAM.PURGE.>`` (and
  message deletion), the archiver's user is not; a service that tries to purge is
  refused by the server and nothing is removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore, stream_config
from tests.eventstore_fixtures import created, decision
from tests.infra import Server, _embedded

pytestmark = pytest.mark.integration

# The authorization block an operator gives nats-server (see the README, Retention).
AUTHORIZATION = """
authorization {
  users: [
    {user: services, password: services-secret, permissions: {
      publish: {deny: ["$JS.API.STREAM.PURGE.>", "$JS.API.STREAM.MSG.DELETE.>",
                       "$JS.API.STREAM.DELETE.>"]}}}
    {user: archiver, password: archiver-secret}
  ]
}
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from jetsource.devstack.servers import NatsServer, free_port

    folder: Path = tmp_path_factory.mktemp("nats-rights")
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


async def test_only_the_archiver_user_can_purge_and_only_a_compacting_stream(
    guarded: Server,
) -> None:
    url = guarded.url
    service = await nats.connect(url, user="services", password="services-secret")
    archiver = await nats.connect(url, user="archiver", password="archiver-secret")
    try:
        compacting = EventStoreSettings(
            stream="RIGHTS_C",
            subject_prefix="rightsc.events",
            retention="age+compaction",
            max_age_s=60,
            retry_attempts=1,
            request_timeout_s=1.0,
        )
        forever = EventStoreSettings(
            stream="RIGHTS_F", subject_prefix="rightsf.events", request_timeout_s=1.0
        )
        stores = {}
        for cfg in (compacting, forever):
            store = JetStreamEventStore(service, registry, cfg)
            await store.ensure_streams()
            await store.append("a1", [created(), decision(1), decision(2)], 0)
            stores[cfg.stream] = store

        async def count(stream: str) -> int:
            info = await jsapi.api(stores[stream]._replies, f"STREAM.INFO.{stream}", {}, 2.0)
            return int(info["state"]["messages"])

        # The services' user: the server drops the request (permissions violation).
        with pytest.raises(TimeoutError):  # no answer: the publish was refused
            await jsapi.purge_subject_before(
                stores["RIGHTS_C"]._replies, "RIGHTS_C", "rightsc.events.a1.>", 3, 1.0
            )
        assert await count("RIGHTS_C") == 3

        replies = jsapi.Replies(archiver)
        await replies.start()
        # The archiver's user, on a keep-forever stream: refused by the stream.
        with pytest.raises(jsapi.JsApiError) as refused:
            await jsapi.purge_subject_before(replies, "RIGHTS_F", "rightsf.events.a1.>", 3, 2.0)
        assert refused.value.err_code == 10110
        assert await count("RIGHTS_F") == 3
        # ... which can never be made purgeable.
        with pytest.raises(jsapi.JsApiError, match="deny purge"):
            config = dict(stream_config(forever), deny_purge=False)
            await jsapi.api(replies, "STREAM.UPDATE.RIGHTS_F", config, 2.0)
        # The archiver's user on the compacting stream: allowed.
        assert (
            await jsapi.purge_subject_before(replies, "RIGHTS_C", "rightsc.events.a1.>", 3, 2.0)
            == 2
        )
        assert await count("RIGHTS_C") == 1
        await replies.stop()
        for store in stores.values():
            await store.close()
    finally:
        await service.close()
        await archiver.close()
