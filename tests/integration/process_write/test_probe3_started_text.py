"""A ``process_started`` whose ``data.kind`` or ``data.name`` is not a string (a
number, an object, a list, a boolean, null) was recorded and then read as no kind (no
name): the process could never be listed by kind. Every write path now refuses it with
INVALID_ARGUMENT naming the field, appending nothing; an absent kind or name is still
accepted."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.observer.server import Observer
from tests.integration.process_write.helpers import event, last_seq
from tests.integration.process_write.test_bad_input import violations

pytestmark = pytest.mark.integration

NOT_TEXT: list[Any] = [5, 1.5, {"a": 1}, ["x"], True, None]


def _pid() -> str:
    return f"p3-{uuid.uuid4().hex[:10]}"


def _started(pid: str, data: dict[str, Any]) -> Any:
    e = event(pid, "process_started", event_id=f"e-{uuid.uuid4().hex[:8]}")
    e.data.update(data)
    return e


@pytest.mark.parametrize("key", ["kind", "name"])
@pytest.mark.parametrize("value", NOT_TEXT, ids=lambda v: type(v).__name__)
async def test_a_started_kind_or_name_that_is_not_text_is_refused_on_every_rpc(
    observer: Observer, stub: pb_grpc.ObserverServiceStub, key: str, value: Any
) -> None:
    pid = _pid()
    bad = _started(pid, {key: value, "other": 1})
    good = event(_pid(), "step", event_id="good")
    before = await last_seq(observer.store)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Record(pb.RecordRequest(event=bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"event.data.{key} must be a string" in (info.value.details() or "")
    assert violations(info.value) == [f"event.data.{key}"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordBatch(pb.RecordBatchRequest(events=[good, bad]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(info.value) == [f"events[1].data.{key}"]

    async def requests() -> AsyncIterator[pb.RecordStreamRequest]:
        yield pb.RecordStreamRequest(event=bad)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.RecordStream(requests(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"data.{key}" in (info.value.details() or "")
    assert await last_seq(observer.store) == before
    assert await observer.store.read_aggregate(pid) == []


async def test_a_started_event_without_kind_or_name_is_still_recorded(
    stub: pb_grpc.ObserverServiceStub,
) -> None:
    for data in ({}, {"kind": "tool"}, {"name": "n"}, {"kind": "", "name": ""}):
        reply = await stub.Record(pb.RecordRequest(event=_started(_pid(), data)))
        assert not reply.position.duplicate


async def test_observe_import_refuses_a_kind_that_is_not_text_naming_it(
    observer: Observer, tmp_path: Path
) -> None:
    pid = _pid()
    path = tmp_path / "k.jsonl"
    rows = [
        {"process_id": pid, "event_type": "step"},
        {"process_id": pid, "event_type": "process_started", "data": {"kind": 7}},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "jetsource", "observe", "import", str(path)],
        "--observer",
        f"127.0.0.1:{observer.port}",
        "-o",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    error = json.loads(err)["error"]
    assert error["code"] == "INVALID_ARGUMENT", error
    # named by its line (it was the observer's ``events[1].data.kind``, no field)
    assert error["field"] == "line 2.data.kind", error
    assert "must be a string" in error["message"], error
    # the line before is recorded, the refused one is not
    types = [r.event_type for r in await observer.store.read_aggregate(pid)]
    assert types == ["step"]
