"""An admin command's retries of a store that never answers are bounded in time, not
only in count: each try of a graph that accepts connections but does not answer waits
its full 60 s, and 8 tries kept `projector rebuild` going 8 minutes before it said the
graph was away (`projector status`, `reset`, `drop` the same). They now stop once
``RETRY_BUDGET_S`` (60 s) has passed and raise the last error (exit 3)."""

from __future__ import annotations

import asyncio

import pytest

from jetsource.projection import admin
from jetsource.projection.contract import TransientError


async def test_retries_stop_at_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "RETRY_BUDGET_S", 0.45)
    tries = 0

    async def unanswered() -> None:
        nonlocal tries
        tries += 1
        await asyncio.sleep(0.2)  # a try that waits out its own deadline
        raise TransientError("graph: no answer within 0.2 s")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransientError, match="no answer"):
        await admin._retry(unanswered, "build graph v2")
    assert tries == 2, tries  # 0.2 s, 0.1 s pause, 0.2 s: the budget is spent
    assert loop.time() - started < 1.0


async def test_a_quick_failure_still_gets_every_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(admin, "RETRY_MAX_S", 0.001)
    tries = 0

    async def refused() -> None:
        nonlocal tries
        tries += 1
        raise TransientError("valkey: connection refused")

    with pytest.raises(TransientError):
        await admin._retry(refused, "build context v2")
    assert tries == admin.RETRY_ATTEMPTS
