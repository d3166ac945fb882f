"""A process started under a chosen session while a real prune reads the list goes
with its tree.

0866ed9 read every process once, before the list reads each session's tail (20-27 s
at 10,000 sessions): a child started under a chosen ended session meanwhile was not
in the trees, neither tombstoned nor purged, its parent gone, so no later prune
found it (the trees were read after the list before). A real run picks up the
processes started since that read (the start events after a mark of the stream)
before it tombstones. Real NATS, the real ledger reader."""

from __future__ import annotations

from typing import Any, cast

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.service import Sessions

from .test_prune import child_of, ended


class StartsAChild:
    """The reader; its first ``tail`` (the list's) first records a child process of
    ``parent``, as a component still running under an ended session would."""

    def __init__(self, reader: LedgerReader, client: SessionsClient, parent: str) -> None:
        self._reader = reader
        self._client = client
        self._parent = parent
        self.started: list[str] = []
        self._first = True
        self.asked: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    async def processes(self) -> Any:
        self.asked.append("processes")
        return await self._reader.processes()

    async def tail(self, process_id: str) -> Any:
        if self._first:  # the list's tails are gathered: only the first starts one
            self._first = False
            self.started.append(await child_of(self._client, self._parent))
        return await self._reader.tail(process_id)


async def test_a_child_started_while_the_list_is_read_is_pruned_with_its_session(
    client: SessionsClient,
) -> None:
    done = await ended(client, 3)
    reader = cast(LedgerReader, client.sessions.reader)
    late = StartsAChild(reader, client, done[0])
    s = Sessions(cast(Any, late), client.sessions.settings, stream=client.sessions.stream)
    report = await s.prune(client.purger, older_than_s=0, keep=1)
    [child] = late.started
    assert [r.session_id for r in report.pruned] == done[:2]
    assert report.processes == 3, report  # was 2: the child was not in the tree
    left = await reader.processes()
    assert child not in left, "the child outlived its pruned session"  # its parent gone
    assert set(left) == {done[2]}
    assert await reader.held(child) == 0  # its events purged too
    assert late.asked == ["processes"]  # the lifecycle still read once


async def test_a_dry_run_reads_no_mark(client: SessionsClient) -> None:
    """The pick-up is a real run's: a dry run's plan is read once, as before."""
    done = await ended(client, 2)
    calls: list[str] = []
    stream = client.sessions.stream
    assert stream is not None
    original = stream.started_since

    async def counted(after_seq: int) -> Any:
        calls.append("started_since")
        return await original(after_seq)

    stream.started_since = counted  # type: ignore[method-assign]
    try:
        plan = await client.sessions.prune(None, older_than_s=0.001, keep=0, dry_run=True)
    finally:
        del stream.started_since
    assert {r.session_id for r in plan.pruned} >= set(done)
    assert calls == []


class BehindTheStream(StartsAChild):
    """A reader of the read models (``READER=query``): its first ``processes`` has not
    applied ``hidden``'s start yet, recorded before the prune's mark of the stream."""

    lags_the_stream = True

    def __init__(self, reader: LedgerReader, client: SessionsClient, hidden: str) -> None:
        super().__init__(reader, client, "")
        self._first = False  # starts no child: ``hidden`` was started before the prune
        self._hidden = hidden

    async def processes(self) -> Any:
        first = not self.asked
        got = await super().processes()
        return {k: v for k, v in got.items() if not (first and k == self._hidden)}


async def test_a_child_the_read_models_had_not_applied_is_pruned_with_its_session(
    client: SessionsClient,
) -> None:
    """The mark covers starts after it; a reader behind the stream may also miss one
    before it, so a real run reads it again (as before 0866ed9) and merges both."""
    done = await ended(client, 3)
    child = await child_of(client, done[0])
    reader = cast(LedgerReader, client.sessions.reader)
    behind = BehindTheStream(reader, client, child)
    s = Sessions(cast(Any, behind), client.sessions.settings, stream=client.sessions.stream)
    report = await s.prune(client.purger, older_than_s=0, keep=1)
    assert [r.session_id for r in report.pruned] == done[:2]
    assert report.processes == 3, report  # was 2: the unapplied child was left behind
    left = await reader.processes()
    assert child not in left, "the child outlived its pruned session"
    assert behind.asked == ["processes", "processes"]
