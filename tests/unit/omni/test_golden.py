"""Every fixture normalizes to its checked-in golden output, and the fixture index (which the
ingress's end-to-end replay reads) says what today's normalizers do."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource.domains.omni.normalize import Malformed, Unrecognised, event_id, normalize
from tests.fixtures.omni import FIXTURES, INDEX, Fixture, build, index_rows, render

NORMALIZED = [f for f in FIXTURES if f.outcome == "normalized"]


def _id(f: Fixture) -> str:
    return f.path


def test_index_lists_every_fixture_with_todays_outcome() -> None:
    assert json.loads(INDEX.read_text()) == index_rows(build())
    assert len(NORMALIZED) >= 70


@pytest.mark.parametrize("fixture", NORMALIZED, ids=_id)
def test_normalizes_to_golden(fixture: Fixture) -> None:
    events = fixture.normalize()
    assert render(events) == json.loads(fixture.golden.read_text())
    assert [(e.provider_event_id, pb.EventType.Name(e.event_type)) for e in events] == [
        tuple(p) for p in fixture.events
    ]


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.outcome != "normalized"], ids=_id)
def test_not_normalized_fixtures_fail_as_indexed(fixture: Fixture) -> None:
    if fixture.outcome == "unrecognised":
        with pytest.raises(Unrecognised) as unrecognised:
            fixture.normalize()
        assert unrecognised.value.reason
    else:
        with pytest.raises(Malformed) as malformed:
            fixture.normalize()
        assert malformed.value.field == fixture.malformed_field
        assert fixture.malformed_field in str(malformed.value)


def test_each_format_covers_every_kind_the_issue_names() -> None:
    """Message kinds, receipts and presence per wire format, as far as the provider has them
    (WhatsApp Cloud has no polls or presence webhooks; Discord has no locations, contacts or
    delivery receipts)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for f in NORMALIZED:
        for e in f.normalize():
            kinds = seen[e.provider_format]
            kinds.add(pb.EventType.Name(e.event_type))
            kinds.add(pb.ContentType.Name(e.content_type))
            if e.metadata.HasField("receipt"):
                kinds.add(pb.ReceiptStatus.Name(e.metadata.receipt.status))
            if any(m.voice for m in e.metadata.media):
                kinds.add("VOICE")
    common = {
        "EVENT_TYPE_MESSAGE",
        "EVENT_TYPE_REACTION",
        "EVENT_TYPE_EDIT",
        "EVENT_TYPE_DELETE",
        "CONTENT_TYPE_TEXT",
        "CONTENT_TYPE_IMAGE",
        "CONTENT_TYPE_AUDIO",
        "CONTENT_TYPE_VIDEO",
        "CONTENT_TYPE_DOCUMENT",
        "CONTENT_TYPE_STICKER",
        "VOICE",
    }
    receipts = {
        "EVENT_TYPE_STATUS",
        "RECEIPT_STATUS_SENT",
        "RECEIPT_STATUS_DELIVERED",
        "RECEIPT_STATUS_READ",
        "RECEIPT_STATUS_FAILED",
    }
    assert seen["whatsapp_cloud"] >= common | receipts | {
        "CONTENT_TYPE_LOCATION",
        "CONTENT_TYPE_CONTACT",
        "CONTENT_TYPE_INTERACTIVE",
        "EVENT_TYPE_SYSTEM",
    }
    assert seen["evolution"] >= common | receipts | {
        "CONTENT_TYPE_LOCATION",
        "CONTENT_TYPE_CONTACT",
        "CONTENT_TYPE_POLL",
        "CONTENT_TYPE_POLL_VOTE",
        "EVENT_TYPE_PROTOCOL",
        "EVENT_TYPE_PRESENCE",
        "RECEIPT_STATUS_PLAYED",
    }
    assert seen["discord_gateway"] >= common | {
        "CONTENT_TYPE_POLL",
        "CONTENT_TYPE_POLL_VOTE",
        "EVENT_TYPE_PROTOCOL",
        "EVENT_TYPE_PRESENCE",
        "EVENT_TYPE_SYSTEM",
    }


def test_redelivery_keeps_ids_and_instances_do_not_share_them() -> None:
    later = datetime(2027, 1, 1, tzinfo=UTC)
    for f in NORMALIZED:
        first = f.normalize()
        again = normalize(f.provider, f.instance, f.body(), later, "another-ref")
        assert [e.id for e in again] == [e.id for e in first]
        assert all(
            e.raw_ref == "another-ref" and e.received_at.ToDatetime(UTC) == later for e in again
        )
        other = normalize(f.provider, f.instance + "-2", f.body(), later, "r")
        assert not {e.id for e in other} & {e.id for e in first}
        assert [e.id for e in first] == [
            event_id(f.provider, f.instance, e.provider_event_id) for e in first
        ]


def test_event_id_is_uuid5_of_provider_instance_and_provider_event_id() -> None:
    # Pinned: stored events keep these ids forever, so the derivation must never change.
    assert event_id("whatsapp", "acme-cloud", "wamid.X") == "dafd907a-15af-583f-ad0e-20dbdf4073b5"
    namespace = uuid.UUID("6f6d6e69-0000-4000-8000-6a6574737263")
    assert event_id("discord", "bot", "1:delete") == str(
        uuid.uuid5(namespace, '["discord","bot","1:delete"]')
    )
    # The separator keeps ("a", "b:c") and ("a:b", "c") apart.
    assert event_id("whatsapp", "a", "b\x1fc") != event_id("whatsapp", "a\x1fb", "c")


def test_provider_events_are_distinct_across_fixtures() -> None:
    """Each fixture is its own provider event (the end-to-end replay counts on it): no two
    normalized events of one instance share a provider_event_id."""
    counts = Counter((f.instance, pid) for f in NORMALIZED for pid, _ in f.events)
    assert [k for k, n in counts.items() if n > 1] == []


def test_identity_fields_are_left_for_the_ingress() -> None:
    for f in NORMALIZED:
        for e in f.normalize():
            assert e.sender_identity_id == e.recipient_identity_id == ""
            assert e.instance_name == f.instance and e.provider == f.provider
