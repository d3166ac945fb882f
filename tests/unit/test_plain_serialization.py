"""The append path serializes without ``deterministic`` where that gives the same bytes
(issue 23: upb's keyword argument cost more than the serialization): a sealed payload
of a message with no map and no extensions, an envelope without metadata entries."""

from __future__ import annotations

import random

from nats.aio.client import Client as NATS

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.process.v1 import events_pb2 as process_ev
from jetsource.core import crypto
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.common import stored_envelope
from jetsource.eventstore.jetstream import JetStreamEventStore


def test_only_messages_without_maps_or_extensions_are_plain() -> None:
    assert crypto._plain(ev.DecisionAdded)
    assert not crypto._plain(process_ev.StoredEvent)  # holds a map (in a nested message)
    from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope

    assert not crypto._plain(EventEnvelope)  # its metadata


def test_the_stored_bytes_are_the_deterministic_ones() -> None:
    store = JetStreamEventStore(
        NATS(), registry, EventStoreSettings(stream="T", subject_prefix="t.e")
    )
    rng = random.Random(7)
    key = (b"r" * 16, b"k" * 32)
    for n in range(200):
        keys = [f"k{i}" for i in range(rng.randrange(0, 6))]
        rng.shuffle(keys)  # insertion order must not show in the stored bytes
        metadata = {k: f"v{rng.randrange(100)}" for k in keys}
        if rng.random() < 0.3:
            metadata["actor"] = f"person-{rng.randrange(3)}"
        new = NewEvent(
            ev.DecisionAdded(
                decision_id=f"d{n}",
                title="t" * rng.randrange(50),
                author=rng.choice(["", "ann", "bob"]),
                affects=[f"x{i}" for i in range(rng.randrange(3))],
            ),
            metadata=metadata,
            causation_id=rng.choice(["", "c1"]),
            occurred_at_ns=rng.choice([None, 1_700_000_000_123_456_789]),
        )
        encoded = store._encode("agg-1", [new])
        cut = crypto.cut_of(new.event, new.metadata)
        sealed = [cut.seal(new.event, new.metadata, (key,) * len(cut.subjects))] if cut else []
        if sealed:
            stripped = type(new.event)()
            stripped.CopyFrom(new.event)
            for name in cut.fields:  # type: ignore[union-attr]
                stripped.ClearField(name)
            assert sealed[0].payload == stripped.SerializeToString(deterministic=True)
            encoded[0] = (encoded[0][0], encoded[0][1], sealed[0].payload)
        (message,) = store._messages("agg-1", [new], encoded, 3, 9, sealed)
        box = sealed[0] if sealed else None
        envelope = stored_envelope(
            new, encoded[0][1], 4, encoded[0][2], None, box.metadata if box else None
        )
        expected = envelope.SerializeToString(deterministic=True) + (box.wire if box else b"")
        assert message.data == expected
