"""Which graph errors are the store's (the batch waits) and which the statement's (the
event is refused, a dead letter after ``max_deliver``). ArcadeDB restarted answered the
first statement on a pooled connection with Neo.ClientError.Request.Invalid "RUN not
expected in state: AUTHENTICATION" (seen in tests/chaos/test_process_models_faults_chaos.py):
it was a refusal, and every event of the batch in flight was "refused (1): handler
error: ClientError()"; it is the store's now."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from neo4j.exceptions import (
    ClientError,
    DatabaseError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
)

from jetsource.projection import graph
from jetsource.projection.contract import TransientError
from jetsource.projection.graph import graph_io, transient


def error(code: str, message: str) -> Neo4jError:
    return Neo4jError._hydrate_neo4j(code=code, message=message)  # as the driver does


async def test_a_statement_on_a_connection_not_ready_is_the_stores() -> None:
    exc = error("Neo.ClientError.Request.Invalid", "RUN not expected in state: AUTHENTICATION")
    assert transient(exc)

    async def run() -> None:
        raise exc

    with pytest.raises(TransientError):
        await graph_io(run())


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("Neo.ClientError.Statement.SyntaxError", "Invalid input"),
        ("Neo.ClientError.Request.Invalid", "Invalid parameter: a map of maps"),
        ("Neo.DatabaseError.General.UnknownError", "Error executing Cypher command"),
    ],
)
def test_what_a_statement_or_its_data_caused_stays_a_refusal(code: str, message: str) -> None:
    assert not transient(error(code, message))


# A graph store shutting down (ArcadeDB, restarted as in the chaos test above) answered
# statements in flight with its DatabaseIsClosedException as
# Neo.DatabaseError.General.UnknownError: the database's name alone for a message, or,
# wrapped by the statement's execution, "Error executing Cypher command: <statement>"
# (4 and 5 of them over 4 restarts with 8 writers). Both were refusals: one try of
# max_deliver for every event of the batch in flight, as a poison event's.
CLOSED = "Neo.DatabaseError.General.UnknownError"
STATEMENT = "Error executing Cypher command: MERGE (n:P {id: $id}) SET n.v = $v"


@pytest.mark.parametrize(
    "message",
    [
        "jetsource",  # ArcadeDB: DatabaseIsClosedException(<database>)
        "The database has been shut down.",
        "Database 'jetsource' is shutting down",
        "com.arcadedb.exception.DatabaseIsClosedException: jetsource",
    ],
)
def test_a_database_closing_under_the_statement_is_the_stores(message: str) -> None:
    assert transient(error(CLOSED, message), database="jetsource")


def test_a_database_error_naming_another_word_is_no_closing() -> None:
    assert not transient(error(CLOSED, "jetsource"))  # whose database: not said
    assert not transient(error(CLOSED, "other"), database="jetsource")
    assert not transient(error(CLOSED, STATEMENT), database="jetsource")


class _Session:
    """Answers "RETURN 1" (``up``) or fails as a store shutting down does."""

    def __init__(self, up: bool) -> None:
        self.up = up
        self.asked: list[str] = []

    async def run(self, query: str) -> Any:
        self.asked.append(query)
        if not self.up:
            raise ServiceUnavailable("Couldn't connect to 127.0.0.1:7687")
        result = mock.MagicMock()
        result.consume = mock.AsyncMock()
        return result


async def _fails(exc: BaseException) -> None:
    raise exc


async def test_a_statement_error_while_the_store_closes_is_the_stores() -> None:
    session = _Session(up=False)
    with pytest.raises(TransientError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]


async def test_a_statement_error_while_the_store_answers_stays_a_refusal() -> None:
    session = _Session(up=True)
    with pytest.raises(DatabaseError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]
    # A client error (the statement's own) never asks the store.
    with pytest.raises(ClientError):
        await graph_io(
            _fails(error("Neo.ClientError.Statement.SyntaxError", "Invalid input")),
            session=session,
        )
    assert session.asked == ["RETURN 1 AS one"]


async def test_the_closed_database_named_alone_is_the_stores_without_asking() -> None:
    session = _Session(up=True)
    with pytest.raises(TransientError):
        await graph_io(_fails(error(CLOSED, "jetsource")), session=session, database="jetsource")
    assert session.asked == []


# Review of 54d788c: the closing words counted anywhere in the message, so a refusal
# quoting the statement's data was the store's (a TransientError, retried for ever
# without counting toward max_deliver: the model stalled on it). They count as the
# whole message or its start, or as the DatabaseIsClosedException class name.
@pytest.mark.parametrize(
    "message",
    [
        "Duplicated key [the line is shut down] found on index 'P[id]'",
        "Duplicated key [database is closed] found",
        "Error executing Cypher command: MERGE (n:P {id: 'has been shut down'})",
        "Value 'DatabaseIsClosedException' is not valid",
    ],
)
def test_closing_words_in_the_statements_data_stay_a_refusal(message: str) -> None:
    assert not transient(error(CLOSED, message), database="jetsource")


class _ProbeFails:
    """Fails "RETURN 1" with ``exc``, or answers it after ``delay`` seconds."""

    def __init__(self, exc: BaseException | None = None, delay: float = 0.0) -> None:
        self.exc, self.delay = exc, delay
        self.asked: list[str] = []

    async def run(self, query: str) -> Any:
        self.asked.append(query)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.exc is not None:
            raise self.exc
        result = mock.MagicMock()
        result.consume = mock.AsyncMock()
        return result


async def test_a_slow_answer_to_the_probe_leaves_a_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poison statement that wedges the store makes "RETURN 1" slow: that is an
    answer, and the statement's error stays its refusal (counted toward max_deliver),
    never a TransientError retried for ever."""
    monkeypatch.setattr(graph, "PROBE_TIMEOUT_S", 0.05)
    session = _ProbeFails(delay=1.0)
    with pytest.raises(DatabaseError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]


@pytest.mark.parametrize(
    "probe",
    [
        ServiceUnavailable("Couldn't connect to 127.0.0.1:7687"),
        SessionExpired("the connection was lost"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(111, "Connection refused"),
    ],
    ids=type,
)
async def test_a_probe_failing_at_the_connection_is_the_stores(probe: BaseException) -> None:
    session = _ProbeFails(exc=probe)
    with pytest.raises(TransientError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")


@pytest.mark.parametrize(
    "probe",
    [
        error("Neo.ClientError.Statement.SyntaxError", "Invalid input"),
        RuntimeError("a driver's own trouble"),
        ValueError("no"),
    ],
    ids=repr,
)
async def test_a_probe_failing_otherwise_leaves_a_refusal(probe: BaseException) -> None:
    session = _ProbeFails(exc=probe)
    with pytest.raises(DatabaseError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]


# Review 9d: a closed ArcadeDB database answered the probe itself with its statement
# echoed; "RETURN 1 AS one" holds no event's data, so its database error is the store's
# (it counted as every event's refusal, dead letters after max_deliver). Whatever the
# words: the probe's own statement cannot be the events' fault.
@pytest.mark.parametrize(
    "message",
    [
        "Error executing Cypher command: RETURN 1 AS one",
        "Duplicated key [the line is shut down] found",
        "",
    ],
)
async def test_a_probe_refused_with_a_database_error_is_the_stores(message: str) -> None:
    session = _ProbeFails(exc=error(CLOSED, message))
    with pytest.raises(TransientError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]


# Review of 6f964ac: the probe ran in the failed statement's session; a store that
# carries a failed transaction's error over answered it with that same error, taken
# for the store's (TransientError, not counted toward max_deliver): a poison event
# retried for ever.
async def test_the_statements_error_carried_over_to_the_probe_stays_a_refusal() -> None:
    session = _ProbeFails(exc=error(CLOSED, STATEMENT))
    with pytest.raises(DatabaseError):
        await graph_io(_fails(error(CLOSED, STATEMENT)), session=session, database="jetsource")
    assert session.asked == ["RETURN 1 AS one"]


class _Driver:
    """Hands out a fresh session (``fresh``) for the probe."""

    def __init__(self, fresh: Any) -> None:
        self.fresh = fresh
        self.databases: list[str | None] = []

    def session(self, database: str | None = None) -> Any:
        self.databases.append(database)
        fresh = self.fresh

        class _Ctx:
            async def __aenter__(self) -> Any:
                return fresh

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Ctx()


async def test_the_probe_runs_in_a_fresh_session_of_the_driver() -> None:
    statements = _ProbeFails(exc=error(CLOSED, STATEMENT))  # would carry it over
    fresh = _Session(up=False)
    driver = _Driver(fresh)
    with pytest.raises(TransientError):
        await graph_io(
            _fails(error(CLOSED, STATEMENT)),
            session=statements,
            database="jetsource",
            driver=driver,
        )
    assert statements.asked == []
    assert fresh.asked == ["RETURN 1 AS one"]
    assert driver.databases == ["jetsource"]


async def test_a_statement_that_raced_a_delete_runs_again() -> None:
    """ArcadeDB answered a MATCH racing a prune's DETACH DELETE with
    Neo.ClientError.Statement.EntityNotFound "Record #1232:305 not found" (a CI run of
    tests/integration/sessions/test_prune_on_the_ledger.py): the statement ran in its
    own transaction, rolled back whole, so graph_run runs it again (at most
    RACED_TRIES times); any other client error is raised at once."""
    gone = error(graph.ENTITY_GONE, "Record #1232:305 not found")
    answers: list[Any] = [gone, gone, [{"a": "p1"}]]
    calls = 0

    class Session:
        async def run(self, *args: Any, **params: Any) -> Any:
            nonlocal calls
            calls += 1
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer

            async def records() -> Any:
                for record in answer:
                    yield record

            return records()

    rows = await graph.graph_run(Session(), "MATCH (a) RETURN a.id AS a")
    assert list(rows) == [{"a": "p1"}] and calls == 3

    answers[:] = [gone] * graph.RACED_TRIES
    with pytest.raises(ClientError):
        await graph.graph_run(Session(), "MATCH (a) RETURN a.id AS a")
    assert not answers

    answers[:] = [error("Neo.ClientError.Statement.SyntaxError", "Invalid input"), []]
    with pytest.raises(ClientError):
        await graph.graph_run(Session(), "MATCH (a) RETURN a.id AS a")
    assert len(answers) == 1
