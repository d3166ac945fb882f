"""The append path's sealing shortcuts (memoized cuts, kept wire bytes, the one-event
path) store exactly what sealing means: no personal value in the clear, every field
back on opening, and the same bytes as cutting each event afresh."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf import descriptor_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1 import options_pb2
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core import crypto
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import RawMessage
from tests.eventstore_fixtures import message_class


def _multi_personal() -> Any:
    """A message with three personal fields among others (the context events have one):
    a class made at run time, whose fields no type checker knows."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="sealing_fastpath_test/multi.proto", package="sealfast", syntax="proto3"
    )
    message = proto.message_type.add(name="MultiPersonal")
    string, repeated, optional = 9, 3, 1
    for name, number, label, personal in (
        ("owner", 1, optional, True),
        ("title", 2, optional, False),
        ("reviewer", 3, optional, True),
        ("tags", 4, repeated, False),
        ("approver", 6, optional, True),
        ("note", 7, optional, False),
    ):
        field = message.field.add(name=name, number=number, type=string, label=label)
        if personal:
            field.options.Extensions[options_pb2.personal] = True
    message.field.add(name="count", number=5, type=5, label=optional)  # int32
    return message_class(proto, "sealfast.MultiPersonal")


MultiPersonal = _multi_personal()

# Subjects look like nothing else the events hold, so "not in the stored bytes" means
# "not stored in the clear" (a 16-byte tag or key reference never spells them out).
SUBJECTS = ["person-ana", "person-bob", "person-zoë-ñ", "person-" + "x" * 40]
person = st.sampled_from(["", *SUBJECTS])
text = st.text(alphabet="abcdefgh ,.", max_size=30)


@st.composite
def events(draw: Any) -> tuple[Message, dict[str, str]]:
    kind = draw(st.sampled_from(["multi", "decision", "subtask", "linked"]))
    message: Message
    if kind == "multi":
        message = MultiPersonal(
            owner=draw(person),
            title=draw(text),
            reviewer=draw(person),
            tags=draw(st.lists(text, max_size=3)),
            count=draw(st.integers(0, 1000)),
            approver=draw(person),
            note=draw(text),
        )
    elif kind == "decision":
        message = ev.DecisionAdded(
            decision_id=draw(text),
            title=draw(text),
            author=draw(person),
            affects=draw(st.lists(text, max_size=2)),
        )
    elif kind == "subtask":
        message = ev.SubtaskUpdated(
            subtask_id=draw(text),
            assignee=draw(person),
            progress=draw(st.integers(0, 100)),
        )
    else:
        message = ev.DependencyLinked(from_id=draw(text), to_id=draw(text))
    metadata = draw(st.dictionaries(st.sampled_from(["team", "tool"]), text, max_size=2))
    actor = draw(st.none() | person)
    if actor is not None:
        metadata["actor"] = actor
    return message, metadata


def personal_values(message: Message, metadata: Mapping[str, str]) -> set[str]:
    values = {getattr(message, f.name) for f in crypto.personal_fields(message.DESCRIPTOR)}
    values |= {metadata[k] for k in crypto.PERSONAL_METADATA if k in metadata}
    return {v for v in values if v}


def reference_seal(
    message: Message, metadata: Mapping[str, str], keys: Mapping[str, crypto.RefKey]
) -> tuple[bytes, dict[str, str], bytes]:
    """Sealing done the plain way, one event at a time (what the shortcuts must equal)."""
    stripped = type(message)()
    stripped.CopyFrom(message)
    boxes: dict[str, tuple[list[int], list[str]]] = {}
    for f in crypto.personal_fields(message.DESCRIPTOR):
        if value := getattr(message, f.name):
            boxes.setdefault(value, ([], []))[0].append(f.number)
            stripped.ClearField(f.name)
    rest = dict(metadata)
    for k in sorted(crypto.PERSONAL_METADATA & rest.keys()):
        if value := rest[k]:
            boxes.setdefault(value, ([], []))[1].append(k)
            del rest[k]
    envelope = EventEnvelope()
    for subject, (numbers, entries) in boxes.items():
        ref, key = keys[subject]
        envelope.sealed.add(
            key_ref=ref,
            fields=numbers,
            metadata=entries,
            box=AESGCM(key).encrypt(crypto._NONCE, subject.encode(), crypto._AAD + ref),
        )
    return (
        stripped.SerializeToString(deterministic=True),
        rest,
        envelope.SerializeToString(deterministic=True),
    )


KEYS = {s: (crypto.subject_ref(b"pepper", s), crypto.new_key()) for s in SUBJECTS}
BY_REF = {ref: key for ref, key in KEYS.values()}


@settings(max_examples=400, deadline=None)
@given(st.lists(events(), min_size=1, max_size=3))
def test_sealed_events_hide_every_personal_value_and_open_to_the_same_event(
    batch: list[tuple[Message, dict[str, str]]],
) -> None:
    for message, metadata in batch:  # twice: the second time every cut is memoized
        original = message.SerializeToString(deterministic=True)
        for _ in range(2):
            sealed = crypto.seal(message, metadata, KEYS)
            assert (sealed.payload, dict(sealed.metadata), sealed.wire) == reference_seal(
                message, metadata, KEYS
            )
            stored = EventEnvelope(payload=sealed.payload, metadata=sealed.metadata)
            data = stored.SerializeToString(deterministic=True) + sealed.wire
            for value in personal_values(message, metadata):
                assert value.encode() not in data
            opened = EventEnvelope.FromString(data)
            payload, erased = crypto.unseal(opened, BY_REF.get)
            assert erased == 0
            assert type(message).FromString(payload) == message
            assert dict(opened.metadata) == metadata
        assert message.SerializeToString(deterministic=True) == original  # left as it was


def store() -> JetStreamEventStore:
    """A store that is never connected, whose key store already knows every key (made
    where it is used: the key store forgets a key after its TTL, and a store made at
    import time reached a test of the whole suite minutes later with none fresh)."""
    registry = EventRegistry()
    registry.register("MultiPersonal", 1, MultiPersonal)
    registry.register("DecisionAdded", 1, ev.DecisionAdded)
    registry.register("SubtaskUpdated", 1, ev.SubtaskUpdated)
    registry.register("DependencyLinked", 1, ev.DependencyLinked)
    s = JetStreamEventStore(NATS(), registry, EventStoreSettings(stream="T"))
    s.keys._pepper = b"pepper"
    for ref, key in KEYS.values():
        s.keys._remember(ref, key)
    return s


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=4))
def test_appended_messages_hide_every_personal_value_and_decode_to_the_events(
    batch: list[tuple[Message, dict[str, str]]],
) -> None:
    """The append path (one event: its own shortcut; several: the batch path) stores
    no personal value in the clear, and each stored message decodes to its event."""
    new = [NewEvent(m, metadata=md) for m, md in batch]
    store_ = store()
    encoded = store_._encode("agg-1", new)
    sealed = asyncio.run(store_._seal(new, encoded))
    messages = store_._messages("agg-1", new, encoded, 0, 0, sealed)
    for i, (out, (message, metadata)) in enumerate(zip(messages, batch, strict=True)):
        for value in personal_values(message, metadata):
            assert value.encode() not in out.data
            assert all(value not in h for h in out.headers.values())
        raw = RawMessage(out.subject, i + 1, 1, {"Nats-Msg-Id": new[i].event_id}, out.data)
        record = store_.decode(raw)
        assert record.event == message
        assert dict(record.envelope.metadata) == metadata


def test_a_memoized_cut_gives_new_boxes_for_new_keys_and_is_dropped_on_erasure() -> None:
    message = ev.DecisionAdded(decision_id="d1", author="person-ana")
    cut = crypto.cut_of(message, {"actor": "person-ana"})
    assert cut is not None and cut is crypto.cut_of(message, {"actor": "person-ana"})
    first = cut.seal(message, {"actor": "person-ana"}, (KEYS["person-ana"],))
    # The subject's key was destroyed and a new one made: its boxes are new bytes.
    renewed = (crypto.subject_ref(b"pepper", "person-ana"), crypto.new_key())
    second = cut.seal(message, {"actor": "person-ana"}, (renewed,))
    assert first.wire != second.wire and first.payload == second.payload
    opened = EventEnvelope(payload=second.payload)
    opened.MergeFromString(second.wire)
    payload, erased = crypto.unseal(opened, lambda ref: renewed[1])
    assert erased == 0 and ev.DecisionAdded.FromString(payload) == message
    crypto.note_erasure()  # no subject is kept in memory past an erasure heard of
    assert cut is not crypto.cut_of(message, {"actor": "person-ana"})


def test_nothing_personal_keeps_the_event_as_it_is() -> None:
    message = ev.DecisionAdded(decision_id="d1", title="t")
    assert crypto.cut_of(message, {}) is None
    assert crypto.cut_of(message, {"actor": "", "team": "red"}) is None
    assert crypto.cut_of(ev.DependencyLinked(from_id="a"), {"team": "red"}) is None
    new = [NewEvent(message, metadata={"team": "red"})]
    store_ = store()
    encoded = store_._encode("agg-1", new)
    before = list(encoded)
    assert not asyncio.run(store_._seal(new, encoded)) and encoded == before
