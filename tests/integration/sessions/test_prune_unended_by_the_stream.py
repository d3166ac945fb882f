"""A session with no ending is pruned only when the stream itself says it is quiet.

The prune judged it quiet by the local clock minus the reader's last recorded time.
With the query reader that time moves only as the projector applies events: a
projector stopped (or behind) longer than the unended age made a live, heartbeating
session look quiet, and the prune took it (its tombstone then hid it for good). A
pruner's clock ahead of the NATS server's did the same. Now each such session's tail is
read again from the stream and measured against the server's time (real NATS here)."""

from __future__ import annotations

import asyncio
from typing import Any

from jetsource.core.clock import NS, now_ns
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.service import Sessions
from tests.integration.sessions.test_prune_interrupted import gone_session

DAY = 86_400


class BehindReader:
    """The reader a stopped projector leaves: each session's tail as first read, never
    moving again (the query reader's last_recorded_at), the rest as the ledger says."""

    def __init__(self, reader: LedgerReader) -> None:
        self._reader = reader
        self.frozen: dict[str, tuple[int, int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def tail(self, process_id: str) -> tuple[int, int]:
        if process_id not in self.frozen:
            self.frozen[process_id] = await self._reader.tail(process_id)
        return self.frozen[process_id]


async def test_a_live_session_is_not_pruned_while_the_read_model_is_behind(
    client: SessionsClient,
) -> None:
    stream = client.sessions.reader
    assert isinstance(stream, LedgerReader)
    gone = await gone_session(client)
    async with session(client.writer, "live", heartbeat_s=0.1) as live:
        behind = BehindReader(stream)
        quick = client.sessions.settings.model_copy(
            update={"interrupted_after_s": 0.5, "prune_unended_after_s": 1.0}
        )
        s = Sessions(behind, quick, stream=stream)
        await s.list_sessions()  # the read model's last look: the projector stops here
        await asyncio.sleep(1.3)  # the live one beats on; the gone one is quiet past 1 s
        statuses = {r.session_id: r.status for r in await s.list_sessions()}
        # By the stale read model both look gone (this is what misled the prune).
        assert statuses == {gone: "interrupted", live.id: "interrupted"}

        plan = await s.prune(client.purger, older_than_s=0, keep=0, dry_run=True)
        assert plan.pruned == []  # no rule asked for
        plan = await s.prune(client.purger, older_than_s=1.0, keep=0, dry_run=True)
        assert [r.session_id for r in plan.pruned] == [gone]  # took the live one too
        report = await s.prune(client.purger, older_than_s=1.0, keep=0)
        assert [r.session_id for r in report.pruned] == [gone]  # dry run and run agree
        assert await stream.events(gone) == []
        assert len(await stream.events(live.id)) > 2  # still there, still beating
    assert {r.session_id for r in await client.sessions.list_sessions()} == {live.id}


async def test_a_pruner_clock_ahead_of_the_server_does_not_prune_a_live_session(
    client: SessionsClient,
) -> None:
    stream = client.sessions.reader
    gone = await gone_session(client)
    async with session(client.writer, "live", heartbeat_s=0.1) as live:
        await asyncio.sleep(1.0)
        # The pruner's clock two days ahead: by it, both are quiet for two days.
        ahead = Sessions(stream, client.sessions.settings, clock=lambda: now_ns() + 2 * DAY * NS)
        statuses = {r.session_id: r.status for r in await ahead.list_sessions()}
        assert statuses == {gone: "interrupted", live.id: "interrupted"}
        for dry_run in (True, False):
            report = await ahead.prune(
                client.purger, older_than_s=DAY, keep=0, dry_run=dry_run, unended_after_s=DAY
            )
            assert report.pruned == [], (dry_run, [r.session_id for r in report.pruned])
        # By the server the gone one is quiet (1 s, past an unended age of 0.6 s).
        report = await ahead.prune(client.purger, older_than_s=DAY, keep=0, unended_after_s=0.6)
        assert [r.session_id for r in report.pruned] == [gone]
        assert len(await stream.events(live.id)) > 2
