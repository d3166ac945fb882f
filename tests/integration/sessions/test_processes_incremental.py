"""The process list the TUI's processes screen keeps between refreshes (``ProcessList``)
on a real NATS server: built over many refreshes with appends between them (new
sessions, events, endings, nested processes, an operator's void, hostile messages, a
prune, a purge of one session's subjects), it is what a whole read
(``reader.processes()``) gives; a prune or a purge makes the next read whole; a refresh
after nothing was appended reads nothing but the stream's mark, and one after a few
appends reads no running session's history when its events follow its kept tail.

``python -m tests.integration.sessions.test_processes_incremental`` (not a test) seeds a
big ledger (2,000 sessions of 100 events, one in ten left running) on a NATS server of
its own and times a whole read (what every refresh of the screen cost) against the kept
list's refreshes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.format import new_session_id
from jetsource.domains.sessions.ledger import LedgerReader, ProcessList, ProcessSummary
from jetsource.eventstore import jsapi
from tests.integration.sessions.test_sessions_list_incremental import (
    _timed,
    big_ledger,
    ended,
    event,
    random_round,
    started,
    timed_run,
)


def reader_of(client: SessionsClient) -> LedgerReader:
    reader = client.sessions.reader
    assert isinstance(reader, LedgerReader) and reader.incremental
    return reader


async def whole(client: SessionsClient) -> dict[str, ProcessSummary]:
    """What every refresh of the screen read before: the ledger whole (through a reader
    of its own: a test may count what the kept list's reader is asked)."""
    settings = client.store.settings
    own = LedgerReader(
        client.store, client.nc.jetstream(), settings.stream, settings.subject_prefix
    )
    return await own.processes()


async def begun(client: SessionsClient, n: int) -> tuple[list[str], ProcessList]:
    """``n`` running sessions, and a kept list that has read them (a whole read)."""
    ids = sorted(new_session_id() for _ in range(n))
    await client.writer.record([started(sid, "cmd") for sid in ids])
    kept = ProcessList(client.sessions.reader)
    assert len(await kept.read()) == n and kept.whole_reads == 1
    return ids, kept


async def test_a_list_kept_over_many_refreshes_is_what_a_whole_read_gives(
    client: SessionsClient,
) -> None:
    rng = random.Random(56)
    kept = ProcessList(client.sessions.reader)
    running: list[str] = []
    removals = 0
    prefix = client.store.settings.subject_prefix
    js = client.nc.jetstream()
    for round_ in range(40):
        await client.writer.record(random_round(rng, round_, running, 0.7))
        if round_ == 10 and running:  # an operator voids a running session's last event
            events = await client.sessions.reader.events(running[0])
            await client.store.void(events[-1].global_seq, "test", "tester")
        if round_ == 15 and running:  # a hostile publish on a running session's subject
            # (nothing more can be appended to it: it stays running, its tail corrupt)
            await js.publish(f"{prefix}.{running.pop()}.scan_progress", b"\xff")
        if round_ == 18 and running:  # one that decodes, its version out of place
            forged = EventEnvelope(aggregate_version=999, schema_version=1, payload=b"")
            victim = running.pop(0)
            await js.publish(f"{prefix}.{victim}.scan_progress", forged.SerializeToString())
        if round_ == 22:  # a prune of the ended sessions: removed from the stream
            report = await client.sessions.prune(client.purger, older_than_s=0, keep=3)
            assert report.pruned, "nothing was pruned: the round tests nothing"
            removals += 1
        if round_ == 30 and running:  # a purge of one running session's subjects
            gone = running.pop(0)
            await js.purge_stream(client.store.settings.stream, subject=f"{prefix}.{gone}.>")
            removals += 1
        got = await kept.read()
        assert got == await whole(client), f"round {round_}"
        assert got == await kept.read(), f"round {round_}: a refresh with nothing appended"
    assert kept.whole_reads == 1 + removals, "a refresh after appends alone read whole"
    got = await kept.read()
    assert len(got) > 30
    kinds = {(p.kind, p.status) for p in got.values()}
    assert ("session", "running") in kinds and ("session", "completed") in kinds
    assert any(p.parent for p in got.values()), "nested processes are listed"


async def test_a_refresh_reads_no_history_of_a_session_whose_events_follow_its_tail(
    client: SessionsClient,
) -> None:
    ids, kept = await begun(client, 20)
    first = await kept.read()
    assert kept.tail_reads == 20  # the first read was whole: every running session's tail

    reader = reader_of(client)
    lifecycle = reader.lifecycle

    async def counted(to_seq: int | None = None) -> dict[str, ProcessSummary]:
        raise AssertionError("a refresh read the lifecycle of every process")

    reader.lifecycle = counted  # type: ignore[method-assign]
    try:
        assert await kept.read() == first  # nothing appended: no session read
        assert kept.tail_reads == 20
        for n in range(5):
            await client.writer.record(
                [event(ids[3], "scan_progress", {"files_scanned": i}) for i in range(200)]
            )
            await client.writer.record([event(ids[7], "scan_progress"), event(ids[9], "x_y")])
            got = await kept.read()
            assert got[ids[3]].last_recorded_ns > first[ids[3]].last_recorded_ns
            assert got == await whole(client), f"append {n}"
        assert kept.tail_reads == 20 and kept.whole_reads == 1

        # a session that ends is read no more; a new one is read once
        await client.writer.record([ended(ids[0], "completed")])
        fresh = new_session_id()
        await client.writer.record([started(fresh, "new")])
        await client.writer.record([event(ids[0], "late_event")])
        assert await kept.read() == await whole(client)
        assert kept.tail_reads == 21

        # an operator voids a session's last event: its tail is read again
        events = await client.sessions.reader.events(ids[7])
        await client.store.void(events[-1].global_seq, "test", "tester")
        assert await kept.read() == await whole(client)
        assert kept.tail_reads == 22
    finally:
        reader.lifecycle = lifecycle  # type: ignore[method-assign]


async def test_a_short_read_of_what_was_appended_takes_nothing_and_is_read_again(
    client: SessionsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, kept = await begun(client, 3)
    before = await kept.read()
    await client.writer.record([ended(ids[0], "failed"), event(ids[1], "scan_progress")])
    real = jsapi.direct_get_page

    async def behind(*args: Any, **kwargs: Any) -> jsapi.Page:
        page = await real(*args, **kwargs)
        return jsapi.Page(page.messages[:-1], 0)  # the last one not there yet

    monkeypatch.setattr(jsapi, "direct_get_page", behind)
    assert await kept.read() == before
    monkeypatch.setattr(jsapi, "direct_get_page", real)
    after = await kept.read()
    assert after == await whole(client) and after != before
    assert kept.whole_reads == 1


async def test_a_read_cancelled_half_way_is_finished_by_the_next_one(
    client: SessionsClient,
) -> None:
    ids, kept = await begun(client, 4)
    await client.writer.record([event(sid, "scan_progress") for sid in ids])
    await client.store.void((await client.sessions.reader.events(ids[2]))[-1].global_seq, "t", "t")
    reader = reader_of(client)
    real = reader.tail_at

    async def stuck(process_id: str) -> tuple[int, int, int]:
        await asyncio.sleep(30)
        return await real(process_id)

    reader.tail_at = stuck  # type: ignore[method-assign]
    reading = asyncio.create_task(kept.read())
    await asyncio.sleep(0.3)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    reader.tail_at = real  # type: ignore[method-assign]
    assert await kept.read() == await whole(client)
    assert kept.whole_reads == 1


async def test_what_a_caller_does_to_the_list_it_got_changes_nothing_kept(
    client: SessionsClient,
) -> None:
    ids, kept = await begun(client, 2)
    got = await kept.read()
    got[ids[0]].status = "failed"
    del got[ids[1]]
    assert await kept.read() == await whole(client)


async def test_a_reader_that_cannot_say_what_was_appended_is_read_whole_each_time(
    client: SessionsClient,
) -> None:
    settings = client.store.settings
    plain = LedgerReader(
        client.store, client.nc.jetstream(), settings.stream, settings.subject_prefix
    )
    assert not plain.incremental
    kept = ProcessList(plain)
    ids = sorted(new_session_id() for _ in range(3))
    await client.writer.record([started(sid, "cmd") for sid in ids])
    assert await kept.read() == await whole(client)
    await client.writer.record([ended(ids[1], "failed"), event(ids[2], "scan_progress")])
    assert await kept.read() == await whole(client)
    assert kept.whole_reads == 0  # nothing kept: the reader's own whole read each time


# -- a big ledger, timed (not a test: python -m tests.integration.sessions.test_...) --


async def main(nats_url: str, sessions: int, per_session: int, server_pid: int = 0) -> None:
    async with big_ledger(nats_url, sessions, per_session) as client:
        reader = reader_of(client)
        kept = ProcessList(reader)
        for i in range(3):
            full = await _timed(
                f"whole read (reader.processes), {i + 1}", reader.processes, server_pid
            )
        first = await _timed("kept list, first read (whole)", kept.read, server_pid)
        assert first == full
        for i in range(3):
            await _timed(f"kept list, refresh {i + 1}, nothing appended", kept.read, server_pid)
        running = sorted(p.process_id for p in first.values() if p.status == "running")[:10]
        for i in range(3):
            await client.writer.record(
                [event(sid, "scan_progress", {"files_scanned": i}) for sid in running]
            )
            await _timed(
                f"kept list, refresh, {len(running)} sessions appended to", kept.read, server_pid
            )
        assert await kept.read() == await reader.processes()
        print(f"histories read for tails: {kept.tail_reads:,} (whole reads: {kept.whole_reads})")


def run(argv: list[str] | None = None) -> None:
    timed_run(main, "jetsource-processes-", argv)


if __name__ == "__main__":
    run()
