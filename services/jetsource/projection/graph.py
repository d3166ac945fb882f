"""What every graph read model shares: the driver (Neo4j 5 in production, ArcadeDB's
Bolt plugin locally, the same Cypher) and its transient errors."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from neo4j import AsyncDriver, AsyncGraphDatabase
from neo4j import exceptions as neo4j_errors

from jetsource.core.settings import JetsourceSettings
from jetsource.projection.contract import TransientError

T = TypeVar("T")
TRANSIENT = (
    neo4j_errors.ServiceUnavailable,
    neo4j_errors.SessionExpired,
    neo4j_errors.TransientError,
    neo4j_errors.DatabaseUnavailable,
    OSError,
    TimeoutError,
)


def connect_graph(settings: JetsourceSettings) -> AsyncDriver:
    g = settings.graph
    return AsyncGraphDatabase.driver(
        settings.graph_uri(),
        auth=settings.graph_auth(),
        connection_timeout=g.connection_timeout_s,
        max_transaction_retry_time=5.0,
    )


async def graph_io(call: Awaitable[T]) -> T:
    try:
        return await call
    except TRANSIENT as exc:
        raise TransientError(f"graph: {exc}") from exc
