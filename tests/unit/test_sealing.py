"""Sealing personal fields (pure): round trip, erased reading, what stays in the clear."""

from __future__ import annotations

import pytest

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource.core import crypto
from jetsource.core.crypto import ERASED


def keys_for(*subjects: str) -> dict[str, tuple[bytes, bytes]]:
    return {s: (crypto.subject_ref(b"pepper", s), crypto.new_key()) for s in subjects}


def envelope(sealed: crypto.Sealed) -> EventEnvelope:
    return EventEnvelope(
        event_type="SubtaskUpdated",
        payload=sealed.payload,
        metadata=sealed.metadata,
        sealed=sealed.sealed,
    )


def test_person_fields_are_the_marked_ones() -> None:
    names = {
        m.DESCRIPTOR.name: [f.name for f in crypto.personal_fields(m.DESCRIPTOR)]
        for m in (ev.ContextCreated(), ev.DecisionAdded(), ev.SubtaskUpdated(), ev.ContextClosed())
    }
    assert names == {
        "ContextCreated": ["created_by"],
        "DecisionAdded": ["author"],
        "SubtaskUpdated": ["assignee"],
        "ContextClosed": ["closed_by"],
    }
    assert crypto.personal_fields(ev.DependencyLinked.DESCRIPTOR) == ()


def test_sealed_values_open_with_their_keys_and_read_erased_without() -> None:
    message = ev.SubtaskUpdated(subtask_id="t1", assignee="ana", progress=40)
    keys = keys_for("ana", "bob")
    sealed = crypto.seal(message, {"actor": "bob", "team": "red"}, keys)
    assert sealed.metadata == {"team": "red"}
    assert b"ana" not in sealed.payload and len(sealed.sealed) == 2
    assert all(b"ana" not in s.SerializeToString() for s in sealed.sealed)
    assert all(b"bob" not in s.SerializeToString() for s in sealed.sealed)

    opened = envelope(sealed)
    payload, erased = crypto.unseal(opened, lambda ref: {k[0]: k[1] for k in keys.values()}[ref])
    assert erased == 0 and ev.SubtaskUpdated.FromString(payload) == message
    assert dict(opened.metadata) == {"actor": "bob", "team": "red"}

    ana_ref = keys["ana"][0]
    gone = envelope(sealed)
    payload, erased = crypto.unseal(gone, lambda ref: None if ref == ana_ref else keys["bob"][1])
    assert erased == 1
    assert ev.SubtaskUpdated.FromString(payload) == ev.SubtaskUpdated(
        subtask_id="t1", assignee=ERASED, progress=40
    )
    assert dict(gone.metadata) == {"actor": "bob", "team": "red"}
    # A new key under the same reference (the subject wrote again after an erase)
    # does not open the old boxes: they stay erased.
    payload, erased = crypto.unseal(envelope(sealed), lambda ref: crypto.new_key())
    assert erased == 2 and ev.SubtaskUpdated.FromString(payload).assignee == ERASED


def test_one_subject_is_one_box_and_the_same_bytes_every_time() -> None:
    keys = keys_for("ana")
    first = crypto.seal(ev.DecisionAdded(decision_id="d1", author="ana"), {"actor": "ana"}, keys)
    again = crypto.seal(ev.ContextClosed(closed_by="ana"), {"actor": "ana"}, keys)
    assert len(first.sealed) == 1 and list(first.sealed[0].fields) == [5]
    assert list(first.sealed[0].metadata) == ["actor"]
    assert first.sealed[0].box == again.sealed[0].box  # compresses to ~once per block


def test_nothing_personal_is_left_as_it_was() -> None:
    message = ev.DependencyLinked(from_id="a", to_id="b")
    sealed = crypto.seal(message, {"team": "red"}, {})
    assert sealed.sealed == [] and sealed.payload == message.SerializeToString(deterministic=True)
    empty = crypto.seal(ev.DecisionAdded(decision_id="d1"), {"actor": ""}, {})
    assert empty.sealed == []


def test_the_subject_reference_hides_the_subject() -> None:
    ref = crypto.subject_ref(b"pepper", "ana")
    assert len(ref) == crypto.REF_BYTES and b"ana" not in ref
    assert ref != crypto.subject_ref(b"other pepper", "ana")
    with pytest.raises(KeyError):
        crypto.seal(ev.DecisionAdded(author="zoe"), {}, keys_for("ana"))


def test_an_event_type_marking_a_non_string_field_personal_is_refused() -> None:
    from google.protobuf import descriptor_pb2

    from jetsource._gen.eventstore.v1 import options_pb2
    from jetsource.core.codec import EventRegistry
    from tests.eventstore_fixtures import message_class

    proto = descriptor_pb2.FileDescriptorProto(
        name="h7_test/bad_personal.proto", package="h7test", syntax="proto3"
    )
    message = proto.message_type.add(name="BadPersonal")
    field = message.field.add(name="age", number=1, type=5, label=1)  # int32
    field.options.Extensions[options_pb2.personal] = True
    cls = message_class(proto, "h7test.BadPersonal")
    registry = EventRegistry()
    with pytest.raises(crypto.PersonalFieldError, match=r"BadPersonal\.age"):
        registry.register("BadPersonal", 1, cls)
    assert registry.event_types() == []  # nothing registered
