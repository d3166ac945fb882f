"""Each fixture server is real, of a version jetsource needs, and does what we rely on."""

from __future__ import annotations

import pytest
import valkey.asyncio as aiovalkey
from nats.aio.client import Client as NATS
from nats.js.api import StreamConfig
from neo4j import AsyncGraphDatabase

from jetsource.devstack.servers import MIN_NATS, parse_version
from tests.infra import Server

pytestmark = pytest.mark.integration


async def test_nats_jetstream_stream_publish_direct_get(nc: NATS, unique: str) -> None:
    version = nc._server_info["version"]
    assert parse_version(version) >= MIN_NATS, f"nats-server {version} lacks atomic batch"

    js = nc.jetstream()
    stream = f"SMOKE_{unique}"
    await js.add_stream(
        StreamConfig(name=stream, subjects=[f"smoke.{unique}.>"], allow_direct=True)
    )
    try:
        ack = await js.publish(f"smoke.{unique}.a", b"hello", headers={"Nats-Msg-Id": "m1"})
        again = await js.publish(f"smoke.{unique}.a", b"hello", headers={"Nats-Msg-Id": "m1"})
        assert (ack.seq, again.duplicate) == (1, True)

        msg = await js.get_msg(stream, seq=1, direct=True)
        assert (msg.subject, msg.data) == (f"smoke.{unique}.a", b"hello")
    finally:
        await js.delete_stream(stream)


async def test_valkey_set_get(valkey_server: Server, unique: str) -> None:
    client = aiovalkey.Valkey.from_url(valkey_server.url)
    try:
        info = await client.info("server")
        version = str(info.get("valkey_version") or info["redis_version"])
        assert parse_version(version) >= (7, 2), f"valkey {version} too old"

        await client.set(f"smoke:{unique}", "value", ex=60)
        assert await client.get(f"smoke:{unique}") == b"value"
    finally:
        await client.delete(f"smoke:{unique}")
        await client.aclose()


async def test_graph_index_merge_in_transaction_read_back(
    graph_server: Server, unique: str
) -> None:
    extra = graph_server.extra
    label = f"Smoke{unique}"
    async with AsyncGraphDatabase.driver(
        graph_server.url, auth=(extra["user"], extra["password"])
    ) as driver:
        info = await driver.get_server_info()
        assert info.agent.startswith("Neo4j/5"), f"not a Neo4j 5 Bolt server: {info.agent}"

        async with driver.session(database=extra["database"]) as session:
            await session.run(
                f"CREATE INDEX smoke_{unique} IF NOT EXISTS FOR (n:{label}) ON (n.key)"
            )
            tx = await session.begin_transaction()
            await tx.run(
                f"UNWIND $rows AS row MERGE (n:{label} {{key: row.key}}) SET n.value = row.value",
                rows=[{"key": "a", "value": 1}, {"key": "b", "value": 2}],
            )
            await tx.commit()
            # MERGE again must not duplicate.
            tx = await session.begin_transaction()
            await tx.run(f"MERGE (n:{label} {{key: 'a'}}) SET n.value = 10")
            await tx.commit()

            result = await session.run(
                f"MATCH (n:{label}) RETURN n.key AS key, n.value AS value ORDER BY key"
            )
            rows = [record.data() async for record in result]
            assert rows == [{"key": "a", "value": 10}, {"key": "b", "value": 2}]
            await session.run(f"MATCH (n:{label}) DELETE n")
