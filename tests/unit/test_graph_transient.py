"""Which graph errors are the store's (the batch waits) and which the statement's (the
event is refused, a dead letter after ``max_deliver``). ArcadeDB restarted answered the
first statement on a pooled connection with Neo.ClientError.Request.Invalid "RUN not
expected in state: AUTHENTICATION" (seen in tests/chaos/test_process_models_faults_chaos.py):
it was a refusal, and every event of the batch in flight was "refused (1): handler
error: ClientError()"; it is the store's now."""

from __future__ import annotations

import pytest
from neo4j.exceptions import Neo4jError

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
