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


def test_unknown_types_and_versions_are_values_naming_the_newer_release() -> None:
    """Undecodable by this release, never fatal to a reader; what a newer release can
    have written says so (type, version found, newest known): a projector dead-letters
    it instead of skipping it (it skipped it before, and the model never had it)."""
    unknown = registry.decode("Teleported", 1, b"\x01")
    assert isinstance(unknown, UnknownEvent) and unknown.reason == "unknown event type"
    assert unknown.newer_release == (
        "Teleported v1 is an event type this release does not know (it knows no version "
        "of it): written by a newer release"
    )
    newer = registry.decode("DecisionAdded", 3, b"")
    assert isinstance(newer, UnknownEvent) and "schema version 3" in newer.reason
    assert newer.newer_release == (
        "DecisionAdded v3 was written by a newer release: this release knows DecisionAdded up to v2"
    )


def test_what_no_release_writes_is_not_named_a_newer_releases() -> None:
    """A version below the newest with no schema, a type name no rule of the domain
    accepts, a fallback domain's (it knows every type name its rule accepts) and the
    engine's stand-ins: unknown, and no newer release wrote them."""
    assert isinstance(old := registry.decode("DecisionAdded", 0, b""), UnknownEvent)
    assert old.newer_release == ""
    assert isinstance(bad := registry.decode("Step-Done", 1, b""), UnknownEvent)
    assert bad.newer_release == ""
    import re

    from google.protobuf import wrappers_pb2

    fallback = EventRegistry(
        fallback=wrappers_pb2.StringValue, event_types=re.compile(r"[a-z_]{1,64}")
    )
    assert isinstance(fallback.decode("any_type", 99, b""), wrappers_pb2.StringValue)
    assert isinstance(nameless := fallback.decode("Step-Done", 1, b""), UnknownEvent)
    assert nameless.newer_release == ""
    assert UnknownEvent("Skipped", 0, b"", "discarded dead letter").newer_release == ""


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
