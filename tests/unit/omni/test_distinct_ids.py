"""Distinct provider events get distinct ids; a re-delivery keeps its id. Ids are the
dedupe key for ever (the stream refuses a second event on an id), so two events that
shared one lost the second: each group member's receipt of one message (Cloud API
and Evolution API) and the same account error reported for two numbers of one
account."""

from __future__ import annotations

import copy
from typing import Any

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource.domains.omni.normalize import normalize
from tests.fixtures.omni import FIXTURES, RECEIVED_AT

BY_PATH = {f.path: f for f in FIXTURES}


def events(path: str, body: Any) -> list[pb.NormalizedEvent]:
    f = BY_PATH[path]
    return normalize(f.provider, f.instance, body, RECEIVED_AT, "r")


def test_each_members_receipt_of_a_cloud_group_message_is_its_own_event() -> None:
    path = "whatsapp/cloud/group_status_read.json"
    body = BY_PATH[path].body()
    statuses = body["entry"][0]["changes"][0]["value"]["statuses"]
    other = copy.deepcopy(statuses[0])
    other["recipient_participant_id"] = "16505550000"
    statuses.append(other)
    first, second = events(path, body)
    assert first.id != second.id
    assert {first.recipient_handle, second.recipient_handle} == {"16505559876", "16505550000"}
    assert first.metadata.receipt.target_message_id == second.metadata.receipt.target_message_id
    # A re-delivery of the body keeps both ids.
    assert [e.id for e in events(path, body)] == [first.id, second.id]


def test_each_members_receipt_of_an_evolution_group_message_is_its_own_event() -> None:
    path = "whatsapp/evolution/status_read.json"
    ids = []
    for member in ("5521998887777@s.whatsapp.net", "5511912345678@s.whatsapp.net"):
        body = BY_PATH[path].body()
        body["data"].update(remoteJid="120363041967849074@g.us", participant=member)
        (e,) = events(path, body)
        assert e.recipient_handle == member.split("@")[0]
        assert e.conversation_id == "120363041967849074@g.us"
        ids.append(e.id)
        (again,) = events(path, body)
        assert again.id == e.id
    assert ids[0] != ids[1]
    # A one-to-one receipt keeps the id it always had: <message id>:<status>.
    (plain,) = events(path, BY_PATH[path].body())
    assert plain.provider_event_id == "3EB0B8D7E1A2C3F4A5B6:READ"


def test_one_account_error_for_two_numbers_is_two_events() -> None:
    path = "whatsapp/cloud/account_error.json"
    body = BY_PATH[path].body()
    changes = body["entry"][0]["changes"]
    other = copy.deepcopy(changes[0])
    other["value"]["metadata"].update(
        display_phone_number="15550009999", phone_number_id="106540352240000"
    )
    changes.append(other)
    first, second = events(path, body)
    assert first.id != second.id
    assert (first.recipient_handle, second.recipient_handle) == ("15550783881", "15550009999")


def test_an_unknown_status_holding_a_colon_is_not_another_members_receipt() -> None:
    """Ids join their parts with ':': a group receipt of no member and status
    'read:4915100000001' had the id of member 4915100000001's 'read' (the second
    stored was taken for a re-delivery and lost). Each keeps an id of its own, a
    re-delivery the same one, and the status is kept as it came."""
    path = "whatsapp/cloud/group_status_read.json"
    ids = []
    for status, member in (("read", "4915100000001"), ("read:4915100000001", None)):
        body = BY_PATH[path].body()
        s = body["entry"][0]["changes"][0]["value"]["statuses"][0]
        s["status"] = status
        if member:
            s["recipient_participant_id"] = member
        else:
            s.pop("recipient_participant_id", None)
        (e,) = [e for e in events(path, body) if e.event_type == pb.EVENT_TYPE_STATUS]
        assert [x.id for x in events(path, body) if x.event_type] == [e.id]
        ids.append(e.id)
    assert ids[0] != ids[1]
    assert e.metadata.extra["status"] == "read:4915100000001"

    path = "whatsapp/evolution/status_read.json"
    ids = []
    for status, jid, member in (
        ("READ", "120363041967849074@g.us", "5521998887777@s.whatsapp.net"),
        ("READ:5521998887777", "5521998887777@s.whatsapp.net", None),
        ("Warning%", "5521998887777@s.whatsapp.net", None),
        ("Warning%25", "5521998887777@s.whatsapp.net", None),
    ):
        body = BY_PATH[path].body()
        body["data"].update(remoteJid=jid, status=status)
        if member:
            body["data"]["participant"] = member
        (e,) = events(path, body)
        ids.append(e.id)
        assert e.metadata.extra["status"] == status  # not upper-cased
    assert len(set(ids)) == len(ids)
