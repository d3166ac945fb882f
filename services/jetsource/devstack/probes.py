"""Client-side health probes by URL: work for embedded and external servers alike."""

from __future__ import annotations

import asyncio

from jetsource.core.settings import JetsourceSettings


def probe_nats(url: str, timeout: float = 3.0) -> str:
    """Connect, check JetStream answers, return the server version."""
    import nats

    async def run() -> str:
        nc = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
            return str(nc._server_info.get("version", "?"))
        finally:
            await nc.close()

    return asyncio.run(asyncio.wait_for(run(), timeout * 2))


def probe_valkey(url: str, timeout: float = 3.0) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        info = client.info("server")
        return str(info.get("valkey_version") or info["redis_version"])
    finally:
        client.close()


def probe_graph(settings: JetsourceSettings, timeout: float = 5.0) -> str:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(
        settings.graph_uri(), auth=settings.graph_auth(), connection_timeout=timeout
    ) as driver:
        driver.verify_connectivity()
        return str(driver.get_server_info().agent)
