"""A prune reads every process once: the sessions it lists are the roots of the same
read that gives the trees it prunes.

It read the reader's ``sessions()`` for the list, then ``processes()`` for the trees:
on the stream each is the lifecycle of every process (10,000 sessions: ~19 s each),
so every prune read it twice. And a dry run read the tails of each tree's nested
processes, one tree at a time. Counted on the real ledger reader (real NATS)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.service import TAIL_BATCH, Sessions

from .test_prune import child_of, ended


class Asked:
    """A reader, counting what prune asks of it."""

    def __init__(self, reader: LedgerReader) -> None:
        self._reader = reader
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def sessions(self) -> Any:
        self.asked.append("sessions")
        return await self._reader.sessions()

    async def processes(self) -> Any:
        self.asked.append("processes")
        return await self._reader.processes()


@pytest.mark.parametrize("dry_run", [True, False])
async def test_a_prune_reads_the_lifecycle_once(
    client: SessionsClient, monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    done = await ended(client, 4)
    nested = await child_of(client, done[0])
    reads: list[int | None] = []
    original = LedgerReader.lifecycle

    async def counted(self: LedgerReader, to_seq: int | None = None) -> Any:
        reads.append(to_seq)
        return await original(self, to_seq)

    monkeypatch.setattr(LedgerReader, "lifecycle", counted)
    asked = Asked(cast(LedgerReader, client.sessions.reader))
    s = Sessions(cast(Any, asked), client.sessions.settings, stream=client.sessions.stream)
    report = await s.prune(client.purger, older_than_s=0, keep=2, dry_run=dry_run)
    assert [r.session_id for r in report.pruned] == done[:2]
    assert report.processes == 3  # the nested process of the oldest is in its tree
    assert reads == [None], reads  # was twice: sessions(), then processes()
    assert asked.asked == ["processes"], asked.asked
    if not dry_run:
        assert set(await client.sessions.reader.processes()) == set(done[2:])
        assert nested not in await client.sessions.reader.processes()


class Nested:
    """The reader and the stream, counting the tails of nested processes read and the
    stream's counts of them (how many at once)."""

    def __init__(self, reader: LedgerReader, nested: set[str]) -> None:
        self._reader = reader
        self._nested = nested
        self.tails: list[str] = []
        self.counted: list[str] = []
        self.in_flight = 0
        self.most = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def tail(self, process_id: str) -> tuple[int, int]:
        if process_id in self._nested:
            self.tails.append(process_id)
        return await self._reader.tail(process_id)

    async def held(self, process_id: str) -> int | None:
        self.counted.append(process_id)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0)  # let every other gathered read begin too
            return await self._reader.held(process_id)
        finally:
            self.in_flight -= 1


async def test_a_dry_run_counts_nested_processes_on_the_stream_a_batch_at_a_time(
    client: SessionsClient,
) -> None:
    """A dry run read each nested process's tail (two round trips and a decode), one
    tree at a time: with 10,000 sessions of one nested process each, ~20 s of the
    run. It asks the stream how many messages each holds (what the purge removes),
    TAIL_BATCH at a time across the trees; same count."""
    done = await ended(client, TAIL_BATCH + 8)
    nested = {await child_of(client, sid) for sid in done}
    reader = cast(LedgerReader, client.sessions.reader)
    asked = Nested(reader, nested)
    s = Sessions(cast(Any, asked), client.sessions.settings, stream=cast(Any, asked))
    plan = await s.prune(None, older_than_s=0.001, keep=0, dry_run=True)
    assert sorted(r.session_id for r in plan.pruned) == sorted(done)
    assert asked.tails == []  # was one each, one tree at a time
    assert sorted(asked.counted) == sorted(nested)  # each once; the sessions' are listed
    assert asked.most == TAIL_BATCH, asked.most
    # session_started, scan_started, session_ended; the nested two each
    assert plan.events == 5 * len(done) and plan.processes == 2 * len(done)
    report = await client.sessions.prune(client.purger, older_than_s=0.001, keep=0)
    assert report.events == plan.events  # what the dry run said is what went
