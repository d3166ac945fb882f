"""Which graph errors are the store's (the batch waits) and which the statement's (the
event is refused, a dead letter after ``max_deliver``). ArcadeDB restarted answered the
first statement on a pooled connection with Neo.ClientError.Request.Invalid "RUN not
expected in state: AUTHENTICATION" (seen in tests/chaos/test_process_models_faults_chaos.py):
it was a refusal, and every event of the batch in flight was "refused (1): handler
error: ClientError()"; it is the store's now."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from neo4j.exceptions import ClientError, DatabaseError, Neo4jError, ServiceUnavailable

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
