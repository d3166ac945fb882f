"""A partition's graph fence claim takes the fence nodes' write lock before it reads
their token (projection/graph.py, ``FencedDriver.claim``). Read in one statement and
raised in a second, two claims that read the same old token (Neo4j's read committed)
could commit in either order, the older token last: the new owner fenced, the paused
one writing. The statements are recorded by tests/cypher_collect.py's fake driver."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from jetsource.projection.graph import FencedDriver
from jetsource.projection.partitions import Fence, FencedError
from tests.cypher_collect import Recorder, _FenceDriver


async def _held() -> bool:
    return True


def claim(stored: int | None, count: int, token: int) -> list[str]:
    recorder = Recorder()
    fake = _FenceDriver(recorder, stored, count)
    driver = FencedDriver(fake, Fence("g", 0, token, _held), "", "neo4j")  # type: ignore[arg-type]
    with contextlib.suppress(FencedError):
        asyncio.run(driver.claim())
    return [s.query for s in recorder.statements]


@pytest.mark.parametrize("stored", [3, 5, 9])
def test_the_token_is_read_under_the_write_that_raises_it(stored: int) -> None:
    first, *rest = claim(stored, 1, 5)
    assert first.index("SET") < first.index("RETURN"), first
    assert "n.token = CASE WHEN n.token < $t" in first, first
    assert "max(n.token)" in first.split("RETURN", 1)[1], first
    assert not any("n.token" in q and "SET" in q for q in rest), rest  # no second write


def test_a_newer_stored_token_refuses_the_claim() -> None:
    recorder = Recorder()
    fake = _FenceDriver(recorder, 9, 1)
    driver = FencedDriver(fake, Fence("g", 0, 5, _held), "", "neo4j")  # type: ignore[arg-type]
    with pytest.raises(FencedError, match="a newer token"):
        asyncio.run(driver.claim())
