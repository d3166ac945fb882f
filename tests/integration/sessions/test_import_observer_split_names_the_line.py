"""`sessions import --observer` names the right line when the observer refuses an event
of a request the writer split for gRPC's message limit.

The writer halves a request over the server's message limit; the observer's
``events[i]`` then counts from the half, and the import added it to the piece's start:
the refusal named another line (the session's first). A real observer here, whose gRPC
message limit (600 KB) is below one request of the import (1 MiB) and whose payload
limit (300 kB) refuses one line's event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetsource.core.ids import uuid7
from jetsource.core.settings import GrpcServerSettings, NatsSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.observer.server import Observer, build
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.sessions.test_cli import cli

pytestmark = pytest.mark.integration

TS = "2026-12-07T04:00:00.000Z"


@pytest.fixture
async def narrow(nats_server: Server) -> AsyncIterator[Observer]:
    settings = observer_settings(nats_server, max_payload_bytes=300_000)
    settings.grpc = GrpcServerSettings(max_message_bytes=600_000)
    o = await build(settings)
    yield o
    await o.stop(1.0)


async def test_a_refusal_in_a_half_of_a_split_request_names_its_line(
    narrow: Observer, nats_server: Server, tmp_path: Path
) -> None:
    sid = str(uuid7())

    def line(seq: int, kind: str, data: dict[str, object]) -> str:
        doc = {"ts": TS, "session": sid, "seq": seq, "type": kind, "data": data}
        return json.dumps(doc, separators=(",", ":"))

    # One request of the import (under 1 MiB), over the observer's 600 KB: halved, and
    # the last half halved again, down to the 400 kB event alone (over 300 kB).
    lines = [
        "",
        line(1, "session_started", {"command": "gen", "argv": []}),  # line 2
        *(line(2 + i, "custom_note", {"blob": "x" * 200_000}) for i in range(3)),
        "",
        line(5, "custom_note", {"blob": "y" * 400_000}),  # line 7
    ]
    path = tmp_path / "split.jsonl"
    path.write_text("".join(x + "\n" for x in lines))
    app = SessionsAppSettings(nats=NatsSettings(url=nats_server.url))

    got = await cli(
        app, "import", str(path), "--observer", f"127.0.0.1:{narrow.port}", "-o", "json"
    )
    assert got.returncode == 2, (got.stdout, got.stderr)
    error = json.loads(got.stderr)["error"]
    assert (error["code"], error["line"], error["field"]) == ("INVALID_ARGUMENT", 7, "line 7")
    assert error["message"].startswith("line 7: data: the payload is "), error
    # The lines before it were recorded, in their halves.
    exported = (await cli(app, "export", sid)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in exported] == [1, 2, 3, 4]


async def test_the_emitter_replaces_an_event_refused_in_a_half_and_records_none_twice(
    narrow: Observer, nats_server: Server
) -> None:
    """The emitter through the same observer: an event refused in a half of a split
    request (raised as gRPC's error before: the half had no place) is recorded as its
    event_too_large marker in its place; the half recorded before it is not twice."""
    import grpc

    from jetsource._gen.process.v1.observer_pb2_grpc import ObserverServiceStub
    from jetsource.domains.sessions.emit import session
    from jetsource.domains.sessions.ledger import ObserverWriter

    async with grpc.aio.insecure_channel(f"127.0.0.1:{narrow.port}") as channel:
        writer = ObserverWriter(ObserverServiceStub(channel), 30.0)
        async with session(writer, "big", heartbeat_s=60, max_batch=10) as s:
            for i in range(3):
                s.emit("custom_note", {"blob": "x" * 200_000, "i": i})
            s.emit("custom_note", {"blob": "y" * 400_000})
            s.emit("custom_note", {"n": 1})
        assert s.dropped == 1
    recorded = await narrow.store.read_aggregate(s.id)
    types = [r.envelope.event_type for r in recorded]
    assert types == [
        "process_started",
        *["custom_note"] * 3,
        "event_too_large",
        "custom_note",
        "process_completed",
    ], types
