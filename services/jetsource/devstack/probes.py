"""Client-side health probes by URL: work for embedded and external servers alike."""

from __future__ import annotations

import asyncio

from jetsource.core.aio import wait_for
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

    return asyncio.run(wait_for(run(), timeout * 2))


def nats_condition(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(writable, what JetStream's account info says): disabled, or storage used and
    reserved against the account's limit."""
    import nats
    from nats.js.errors import APIError, ServiceUnavailableError

    async def run() -> tuple[bool, str]:
        nc = await nats.connect(url, connect_timeout=timeout, max_reconnect_attempts=0)
        try:
            info = await nc.jetstream().account_info()
        except (ServiceUnavailableError, APIError) as exc:
            return False, f"JetStream refused account info: {exc}"
        finally:
            await nc.close()
        used = info.storage + (getattr(info, "reserved_storage", 0) or 0)
        limit = info.limits.max_storage or -1
        text = f"JetStream storage {used / 1048576:.1f} MB used"
        if limit > 0:
            text += f" of {limit / 1048576:.1f} MB account limit"
            if used >= limit:
                return False, "JetStream account storage limit reached: " + text
        return True, text

    return asyncio.run(wait_for(run(), timeout * 2))


def probe_valkey(url: str, timeout: float = 3.0) -> str:
    import valkey

    client = valkey.Valkey.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
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
