"""What every graph read model shares: the driver (Neo4j 5 in production, ArcadeDB's
Bolt plugin locally, the same Cypher) and its transient errors."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from neo4j import AsyncDriver, AsyncGraphDatabase
from neo4j import exceptions as neo4j_errors

from jetsource.core.settings import JetsourceSettings
from jetsource.projection.contract import StoreLost, TransientError
from jetsource.projection.marks import Mark
from jetsource.projection.partitions import Fence, FencedError

T = TypeVar("T")
TRANSIENT = (
    neo4j_errors.ServiceUnavailable,
    neo4j_errors.SessionExpired,
    neo4j_errors.TransientError,
    neo4j_errors.DatabaseUnavailable,
    # The server answers and refuses for reasons of its own, none of them the event's:
    # credentials refused or expired, a user without the write right, no connection
    # free in the pool. Taken for a refusal of the events they dead-lettered every
    # event of the batch and parked its stories; as outages the batch waits for the
    # store. (Neo.DatabaseError.* stays a refusal: ArcadeDB may answer it for what a
    # statement's data caused, which waiting would never cure.)
    neo4j_errors.AuthError,
    neo4j_errors.Forbidden,
    neo4j_errors.ConnectionAcquisitionTimeoutError,
    OSError,
    TimeoutError,
)
# Client errors that are the store's state, not the statement's: the database does not
# exist (dropped, being created again: the graph store emptied), or a cluster member
# that cannot write now.
TRANSIENT_CODES = (
    "Neo.ClientError.Database.DatabaseNotFound",
    "Neo.ClientError.Cluster.NotALeader",
    "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase",
    "Neo.ClientError.Security.",
)


# A request on a connection still in a state that takes no statement: ArcadeDB's Bolt
# plugin, restarted, answered the first RUN on a pooled connection with
# Neo.ClientError.Request.Invalid "RUN not expected in state: AUTHENTICATION". The
# connection's state, never the statement's data: taken for a refusal, every event of
# the batch in flight was "refused" (one try of max_deliver each, as a poison event's).
PROTOCOL_STATE = ("Neo.ClientError.Request.Invalid", "not expected in state")


# A database error that says the database is closing or closed under the statement (a
# store shutting down), never what the statement's data caused. Neo4j says it in words;
# ArcadeDB's Bolt plugin answers its DatabaseIsClosedException as
# Neo.DatabaseError.General.UnknownError with the database's name alone for a message,
# or, wrapped by the statement's execution, "Error executing Cypher command: <the
# statement>", the very answer a statement's data gets: that one only a question to
# the store tells apart (graph_io's ``session``). The words count as the whole message
# or its start only ("The database has been shut down.", "Database 'x' is shutting
# down", "com.arcadedb.exception.DatabaseIsClosedException: x"): a refusal quoting the
# statement's data ("Duplicated key [the line is shut down] found") names its data,
# and waiting would never cure it.
CLOSING = re.compile(
    r"^(?:(?:[\w$]+\.)*DatabaseIsClosedException\b"
    r"|(?:the\s+)?database(?:\s+'[^']*'|\s+\"[^\"]*\"|\s+`[^`]*`|\s+[\w.-]+)?\s+"
    r"(?:is\s+closed|is\s+not\s+open|has\s+been\s+shut\s+down|is\s+shut\s+down"
    r"|is\s+shutting\s+down|is\s+being\s+shut\s+down)\b)",
    re.IGNORECASE,
)


def _closing(exc: neo4j_errors.Neo4jError, database: str | None) -> bool:
    """Whether a database error says the database is closing or closed (:data:`CLOSING`),
    or names ``database`` alone (ArcadeDB's DatabaseIsClosedException)."""
    text = (exc.message or "").strip()
    return (database is not None and text == database) or CLOSING.match(text) is not None


def transient(exc: BaseException, database: str | None = None) -> bool:
    """Whether a graph error is the store's (the batch waits and is retried).
    ``database``: the database the statement ran in (a closed one is named alone)."""
    if isinstance(exc, TRANSIENT):
        return True
    if not isinstance(exc, neo4j_errors.Neo4jError):
        return False
    code, message = exc.code, exc.message
    if isinstance(code, str) and code == PROTOCOL_STATE[0]:
        return PROTOCOL_STATE[1] in (message or "")
    if isinstance(code, str) and code.startswith("Neo.DatabaseError."):
        return _closing(exc, database)
    return isinstance(code, str) and code.startswith(TRANSIENT_CODES)


def connect_graph(settings: JetsourceSettings) -> AsyncDriver:
    g = settings.graph
    return AsyncGraphDatabase.driver(
        settings.graph_uri(),
        auth=settings.graph_auth(),
        connection_timeout=g.connection_timeout_s,
        max_transaction_retry_time=5.0,
    )


# The longest a call to the graph store may go unanswered before it counts as failed
# (transient: the batch is redelivered, and the driver opens a new connection). The
# driver has no read timeout of its own: Neo4j hints one to it
# (connection.recv_timeout_seconds), ArcadeDB's Bolt plugin does not, so a connection
# the network lost silently (no FIN, no RST) blocked a worker for ever. Far above any
# transaction the models make (a batch of 500 events commits in well under a second).
IO_TIMEOUT_S = 60.0


# The longest the store is given to answer "RETURN 1" after a database error (graph_io).
# A slow answer is an answer: the error stays the statement's refusal (a poison
# statement that wedges the store must count toward max_deliver, never wait for ever).
PROBE_TIMEOUT_S = 2.0

# How the probe fails when the store is away: the connection refused, lost or closed
# under it, the database unavailable. Nothing else (a slow answer, another error) says
# the store is away.
AWAY = (
    neo4j_errors.ServiceUnavailable,
    neo4j_errors.SessionExpired,
    neo4j_errors.DatabaseUnavailable,
    ConnectionError,
    OSError,
)


async def graph_io(
    call: Awaitable[T],
    timeout_s: float | None = None,
    session: Any = None,
    database: str | None = None,
    driver: Any = None,
) -> T:
    """``call`` within ``timeout_s``, the store's errors raised as TransientError (the
    batch waits) and the statement's as they are (a refusal). With ``session`` (the
    session ``call`` runs in) a database error that does not say whose it is asks the
    store: one whose "RETURN 1" fails at the connection level or is refused with a
    database error is closing (ArcadeDB shutting down said "Error executing Cypher
    command" for a closed database, a refusal of every event of the batch in flight, as
    a poison event's try); one that answers, however slowly, refused it
    (:func:`_store_away`).
    ``database``: the one ``call`` runs in (:func:`transient`). ``driver``: the one
    ``session`` came from, for the probe to run in a session of its own (the failed
    statement's session may carry its error over to the probe)."""
    limit = IO_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = asyncio.timeout(limit)
    try:
        async with deadline:
            return await call
    except (neo4j_errors.Neo4jError, neo4j_errors.DriverError, OSError, TimeoutError) as exc:
        if not transient(exc, database):
            if not (isinstance(exc, neo4j_errors.DatabaseError) and session is not None):
                raise
            if not await _store_away(session, exc, driver, database):
                raise
            raise TransientError(f"graph: the store is away after {exc!r}") from exc
        if deadline.expired():
            raise TransientError(f"graph: no answer within {limit:g} s") from exc
        raise TransientError(f"graph: {exc}") from exc


async def _store_away(
    session: Any, statement: BaseException, driver: Any = None, database: str | None = None
) -> bool:
    """Whether "RETURN 1" fails at the connection level (:data:`AWAY`), or is refused
    with a database error (Neo.DatabaseError.*): the store is away. That statement
    holds no event's data, so its database error is the store's whatever it says (a
    closed ArcadeDB database answered it "Error executing Cypher command: RETURN 1 AS
    one", which counted as every event's refusal). An answer, a slow one (no answer
    within PROBE_TIMEOUT_S) or any other error leaves the statement's error its refusal.

    Asked in a session of its own from ``driver`` when given, else in ``session`` (the
    failed statement's). A refusal with the statement's own code and message is that
    error carried over to the probe (a session, or a store, that keeps a failed
    transaction's error), not the store's: it stays the statement's refusal, which
    counts toward max_deliver (a TransientError does not: a poison event retried for
    ever)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            if driver is not None:
                async with driver.session(database=database) as fresh:
                    result = await fresh.run("RETURN 1 AS one")
                    await result.consume()
            else:
                result = await session.run("RETURN 1 AS one")
                await result.consume()
    except TimeoutError:  # slow, not away (TimeoutError is an OSError)
        return False
    except AWAY:
        return True
    except neo4j_errors.Neo4jError as exc:
        if isinstance(statement, neo4j_errors.Neo4jError) and (exc.code, exc.message) == (
            statement.code,
            statement.message,
        ):
            return False  # the statement's error carried over, not the store's
        return isinstance(exc.code, str) and exc.code.startswith("Neo.DatabaseError.")
    except Exception:  # an answer of another kind: not away
        return False
    return False


class Rows(list[Any]):
    """A read's records, every one fetched within the read's deadline (they come over
    the same connection as the answer to ``run``): iterate them, also with
    ``async for``, or take ``await rows.single()``."""

    def __aiter__(self) -> AsyncIterator[Any]:
        async def each() -> AsyncIterator[Any]:
            for record in self:
                yield record

        return each()

    async def single(self) -> Any | None:
        return self[0] if self else None


async def graph_run(
    session: Any, *args: Any, timeout_s: float | None = None, **params: Any
) -> Rows:
    """``session.run(*args, **params)`` and all its records, within one deadline
    (:func:`graph_io`): a connection lost between the answer and its records blocks
    no reader."""

    async def read() -> Rows:
        result = await session.run(*args, **params)
        return Rows([record async for record in result])

    for attempt in range(1, RACED_TRIES + 1):
        try:
            return await graph_io(read(), timeout_s)
        except neo4j_errors.ClientError as exc:
            if exc.code != ENTITY_GONE or attempt == RACED_TRIES:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# A statement that met a record deleted under it while it ran (ArcadeDB: "Record
# #1232:305 not found" from a MATCH racing a prune's DETACH DELETE; Neo4j says the same
# of a node deleted by a concurrent transaction). graph_run's statements run in a
# transaction of their own (auto-commit), rolled back whole when they fail: run again,
# they see the delete done. Seen once in CI (a sessions prune test reading the graph's
# edges while its projector deleted the pruned tree).
ENTITY_GONE = "Neo.ClientError.Statement.EntityNotFound"
RACED_TRIES = 3


# -- fencing (partitioned workers) -----------------------------------------------------


class FencedDriver:
    """The graph driver as a partition worker's model sees it: every write
    transaction (``session.execute_write``) first locks the partition's fence node
    (a write to it: Neo4j takes the node's lock, ArcadeDB detects the conflict) and
    compares its token; when another worker holds the fence it raises ``FencedError``
    and the transaction rolls back, having written nothing."""

    def __init__(self, driver: AsyncDriver, fence: Fence, label_prefix: str, database: str) -> None:
        self._driver = driver
        self._fence = fence
        # One label per (group, partition): ArcadeDB detects conflicts by page, and
        # nodes of one type share pages, so one fence node per type keeps partitions
        # from conflicting with each other on their fences.
        self._label = f"{label_prefix}JetsourceFence_{fence.group}_{fence.partition}"
        self._database = database
        fence.claims.append(self.claim)

    async def claim(self) -> None:
        """Raise the stored token to this worker's. Two first claims at once can each
        find no fence node and create one (a MATCH then a CREATE, no constraint on a
        per-partition label): so the stored token is the largest of the nodes'
        (``check`` compares with it too), and a claim that holds the fence collapses
        the extra nodes into one."""
        f = self._fence

        async def work(tx: Any) -> int:
            # One statement that writes before it reads: the write lock is taken
            # before the token is read (Neo4j's way to avoid a lost update; a read,
            # then a write in a second statement, let two claims that read the same
            # old token commit in either order, the older token last).
            result = await tx.run(
                f"MATCH (n:{self._label}) SET n.writes = n.writes + 1, "
                "n.token = CASE WHEN n.token < $t THEN $t ELSE n.token END "
                "RETURN max(n.token) AS t, count(n) AS c",
                t=f.token,
            )
            row = await result.single()
            count = int(row["c"]) if row is not None else 0
            if count == 0:
                await tx.run(f"CREATE (n:{self._label} {{token: $t, writes: 0}})", t=f.token)
                return f.token
            stored = int(row["t"])
            if stored > f.token:
                return stored
            if count > 1:
                await tx.run(
                    f"MATCH (n:{self._label}) WITH collect(n) AS ns "
                    "UNWIND ns[1..] AS extra DELETE extra"
                )
            return f.token

        async with self._driver.session(database=self._database) as session:
            stored = await graph_io(
                session.execute_write(work),
                session=session,
                database=self._database,
                driver=self._driver,
            )
        if stored != f.token:
            raise FencedError(f"partition {f.partition}: a newer token ({stored}) is stored")

    async def check(self, tx: Any) -> None:
        """In the model's transaction, before its writes: lock the fence node (a write)
        and compare tokens; a claim after this waits for (or conflicts with) it. Where
        racing first claims left two nodes, every one is locked and the largest token
        is the stored one."""
        f = self._fence
        result = await tx.run(
            f"MATCH (n:{self._label}) SET n.writes = n.writes + 1 RETURN max(n.token) AS t"
        )
        row = await result.single()
        if row is None or row["t"] is None or int(row["t"]) != f.token:
            raise FencedError(
                f"partition {f.partition}: token {f.token} is no longer the stored one"
            )

    def session(self, **kwargs: Any) -> _FencedSession:
        return _FencedSession(self._driver.session(**kwargs), self)

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)


class _FencedSession:
    def __init__(self, session: Any, driver: FencedDriver) -> None:
        self._session = session
        self._driver = driver

    async def __aenter__(self) -> _FencedSession:
        await self._session.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.__aexit__(*exc)

    async def execute_write(
        self, work: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        async def fenced(tx: Any, *a: Any, **kw: Any) -> T:
            await self._driver.check(tx)
            return await work(tx, *a, **kw)

        result: T = await self._session.execute_write(fenced, *args, **kwargs)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class GraphMark(Mark):
    """A graph model version's birth mark: ``born`` on its checkpoint node, a random
    token taken when its worker first runs it, and checked first in every write
    transaction (``check``), as the Valkey models' (``jetsource.projection.valkey``):
    a graph store emptied or replaced raises ``StoreLost`` (the transaction writes
    nothing) and the worker builds the version again from its replay start."""

    def __init__(self, driver: AsyncDriver, database: str, label: str, model: str) -> None:
        super().__init__()
        self.driver = driver
        self.database = database
        self.label = label
        self.model = model

    async def stored(self) -> str | None:
        async with self.driver.session(database=self.database) as session:
            record = await (
                await graph_run(
                    session,
                    f"MATCH (c:{self.label} {{model: $model}}) RETURN c.born AS born",
                    model=self.model,
                )
            ).single()
        return str(record["born"]) if record and record["born"] else None

    async def _keep_or_store(self, token: str) -> None:
        async with self.driver.session(database=self.database) as session:
            await graph_run(
                session,
                f"MERGE (c:{self.label} {{model: $model}}) "
                "ON CREATE SET c.seq = 0, c.applied = 0 "
                "SET c.born = coalesce(c.born, $token)",
                model=self.model,
                token=token,
            )

    async def check(self, tx: Any) -> None:
        """First in a write transaction (``expect`` awaited before it)."""
        result = await tx.run(
            f"OPTIONAL MATCH (c:{self.label} {{model: $model}}) RETURN c.born AS born",
            model=self.model,
        )
        record = await result.single()
        born = record["born"] if record else None
        if born != self.expected:
            raise StoreLost(
                f"{self.label} {self.model!r}: birth mark gone or another one: the graph "
                "store was emptied or replaced"
            )
