"""Requests bounded in bytes: every writer of the ledger (the SDK, the JSONL import, the
sessions writer) cuts its requests below gRPC's message limit, so events each under the
observer's payload limit are recorded however many queue up. A request refused for its
size anyway (a server whose limit is smaller) is split, never resent as it was; one event
over that limit alone is refused alone, clearly, and the rest is recorded."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jetsource._gen.process.v1 import observer_pb2_grpc
from jetsource.core.settings import GrpcServerSettings
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.ledger import ObserverWriter
from jetsource.observer.server import Observer, build
from jetsource.sdk import Observer as Client
from tests.infra import Server
from tests.integration.process_write.conftest import observer_settings
from tests.integration.process_write.helpers import event

pytestmark = pytest.mark.integration

BLOB = "x" * 200_000  # under the 256 KiB payload limit; 25 of them are over 4 MiB


@pytest.fixture
async def roomy(nats_server: Server) -> AsyncIterator[Observer]:
    """The observer's defaults: 256 KiB payloads, gRPC's 4 MiB messages."""
    o = await build(observer_settings(nats_server))
    yield o
    await o.stop(1.0)


@pytest.fixture
async def narrow(nats_server: Server) -> AsyncIterator[Observer]:
    """A server whose gRPC message limit (600 KB) is below a 1 MiB request and below
    one event its payload limit (512 KiB) allows."""
    settings = observer_settings(nats_server, max_payload_bytes=900_000)
    settings.grpc = GrpcServerSettings(max_message_bytes=600_000)
    o = await build(settings)
    yield o
    await o.stop(1.0)


async def types_of(observer: Observer, process_id: str) -> list[str]:
    return [r.envelope.event_type for r in await observer.store.read_aggregate(process_id)]


async def test_the_sdk_records_batches_of_large_events_whole(roomy: Observer) -> None:
    client = Client(f"127.0.0.1:{roomy.port}", flush_interval_s=0.01, close_timeout_s=20)
    async with client, client.process("big", kind="probe") as p:
        for i in range(25):
            p.emit("chunk", {"blob": BLOB, "i": i})
        p.emit("after", {"ok": True})
    assert (client.stats.sent, client.stats.dropped, client.stats.refused) == (28, 0, 0)
    assert client.stats.retries == 0
    stored = await roomy.store.read_aggregate(p.process_id)
    assert [r.envelope.event_type for r in stored] == [
        "process_started", *["chunk"] * 25, "after", "process_completed"
    ]  # fmt: skip
    assert [dict(r.event.data)["i"] for r in stored[1:26]] == list(range(25))  # type: ignore[union-attr]


async def test_over_a_smaller_message_limit_the_sdk_splits_and_refuses_one_event_alone(
    narrow: Observer,
) -> None:
    client = Client(f"127.0.0.1:{narrow.port}", flush_interval_s=0.01, close_timeout_s=20)
    started = time.monotonic()
    async with client, client.process("big", kind="probe") as p:
        for i in range(6):
            p.emit("chunk", {"blob": BLOB, "i": i})
        p.emit("huge", {"blob": "y" * 700_000})  # over 600 KB on its own
        p.emit("after", {"ok": True})
    assert time.monotonic() - started < 10, "split at once, never resent as it was"
    assert (client.stats.sent, client.stats.refused, client.stats.dropped) == (9, 1, 0)
    assert client.stats.retries == 0
    assert await types_of(narrow, p.process_id) == [
        "process_started", *["chunk"] * 6, "after", "process_completed"
    ]  # fmt: skip


async def test_a_session_of_large_events_and_a_long_import_go_through_the_observer(
    narrow: Observer,
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{narrow.port}") as channel:
        writer = ObserverWriter(observer_pb2_grpc.ObserverServiceStub(channel))
        # The emitter's batches of 500 events: 8 of 200 KB are over the server's limit.
        async with session(writer, "big", heartbeat_s=60) as s:
            for i in range(8):
                s.emit("chunk", {"blob": BLOB, "i": i})
        assert s.error is None, s.error  # no commit failed
        assert await types_of(narrow, s.id) == [
            "process_started", *["chunk"] * 8, "process_completed"
        ]  # fmt: skip
        # More events of one process than the observer takes in one request (1,000).
        pid = f"long-{uuid.uuid4().hex[:8]}"
        positions = await writer.record([event(pid, data={"i": i}) for i in range(1500)])
        assert [p.process_seq for p in positions] == list(range(1, 1501))


async def import_(path: Path, observer: Observer) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "jetsource", "observe", "import", str(path)),
        *("--observer", f"127.0.0.1:{observer.port}", "--give-up", "30", "-o", "json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_the_jsonl_import_records_large_lines_and_names_one_over_the_limit(
    narrow: Observer, tmp_path: Path
) -> None:
    pid = f"jl-{uuid.uuid4().hex[:8]}"
    rows = [{"process_id": pid, "event_type": "chunk", "data": {"blob": BLOB, "i": i}}
            for i in range(8)]  # fmt: skip
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    started = time.monotonic()
    code, out, err = await import_(path, narrow)
    assert code == 0, err
    assert (json.loads(out)["lines"], json.loads(out)["recorded"]) == (8, 8)
    assert await types_of(narrow, pid) == ["chunk"] * 8

    rows.append({"process_id": pid, "event_type": "huge", "data": {"blob": "y" * 700_000}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = await import_(path, narrow)
    assert code == 1, err  # refused, not "the observer is away" (3)
    error = json.loads(err)["error"]
    assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", "line 9")
    assert "message limit" in error["message"]
    assert time.monotonic() - started < 20
    assert await types_of(narrow, pid) == ["chunk"] * 8
