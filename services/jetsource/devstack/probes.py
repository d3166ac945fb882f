"""Client-side health probes by URL: work for embedded and external servers alike."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

from jetsource.core.aio import wait_for
from jetsource.core.settings import JetsourceSettings, redact_url

T = TypeVar("T")


async def _quiet(_exc: Exception) -> None:
    """nats-py's error callback: the probe says what failed, once (nats-py's own logged
    ``nats: encountered error`` with a traceback on each try, on the CLI's stderr)."""


# The port a URL without one means, as nats-py connects it: its websocket transport
# takes ws:// on 80 and wss:// on 443 (a healthy wss://host showed as down, probed on
# 4222).
_DEFAULT_PORT = {"nats": 4222, "tls": 4222, "ws": 80, "wss": 443}


def unreachable(url: str, timeout: float = 1.0) -> str | None:
    """Why no server of ``url`` (one URL or a comma-separated list) takes a TCP
    connection, or None when one does."""
    why = []
    for one in url.split(","):
        try:
            parts = urlsplit(one.strip() if "://" in one else f"nats://{one.strip()}")
            port = parts.port or _DEFAULT_PORT.get(parts.scheme.lower(), 4222)
            host = parts.hostname or "127.0.0.1"
        except ValueError as exc:
            # The URL as given may hold user:password@: the message shows it without.
            why.append(f"{redact_url(one.strip())}: {exc}")
            continue
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return None
        except OSError as exc:
            why.append(f"{host}:{port}: {exc.strerror or exc}")
    return "not reachable (" + "; ".join(why) + ")"


WHY_TIMEOUT_S = 0.25


def why_unreachable(url: str, timeout: float = WHY_TIMEOUT_S) -> str:
    """``: not reachable (HOST:PORT: Connection refused)`` when no server of ``url``
    takes a TCP connection, else nothing: appended to "NATS at URL did not answer within
    N s", which said the same of a closed port and of a silent server. It runs after the
    command's whole wait, so each server gets a short try (``timeout``): a host that
    drops connection attempts added 1 s per server past the documented wait."""
    why = unreachable(url, timeout)
    return f": {why}" if why else ""


def _nats(url: str, timeout: float, run: Coroutine[Any, Any, T]) -> T:
    """``run`` (a coroutine on a NATS connection), within ``timeout * 2``: a server that
    takes no connection says why at once; one that never answers is named with the
    time waited (it was an empty ``TimeoutError`` after 6 s)."""
    if why := unreachable(url, timeout):
        run.close()
        raise ConnectionError(why)
    try:
        return asyncio.run(wait_for(run, timeout * 2))
    except TimeoutError:
        raise TimeoutError(f"no answer within {timeout * 2:g} s") from None


def probe_nats(url: str, timeout: float = 3.0) -> str:
    """Connect, check JetStream answers, return the server version."""
    import nats

    async def run() -> str:
        nc = await nats.connect(
            url, connect_timeout=timeout, max_reconnect_attempts=0, error_cb=_quiet
        )
        try:
            await nc.jetstream().account_info()
            return str(nc._server_info.get("version", "?"))
        finally:
            await nc.close()

    return _nats(url, timeout, run())


def nats_condition(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """(writable, what JetStream's account info says): disabled, or storage used and
    reserved against the account's limit."""
    import nats
    from nats.js.errors import APIError, ServiceUnavailableError

    async def run() -> tuple[bool, str]:
        nc = await nats.connect(
            url, connect_timeout=timeout, max_reconnect_attempts=0, error_cb=_quiet
        )
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

    return _nats(url, timeout, run())


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
