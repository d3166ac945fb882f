"""graph_run: a read and all its records within one deadline. The driver fetches a
result's records after ``run`` answers (more than a fetch size of them in further
round trips): a connection lost silently between the two blocked the reader for ever
when only ``run`` was under the deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jetsource.projection.contract import TransientError
from jetsource.projection.graph import graph_run


class _Result:
    def __init__(self, rows: list[dict[str, Any]], hang_after: int | None) -> None:
        self.rows, self.hang_after = rows, hang_after

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async def each() -> AsyncIterator[dict[str, Any]]:
            for i, row in enumerate(self.rows):
                if self.hang_after is not None and i == self.hang_after:
                    await asyncio.Event().wait()  # the next PULL is never answered
                yield row

        return each()


class _Session:
    def __init__(self, rows: list[dict[str, Any]], hang_after: int | None = None) -> None:
        self.rows, self.hang_after = rows, hang_after
        self.calls: list[Any] = []

    async def run(self, query: str, **params: Any) -> _Result:
        self.calls.append((query, params))
        return _Result(self.rows, self.hang_after)


async def test_records_that_never_come_are_a_transient_error_within_the_deadline() -> None:
    session = _Session([{"k": i} for i in range(2000)], hang_after=1000)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"no answer within 0\.2 s"):
        await graph_run(session, "MATCH (n) RETURN n.k AS k", timeout_s=0.2)
    assert time.monotonic() - started < 2


async def test_rows_are_every_record_and_single_is_the_first_or_none() -> None:
    session = _Session([{"k": 1}, {"k": 2}])
    rows = await graph_run(session, "MATCH (n {key: $key}) RETURN n.k AS k", key="s1")
    assert session.calls == [("MATCH (n {key: $key}) RETURN n.k AS k", {"key": "s1"})]
    assert [r["k"] for r in rows] == [1, 2]
    assert [r["k"] async for r in rows] == [1, 2]
    assert (await rows.single()) == {"k": 1}
    assert (await (await graph_run(_Session([]), "RETURN 1")).single()) is None
