"""Who holds a handle (identity_rules) and the bucket entry's order, without servers."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import Message

from jetsource._gen.eventstore.v1.envelope_pb2 import EventEnvelope
from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked, IdentitiesMerged
from jetsource.core.envelope import RecordedEvent
from jetsource.core.errors import ValidationError
from jetsource.domains.omni.events import first_contact_identity
from jetsource.domains.omni.identity import (
    ASSIGNMENT_KIND,
    ASSIGNMENT_SEQ,
    IdentityService,
    entry_value,
    parse_entry,
)
from jetsource.domains.omni.identity_rules import (
    assignment_order,
    assignments,
    is_first_contact,
)
from jetsource.domains.omni.settings import OmniOptions

HANDLE = ("whatsapp", "4915100000001")
FIRST = first_contact_identity(*HANDLE)
ADMIN = "idn-01a2447316a97000bbd9b70ca8"


def recorded(aggregate_id: str, event: Message, seq: int) -> RecordedEvent:
    return RecordedEvent(EventEnvelope(aggregate_id=aggregate_id), event, seq, 0)


def link(identity: str, by: str) -> ExternalIdLinked:
    return ExternalIdLinked(
        identity_id=identity, provider=HANDLE[0], external_id=HANDLE[1], linked_by=by
    )


def test_a_first_contact_has_order_0_and_every_explicit_assignment_its_sequence() -> None:
    automatic = recorded(FIRST, link(FIRST, "first_contact"), 40)
    assert is_first_contact(automatic) and assignment_order(automatic) == 0
    assert assignments(automatic) == [(*HANDLE, FIRST)]
    # an admin's link, to the first contact's identity or another, by any actor name
    for identity, by in ((FIRST, "ops"), (ADMIN, "first_contact"), (ADMIN, "ops")):
        explicit = recorded(identity, link(identity, by), 30)
        assert not is_first_contact(explicit) and assignment_order(explicit) == 30


def test_a_merge_assigns_to_the_identity_keeping_its_record() -> None:
    merged = "idn-01a2447316a37000842140000a"
    survivor = "idn-01a2447316a37000842140000b"
    event = IdentitiesMerged(survivor_id=survivor, merged_id=merged, handles=["discord:42"])
    assert assignments(recorded(merged, event, 9)) == []
    assert assignments(recorded(survivor, event, 10)) == [("discord", "42", survivor)]
    # forwarded to the end of the survivor's chain: the receiving identity holds them
    assert assignments(recorded(ADMIN, event, 11)) == [("discord", "42", ADMIN)]


def test_a_first_contact_entry_keeps_its_sequence_and_reads_as_order_0() -> None:
    value, headers = entry_value(FIRST, 0, 40)
    assert value == FIRST.encode() and headers[ASSIGNMENT_SEQ] == "40"
    assert parse_entry(value, headers) == (FIRST, 0)
    value, headers = entry_value(ADMIN, 30)
    assert ASSIGNMENT_KIND not in headers and parse_entry(value, headers) == (ADMIN, 30)
    assert parse_entry(ADMIN.encode(), {}) == (ADMIN, 0)  # the previous release's entry


async def test_the_first_contact_mark_is_refused_as_an_admin_actor() -> None:
    none: Any = None
    ids = IdentityService(none, none, OmniOptions())
    with pytest.raises(ValidationError) as refused:
        await ids.link(ADMIN, *HANDLE, actor="first_contact")
    assert refused.value.field == "actor"
