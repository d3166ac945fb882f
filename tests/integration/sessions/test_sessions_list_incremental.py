"""The sessions list the TUI keeps between refreshes (``SessionList``) on a real NATS
server: built over many refreshes with appends between them (new sessions, events,
endings, nested processes, an operator's void, a hostile message, a prune), it is the
list a whole read gives; a refresh after nothing was appended reads nothing but the
stream's mark, and one after a few appends reads only the sessions that got them.

``python -m tests.integration.sessions.test_sessions_list_incremental`` (not a test)
seeds a big ledger (2,000 sessions of 100 events) on a NATS server of its own and times
a whole read against the kept list's refreshes (the numbers in docs/tui/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1 import events_pb2
from jetsource.core.clock import to_timestamp
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.format import (
    PROCESS_STARTED,
    SESSION_ENDED,
    SESSION_STARTED,
    SessionEvent,
    new_session_id,
    to_canonical,
)
from jetsource.domains.sessions.ledger import LedgerReader
from jetsource.domains.sessions.service import SessionList, Sessions
from jetsource.eventstore import jsapi

NOW = time.time_ns()


def fixed() -> int:
    return NOW


def event(sid: str, kind: str, data: dict[str, Any] | None = None) -> events_pb2.CanonicalEvent:
    return to_canonical(SessionEvent(time.time_ns(), sid, 0, kind, data or {}))


def started(sid: str, command: str) -> events_pb2.CanonicalEvent:
    return event(sid, SESSION_STARTED, {"command": command})


def ended(sid: str, status: str) -> events_pb2.CanonicalEvent:
    data = {"status": status, **({"error": f"{sid} broke"} if status == "failed" else {})}
    return event(sid, SESSION_ENDED, data)


def child(root: str, pid: str) -> events_pb2.CanonicalEvent:
    data = struct_pb2.Struct()
    data.update({"kind": "step", "name": f"step of {root}"})
    return events_pb2.CanonicalEvent(
        process_id=pid,
        parent_process_id=root,
        event_type=PROCESS_STARTED,
        source="test",
        occurred_at=to_timestamp(time.time_ns()),
        data=data,
    )


def random_round(
    rng: random.Random, round_: int, running: list[str], child_below: float
) -> list[events_pb2.CanonicalEvent]:
    """One round of random writes to the ledger, sorted as the writer appends them (per
    process): new sessions, progress, children (a share ``child_below`` - 0.5 of the
    sessions touched), endings; ``running`` follows the sessions started and ended."""
    batch: list[events_pb2.CanonicalEvent] = []
    for _ in range(rng.randint(0, 3)):  # new sessions
        sid = new_session_id()
        batch.append(started(sid, f"command {round_} {sid[-4:]}"))
        running.append(sid)
    for sid in rng.sample(running, min(len(running), rng.randint(0, 4))):
        what = rng.random()
        if what < 0.5:
            batch += [event(sid, "scan_progress", {"files_scanned": i}) for i in range(3)]
        elif what < child_below:
            batch.append(child(sid, f"{sid}-c{round_}"))
        else:
            batch.append(ended(sid, rng.choice(["completed", "failed", "interrupted"])))
            running.remove(sid)
    batch.sort(key=lambda ce: ce.process_id)
    return batch


def sessions_of(client: SessionsClient) -> Sessions:
    """A second ``Sessions`` on the same reader, on one fixed clock (the statuses that
    turn with time are the same in both reads)."""
    return Sessions(client.sessions.reader, client.sessions.settings, clock=fixed)


async def begun(client: SessionsClient, n: int) -> tuple[list[str], SessionList]:
    """``n`` sessions begun, and a kept list that has read them (a whole read)."""
    ids = sorted(new_session_id() for _ in range(n))
    await client.writer.record([started(sid, "cmd") for sid in ids])
    kept = SessionList(sessions_of(client))
    assert len(await kept.read()) == n and kept.whole_reads == 1
    return ids, kept


async def test_a_list_kept_over_many_refreshes_is_the_list_a_whole_read_gives(
    client: SessionsClient,
) -> None:
    rng = random.Random(16)
    sessions = sessions_of(client)
    kept = SessionList(sessions)
    running: list[str] = []
    store = client.store
    for round_ in range(30):
        await client.writer.record(random_round(rng, round_, running, 0.65))
        if round_ == 12:  # an operator voids a session's last event: its tail changes
            victim = (await kept.read())[0].session_id
            events = await client.sessions.reader.events(victim)
            await store.void(events[-1].global_seq, "test", "tester")
        if round_ == 20:  # a hostile publish on a session's subject
            victim = (await kept.read())[-1].session_id
            prefix = client.store.settings.subject_prefix
            await client.nc.jetstream().publish(f"{prefix}.{victim}.scan_progress", b"\xff")
        assert await kept.read() == await sessions.list_sessions(), f"round {round_}"
        # with a filter too (the TUI's / and status:)
        assert await kept.read(("active",), "command") == await sessions.list_sessions(
            ("active",), "command"
        )
    assert kept.whole_reads == 1, "every refresh after the first read only what was appended"
    records = await kept.read()
    assert len(records) > 20
    assert any(r.error for r in records), "the hostile message's session is listed, named"
    assert {r.status for r in records} >= {"active", "completed", "failed"}


async def test_a_refresh_reads_no_history_of_a_session_whose_events_follow_its_tail(
    client: SessionsClient,
) -> None:
    ids, kept = await begun(client, 20)
    first = await kept.read()
    assert kept.tail_reads == 20  # the first read was whole

    assert await kept.read() == first  # nothing appended: no session read
    assert kept.tail_reads == 20

    # a long session appended to: its new events follow its tail, nothing else is read
    for n in range(5):
        await client.writer.record(
            [event(ids[3], "scan_progress", {"files_scanned": i}) for i in range(200)]
        )
        await client.writer.record([event(ids[7], "scan_progress"), event(ids[9], "x_y")])
        again = await kept.read()
        assert again == await sessions_of(client).list_sessions()
        assert next(r for r in again if r.session_id == ids[3]).event_count == 1 + 200 * (n + 1)
    assert kept.tail_reads == 20 and kept.whole_reads == 1

    # an operator voids a session's last event: its tail is read again, from its history
    events = await client.sessions.reader.events(ids[7])
    await client.store.void(events[-1].global_seq, "test", "tester")
    assert await kept.read() == await sessions_of(client).list_sessions()
    assert kept.tail_reads == 21

    # a hostile publish that decodes, with a version out of place: read again, named
    forged = EventEnvelope(aggregate_version=999, schema_version=1, payload=b"")
    prefix = client.store.settings.subject_prefix
    await client.nc.jetstream().publish(
        f"{prefix}.{ids[9]}.scan_progress", forged.SerializeToString()
    )
    records = await kept.read()
    assert records == await sessions_of(client).list_sessions()
    assert kept.tail_reads == 22
    assert "999" in next(r for r in records if r.session_id == ids[9]).error


async def test_a_short_read_of_what_was_appended_takes_nothing_and_is_read_again(
    client: SessionsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica behind the one that said where the stream stands answers the read of
    the range with less than it holds: nothing of it is taken, the next read has it."""
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
    assert after == await sessions_of(client).list_sessions() and after != before
    assert kept.whole_reads == 1


async def test_a_read_cancelled_half_way_is_finished_by_the_next_one(
    client: SessionsClient,
) -> None:
    ids, kept = await begun(client, 4)
    await client.writer.record([ended(sid, "completed") for sid in ids])
    await client.store.void((await client.sessions.reader.events(ids[2]))[-1].global_seq, "t", "t")
    reader = client.sessions.reader
    assert isinstance(reader, LedgerReader)
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
    assert await kept.read() == await sessions_of(client).list_sessions()
    assert kept.whole_reads == 1


async def test_a_prune_makes_the_next_refresh_a_whole_read(client: SessionsClient) -> None:
    ids = [new_session_id() for _ in range(6)]
    await client.writer.record(
        [ce for sid in sorted(ids) for ce in (started(sid, "cmd"), ended(sid, "completed"))]
    )
    sessions = sessions_of(client)
    kept = SessionList(sessions)
    assert len(await kept.read()) == 6
    report = await client.sessions.prune(client.purger, older_than_s=0, keep=2)
    assert len(report.pruned) == 4
    after = await kept.read()
    assert after == await sessions.list_sessions() and len(after) == 2
    assert kept.whole_reads == 2


# -- a big ledger, timed (not a test: python -m tests.integration.sessions.test_...) --


async def seed(client: SessionsClient, sessions: int, per_session: int) -> list[str]:
    """``sessions`` sessions of ``per_session`` events each (started, progress, ended;
    one in ten left running), appended through the store as the ledger writer does."""
    ids = sorted(new_session_id() for _ in range(sessions))
    for n, sid in enumerate(ids):
        batch = [started(sid, f"context generate {n}")]
        batch += [event(sid, "scan_progress", {"files_scanned": i}) for i in range(per_session - 2)]
        batch.append(ended(sid, "completed") if n % 10 else event(sid, "session_heartbeat"))
        await client.writer.record(batch)
    return ids


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(pid: int) -> float:
    """CPU seconds of the NATS server (0 when not known: another machine's)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _timed(what: str, read: Any, server_pid: int) -> Any:
    cpu, server, t0 = _cpu(), _server_cpu(server_pid), time.perf_counter()
    out = await read()
    wall, cpu, server = time.perf_counter() - t0, _cpu() - cpu, _server_cpu(server_pid) - server
    print(f"{what:<46} {wall:7.3f} s wall {cpu:7.3f} s CPU (TUI) {server:7.3f} s CPU (NATS)")
    return out


@contextlib.asynccontextmanager
async def big_ledger(
    nats_url: str, sessions: int, per_session: int
) -> AsyncIterator[SessionsClient]:
    """A client of the timing runs' ledger, seeded once per server."""
    from jetsource.core.settings import NatsSettings
    from jetsource.domains.sessions.connect import open_sessions
    from jetsource.domains.sessions.settings import SessionsAppSettings, SessionsSettings

    settings = SessionsAppSettings(
        nats=NatsSettings(url=nats_url),
        sessions=SessionsSettings(stream="SESSIONS_BIG", subject_prefix="sessbig.events"),
    )
    async with open_sessions(settings) as client:
        await client.store.ensure_streams()
        info = await client.store.stream_info()
        if info["state"]["messages"] == 0:
            t0 = time.perf_counter()
            await seed(client, sessions, per_session)
            print(f"seeded {sessions:,} x {per_session} events in {time.perf_counter() - t0:.0f} s")
        info = await client.store.stream_info()
        print(f"ledger: {info['state']['messages']:,} messages")
        yield client


async def main(nats_url: str, sessions: int, per_session: int, server_pid: int = 0) -> None:
    async with big_ledger(nats_url, sessions, per_session) as client:
        sessions_ = sessions_of(client)
        kept = SessionList(sessions_)
        whole = await _timed(
            "whole read (list_sessions, before)", sessions_.list_sessions, server_pid
        )
        first = await _timed("kept list, first read (whole)", kept.read, server_pid)
        assert first == whole
        for i in range(3):
            await _timed(f"kept list, refresh {i + 1}, nothing appended", kept.read, server_pid)
        running = [r.session_id for r in first if r.status == "active"][:10]
        for i in range(3):
            await client.writer.record(
                [event(sid, "scan_progress", {"files_scanned": i}) for sid in sorted(running)]
            )
            await _timed(
                f"kept list, refresh, {len(running)} sessions appended to", kept.read, server_pid
            )
        # a long live session (20,000 events) appended to: the refresh does not read
        # its history
        long = running[0]
        await client.writer.record([event(long, "scan_progress") for _ in range(20_000)])
        await kept.read()
        for i in range(3):
            await client.writer.record([event(long, "scan_progress", {"files_scanned": i})])
            await _timed("kept list, refresh, a 20,000-event session + 1", kept.read, server_pid)
        assert await kept.read() == await sessions_.list_sessions()
        print(f"histories read for tails: {kept.tail_reads:,} (whole reads: {kept.whole_reads})")


Main = Callable[[str, int, int, int], Coroutine[Any, Any, None]]


def timed_run(timed: Main, prefix: str, argv: list[str] | None = None) -> None:
    """Seed (once per server) and time with ``timed``; a NATS server of its own (its
    store in a new folder named ``prefix``...) unless ``--nats``."""
    import tempfile

    from jetsource.devstack.servers import NatsServer, free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", default="", help="a running server (default: start one)")
    parser.add_argument("--server-pid", type=int, default=0, help="that server's, for its CPU")
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--events", type=int, default=100, help="events per session")
    args = parser.parse_args(argv)
    if args.nats:
        asyncio.run(timed(args.nats, args.sessions, args.events, args.server_pid))
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        server.wait_ready(proc, 30)
        asyncio.run(timed(server.address(), args.sessions, args.events, proc.pid))
    finally:
        proc.terminate()
        proc.wait(10)


def run(argv: list[str] | None = None) -> None:
    timed_run(main, "jetsource-sessions-list-", argv)


if __name__ == "__main__":
    run()
