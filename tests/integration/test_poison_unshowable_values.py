"""Times and numbers no reader can show, published raw into a payload: a
``google.protobuf.Timestamp`` outside the years 1..9999 and a ``Value`` holding NaN or
an infinity (protobuf's JSON refuses both). No writer stores them; one published raw
is poison like a payload that does not parse: each read model dead-letters it once
naming the field, every reader of the stream names its sequence, the other aggregates
flow on and every listing still answers (one made ``sessions list`` fail for all;
omni's REST event lists: tests/integration/omni/test_poison_reads.py)."""

from __future__ import annotations

import math

import pytest
from google.protobuf import struct_pb2

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.errors import CorruptEventError
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.projection.bootstrap import Projection
from tests.integration.test_poison_every_domain import (  # noqa: F401 (the fixture)
    Ledger,
    ledger,
    raw_publish,
    run_until_caught_up,
)

pytestmark = pytest.mark.integration


def _body(data: struct_pb2.Struct) -> bytes:
    return ProcessEventBody(data=data).SerializeToString()


def _envelope(pid: str, event_type: str, version: int, payload: bytes) -> bytes:
    return EventEnvelope(
        event_id=f"{pid}-{version}",
        event_type=event_type,
        aggregate_id=pid,
        aggregate_version=version,
        schema_version=1,
        payload=payload,
    ).SerializeToString()


async def test_a_number_no_json_holds_is_poison_and_sessions_still_list(
    ledger: Projection,  # noqa: F811
) -> None:
    from jetsource.domains.sessions.ledger import LedgerReader
    from jetsource.domains.sessions.service import Sessions

    p = ledger
    w = Ledger(p)
    await w.started("s-ok", 1)
    started = struct_pb2.Struct()
    started.update({"kind": "session", "name": "nan"})
    started["x"] = math.nan
    nan = await w.raw(
        "s-nan", "process_started", _envelope("s-nan", "process_started", 1, _body(started))
    )
    await w.started("s-inf", 1)
    step = struct_pb2.Struct()
    step.update({"n": 1, "deep": {"list": [1, 2]}})
    step.fields["deep"].struct_value.fields["list"].list_value.values.add().number_value = -math.inf
    inf = await w.raw("s-inf", "step_done", _envelope("s-inf", "step_done", 3, _body(step)))
    await w.started("s-after", 1)

    reasons = {
        nan: "process_started v1: its data['x'] is nan, a number no JSON holds",
        inf: "step_done v1: its data['deep']['list'][2] is -inf, a number no JSON holds",
    }
    for name in PROCESS_MODELS:
        worker = await run_until_caught_up(p, name)
        letters = {d.original_seq: d.reason for d in await p.dead_letters.list(worker.spec)}
        assert letters == {seq: f"undecodable: {why}" for seq, why in reasons.items()}, name

    sessions = Sessions(LedgerReader(w.store, p.nc.jetstream(), w.store.settings.stream, w.prefix))
    listed = {r.session_id: r for r in await sessions.list_sessions()}  # ValueError before
    assert {"s-ok", "s-inf", "s-after"} <= set(listed)
    assert listed["s-ok"].error == "" and listed["s-ok"].event_count == 2
    assert f"stream sequence {inf}" in listed["s-inf"].error
    for sid, seq in (("s-nan", nan), ("s-inf", inf)):
        with pytest.raises(CorruptEventError) as caught:
            await sessions.export(sid)
        assert caught.value.stream_seq == seq
        assert reasons[seq] in str(caught.value)
    assert [e.seq for e in await sessions.export("s-after")] == [1, 2]
