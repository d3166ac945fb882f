"""The prune asks the stream about sessions with no ending a batch at a time, and only
about those the reader already says are quiet.

It read the tail of every session with no ending at once (one gather over them all),
quiet or not: with 10,000 of them NATS stopped answering (EventStoreUnavailableError
after 5 attempts), every pruner run failed and nothing was pruned again, completed and
failed sessions included. Now only the sessions quiet by the reader's last recorded
time are asked (a reader behind only makes a session look quieter), TAIL_BATCH at a
time; with the stream as the reader, the tails the list just read are not read again.
Counted with a wrapper over the real ledger reader (real NATS)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.service import TAIL_BATCH, Sessions

OLD = TAIL_BATCH * 2 + 16  # more than two batches


class Counted:
    """The ledger reader, counting the tails asked of it and how many at once."""

    def __init__(self, reader: LedgerReader) -> None:
        self._reader = reader
        self.asked: list[str] = []
        self.in_flight = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def tail(self, process_id: str) -> tuple[int, int]:
        self.asked.append(process_id)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0)  # let every other gathered read begin too
            return await self._reader.tail(process_id)
        finally:
            self.in_flight -= 1


async def _gone(client: SessionsClient, n: int) -> list[str]:
    """``n`` sessions whose emitters died after session_started (no ending)."""
    ids: list[str] = []
    for at in range(0, n, 40):
        ss = [Session(client.writer, "died", heartbeat_s=60) for _ in range(min(40, n - at))]
        await asyncio.gather(*(s._send([s._canonical("session_started", s._started)]) for s in ss))
        ids += [s.id for s in ss]
    return ids


async def test_only_quiet_looking_sessions_are_asked_a_batch_at_a_time(
    client: SessionsClient,
) -> None:
    stream = client.sessions.reader
    assert isinstance(stream, LedgerReader)
    quick = client.sessions.settings.model_copy(
        update={"interrupted_after_s": 0.2, "prune_unended_after_s": 1.0}
    )
    old = await _gone(client, OLD)
    await asyncio.sleep(1.2)  # quiet past the unended age
    recent = await _gone(client, 3)
    await asyncio.sleep(0.4)  # interrupted (no ending, quiet 0.4 s), not quiet for 1 s

    # The reader is not the stream (as the query reader is not): the stream is asked.
    asked = Counted(stream)
    s = Sessions(cast(Any, Counted(stream)), quick, stream=cast(Any, asked))
    statuses = {r.session_id: r.status for r in await s.list_sessions()}
    assert set(statuses.values()) == {"interrupted"} and len(statuses) == OLD + 3
    plan = await s.prune(client.purger, older_than_s=0.5, keep=0, dry_run=True)
    assert sorted(r.session_id for r in plan.pruned) == sorted(old)
    assert asked.most <= TAIL_BATCH, asked.most  # was every one at once
    assert sorted(asked.asked) == sorted(old)  # the recent ones were not asked

    # The reader is the stream: the list's tails are its word, none is read again.
    both = Counted(stream)
    s = Sessions(cast(Any, both), quick, stream=cast(Any, both))
    report = await s.prune(client.purger, older_than_s=0.5, keep=0)
    assert sorted(r.session_id for r in report.pruned) == sorted(old)
    assert sorted(both.asked) == sorted(old + recent)  # once each, by the list
    assert both.most <= TAIL_BATCH
    assert {r.session_id for r in await client.sessions.list_sessions()} == set(recent)
