"""Canonical events for the tests, and what the stream holds."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource.core.envelope import RecordedEvent
from jetsource.eventstore.jetstream import JetStreamEventStore


def event(process_id: str, event_type: str = "step_done", **fields: Any) -> epb.CanonicalEvent:
    data = fields.pop("data", {"n": 1})
    e = epb.CanonicalEvent(process_id=process_id, event_type=event_type, **fields)
    if data is not None:
        s = struct_pb2.Struct()
        s.update(data)
        e.data.CopyFrom(s)
    return e


async def last_seq(store: JetStreamEventStore) -> int:
    info = await store.stream_info()
    return int(info["state"]["last_seq"])


async def history(store: JetStreamEventStore, process_id: str) -> list[RecordedEvent]:
    return await store.read_aggregate(process_id)
