"""Stored bytes per event: in the stream's accounting and on disk, before and after.

Issue #19's target: under 100 MB per million typical events on disk (<= 100 B/event).

Workload: generated story histories (every event type, as `decide` makes them) written
the way the publisher writes them: one idempotency key per command, ``source`` set, the
actor in the envelope metadata and in the event's person fields. Each layout writes
``--events`` events as single-event commands (one publish each, with the optimistic
concurrency headers) and again as 10-event commands (one atomic batch each) into
streams of its own on one server (file storage, s2 compression: the event store's
defaults).

Layouts:
  - before: as events were stored before #19 (personal fields and the actor in the
    clear, occurred_at stored with every event, the idempotency key as text);
  - after: personal fields sealed per subject (erasure), occurred_at left to the
    stream's time when the caller gives none, a UUID idempotency key as 16 bytes.

Figures:
  - accounting: the stream's state bytes / messages (what limits and `stream info` see;
    subject, all stored headers, payload, per-message overhead);
  - on disk: the stream directory / messages, as it is at the end of the run (the last
    message block is not yet compressed);
  - on disk, compressed blocks: what a sealed (s2-compressed) block costs per event,
    i.e. the long-run figure: compressed blocks' bytes / the events in them (estimated
    as their uncompressed share of the accounting), plus each event's share of the
    files beside the blocks (the index, which keeps state per subject; since
    2026-12-06, before only the blocks were counted). Needs a run that fills at least
    one 8 MB block (>= ~25,000 events per stream); shorter runs print n/a.

    python -m bench.bench_storage [--events N] [--stories N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from google.protobuf.message import Message
from nats.aio.client import Client as NATS

from bench.common import Aim, Table, exit_on_signals, scratch_dir, show, stop, stream_disk
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core import crypto
from jetsource.core.envelope import NewEvent
from jetsource.core.ids import uuid7
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import NatsServer, free_port
from jetsource.domains.context.events import registry
from jetsource.domains.context.samples import story_events
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.erasure import holders

TARGET = 100.0  # bytes per event on disk
ACTORS = ["ana.souza", "bob-kim", "agent-7", "carol.w", "planner-bot"]


class BeforeStore(JetStreamEventStore):
    """The layout before #19: nothing sealed, the idempotency key as text (and the
    workload gives occurred_at on every event, as the store used to write it)."""

    async def _seal(
        self, events: Sequence[NewEvent], encoded: list[tuple[str, int, bytes]]
    ) -> list[crypto.Sealed | None]:
        return [None] * len(events)

    def _messages(self, *args: Any, **kwargs: Any) -> list[OutMessage]:
        out = []
        for m in super()._messages(*args, **kwargs):
            envelope = EventEnvelope.FromString(m.data)
            if envelope.idempotency_uuid:
                envelope.idempotency_key = str(uuid.UUID(bytes=envelope.idempotency_uuid))
                envelope.ClearField("idempotency_uuid")
            out.append(
                OutMessage(m.subject, envelope.SerializeToString(deterministic=True), m.headers)
            )
        return out


def commands(story: str, events: int, seed: int, per: int) -> list[list[Message]]:
    """A story's history in commands of ``per`` events, each by one actor, who also
    fills the events' person fields (as the publisher does)."""
    history = story_events(story, events, seed)
    out = []
    for i in range(0, len(history), per):
        actor = ACTORS[(seed + i) % len(ACTORS)]
        chunk = history[i : i + per]
        for m in chunk:
            for f in crypto.personal_fields(m.DESCRIPTOR):
                if getattr(m, f.name):
                    setattr(m, f.name, actor)
        out.append(chunk)
    return out


def on_disk(tmp: Path, stream: str, messages: int, acct_bytes: int) -> tuple[float, float | None]:
    """(bytes on disk per event now, per event in the compressed blocks, if any)."""
    disk = stream_disk(tmp, stream, messages, acct_bytes)
    return disk.now / messages, disk.per_message_sealed


@dataclass
class Row:
    layout: str
    per: int
    events: int
    accounting: float
    disk: float
    compressed: float | None
    seconds: float
    scan_rate: float | None = None  # events/s of the erase scan (after layouts)


async def write(nc: NATS, tmp: Path, layout: str, per: int, stories: int, events: int) -> Row:
    name = f"ST_{layout}_{per}"
    cfg = EventStoreSettings(stream=name, subject_prefix=f"st{layout}{per}.events")
    cls = BeforeStore if layout == "before" else JetStreamEventStore
    store = cls(nc, registry, cfg)
    await store.ensure_streams()
    each = max(1, events // stories)

    async def story(n: int) -> None:
        sid = f"story-{n:05d}"
        version = 0
        for chunk in commands(sid, each, n, per):
            key = uuid7()
            actor = ACTORS[(n + version) % len(ACTORS)]
            new = [
                NewEvent(
                    m,
                    idempotency_key=key,
                    source="publisher",
                    metadata={"actor": actor},
                    occurred_at_ns=time.time_ns() if layout == "before" else None,
                )
                for m in chunk
            ]
            await store.append(sid, new, version)
            version += len(new)

    started = time.perf_counter()
    sem = asyncio.Semaphore(32)

    async def limited(n: int) -> None:
        async with sem:
            await story(n)

    await asyncio.gather(*(limited(n) for n in range(stories)))
    seconds = time.perf_counter() - started
    state = (await store.stream_info())["state"]
    messages, acct_bytes = int(state["messages"]), int(state["bytes"])
    disk, compressed = on_disk(tmp, name, messages, acct_bytes)
    scan_rate = None
    if layout == "after":
        # What `jetsource erase` reads to find the aggregates holding a subject's boxes.
        ref = await store.keys.ref_of(ACTORS[0])
        assert ref is not None
        t0 = time.perf_counter()
        found, seen = await holders(store, ref)
        scan_rate = seen / (time.perf_counter() - t0)
        assert found and seen == messages
    await store.close()
    return Row(layout, per, messages, acct_bytes / messages, disk, compressed, seconds, scan_rate)


async def run(events: int, stories: int) -> list[Row]:
    tmp = scratch_dir("jetsource-bench-storage-")
    server = NatsServer(tmp / "nats", port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        server.wait_ready(proc, 30)
        nc = await nats.connect(server.address())
        try:
            rows = []
            for layout in ("before", "after"):
                for per in (1, 10):
                    row = await write(nc, tmp, layout, per, stories, events)
                    print(
                        f"{layout:<7} {per:>2}-event commands: {row.events:,} events in "
                        f"{row.seconds:.1f} s; accounting {row.accounting:.0f} B/event, on disk "
                        f"{row.disk:.0f} B/event, compressed blocks "
                        + (f"{row.compressed:.0f}" if row.compressed else "n/a")
                        + " B/event"
                        + (f"; erase scan {row.scan_rate:,.0f} events/s" if row.scan_rate else "")
                    )
                    rows.append(row)
            return rows
        finally:
            await nc.close()
    finally:
        stop(proc)


def table(rows: list[Row]) -> Table:
    t = Table(
        "Stored bytes per event (issue #19: <= 100 B/event on disk)",
        [
            "layout",
            "command size",
            "events",
            "accounting B/event",
            "on disk now B/event",
            "on disk, compressed blocks B/event",
        ],
        label_columns=2,
    )
    for r in rows:
        aims = []
        if r.compressed is not None:
            aims.append(
                Aim.at_most(
                    f"<= {TARGET:.0f} B/event on disk (compressed blocks)", r.compressed, TARGET
                )
            )
        t.row(
            [
                r.layout,
                f"{r.per} event{'s' if r.per > 1 else ''}",
                f"{r.events:,}",
                f"{r.accounting:.0f}",
                f"{r.disk:.0f}",
                f"{r.compressed:.0f}" if r.compressed is not None else "n/a (no block sealed yet)",
            ],
            aims if r.layout == "after" else [],
        )
    scans = [r.scan_rate for r in rows if r.scan_rate]
    if scans:
        t.note(
            f"`jetsource erase` finds a subject's aggregates by reading every envelope of "
            f"each stream: {min(scans):,.0f}-{max(scans):,.0f} events/s here (about "
            f"{1_000_000 / min(scans):.0f} s per million events), before writing them again."
        )
    t.note(
        "accounting counts subject, every stored header (Nats-Msg-Id and, on a command's "
        "first message, the two optimistic-concurrency headers, which JetStream stores), "
        "payload and per-message overhead; on disk the s2-compressed blocks keep mostly "
        "what is unique per event (ids, keys, sequence numbers, sealed values)."
    )
    return t


QUICK = ["--events", "2000", "--stories", "20"]


def main(argv: list[str] | None = None) -> list[Table]:
    exit_on_signals()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=40_000, help="events per stream")
    p.add_argument("--stories", type=int, default=200)
    args = p.parse_args(argv)
    rows = asyncio.run(run(args.events, args.stories))
    return show([table(rows)])


if __name__ == "__main__":
    main()
