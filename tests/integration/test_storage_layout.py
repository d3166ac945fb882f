"""The stored layout leaves out what readers can give back exactly (#19, storage): a
canonical UUID idempotency key is stored as its 16 bytes, occurred_at is not stored
when the caller gave none (it reads as the stream's recorded time), and personal
fields are sealed; every reader still sees the envelope as written."""

from __future__ import annotations

import nats
import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core.envelope import NewEvent
from jetsource.domains.context.events import registry
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.keys import JetStreamKeyStore
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration


async def test_the_compact_layout_reads_back_exactly(nats_server: Server, unique: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        cfg = isolated_settings(unique)
        store = JetStreamEventStore(nc, registry, cfg, keys=JetStreamKeyStore(nc, f"K_{unique}"))
        await store.ensure_streams()
        key = "01939d3c-8a2b-7c4d-9e5f-0a1b2c3d4e5f"
        others = ["01939D3C-8A2B-7C4D-9E5F-0A1B2C3D4E5F", "cmd-42", ""]  # kept as text
        events = [NewEvent(ev.DecisionAdded(decision_id="d0", author="ana"), idempotency_key=key)]
        events += [
            NewEvent(ev.DecisionAdded(decision_id=f"d{i + 1}"), idempotency_key=k)
            for i, k in enumerate(others)
        ]
        events.append(
            NewEvent(ev.DecisionAdded(decision_id="d9"), occurred_at_ns=1_700_000_000_000_000_001)
        )
        await store.append("s1", events, 0)
        read = await store.read_aggregate("s1")
        assert [r.envelope.idempotency_key for r in read] == [key, *others, ""]
        assert read[0].event.author == "ana"  # type: ignore[union-attr]
        for r in read[:-1]:
            assert r.envelope.occurred_at == r.envelope.recorded_at
        assert read[-1].envelope.occurred_at.nanos == 1

        stored, raws = [], []
        for r in read:
            raw = await jsapi.direct_get(
                store._replies, cfg.stream, {"seq": r.stream_seq}, cfg.request_timeout_s
            )
            assert raw is not None
            raws.append(raw.data)
            stored.append(EventEnvelope.FromString(raw.data))
        assert stored[0].idempotency_uuid and not stored[0].idempotency_key
        assert [s.idempotency_key for s in stored[1:4]] == others
        assert not any(s.HasField("occurred_at") for s in stored[:-1])
        assert stored[-1].HasField("occurred_at")
        assert stored[0].sealed and b"ana" not in raws[0]
        await store.close()
    finally:
        await nc.drain()
