from __future__ import annotations

import pytest

from jetsource._gen.context.v1 import events_history_pb2 as history
from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.codec import EventRegistry, PayloadDecodeError, UnknownEvent
from jetsource.core.errors import UnknownEventTypeError
from jetsource.domains.context.events import registry, status_from_text
from tests.fixtures.golden import CASES, HERE


@pytest.mark.parametrize("stem", sorted(CASES))
def test_golden_bytes_decode_and_upcast_to_the_current_message(stem: str) -> None:
    event_type, version, _, expected = CASES[stem]
    payload = (HERE / f"{stem}.bin").read_bytes()
    assert registry.decode(event_type, version, payload) == expected


def test_every_registered_version_has_a_golden_fixture() -> None:
    covered = {(t, v) for t, v, _, _ in CASES.values()}
    assert covered == set(registry._classes)


def test_encode_uses_the_current_version() -> None:
    event_type, version, payload = registry.encode(ev.DecisionAdded(decision_id="d"))
    assert (event_type, version) == ("DecisionAdded", 2)
    assert ev.DecisionAdded.FromString(payload).decision_id == "d"


def test_historical_messages_cannot_be_written() -> None:
    with pytest.raises(UnknownEventTypeError, match="DecisionAddedV1"):
        registry.encode(history.DecisionAddedV1(decision_id="d"))


def test_unknown_types_and_versions_are_skippable_values() -> None:
    unknown = registry.decode("Teleported", 1, b"\x01")
    assert isinstance(unknown, UnknownEvent) and unknown.reason == "unknown event type"
    newer = registry.decode("DecisionAdded", 3, b"")
    assert isinstance(newer, UnknownEvent) and "schema version 3" in newer.reason


def test_unknown_fields_survive_a_round_trip() -> None:
    # A newer producer added field 99 to ContextCreated; we keep its bytes.
    newer = ev.ContextCreated(title="t").SerializeToString() + b"\xfa\x06\x03abc"
    decoded = registry.decode("ContextCreated", 1, newer)
    assert isinstance(decoded, ev.ContextCreated) and decoded.title == "t"
    assert decoded.SerializeToString().endswith(b"\xfa\x06\x03abc")


def test_garbage_payload_of_a_known_type_is_a_decode_error() -> None:
    with pytest.raises(PayloadDecodeError, match="ContextCreated v1"):
        registry.decode("ContextCreated", 1, b"\xff\xff\xff")


def test_registry_validation_finds_missing_upcasters() -> None:
    r = EventRegistry()
    r.register("DecisionAdded", 1, history.DecisionAddedV1, current=False)
    r.register("DecisionAdded", 2, ev.DecisionAdded)
    with pytest.raises(ValueError, match="no upcaster from v1 to v2"):
        r.validate()
    with pytest.raises(ValueError, match="CamelCase"):
        r.register("bad.type", 1, ev.ContextClosed)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("todo", ev.SUBTASK_STATUS_TODO),
        (" In-Progress ", ev.SUBTASK_STATUS_IN_PROGRESS),
        ("WIP", ev.SUBTASK_STATUS_IN_PROGRESS),
        ("canceled", ev.SUBTASK_STATUS_CANCELLED),
        ("who knows", ev.SUBTASK_STATUS_UNSPECIFIED),
    ],
)
def test_free_text_status_mapping(text: str, status: int) -> None:
    assert status_from_text(text) == status
