"""Provider details the fixtures did not carry, kept on the normalized event instead of
dropped: Discord forwards (``message_snapshots``) and embed-only messages; WhatsApp Cloud
referrals, orders, the kind behind ``unsupported`` and a receipt's pricing, conversation
expiry and ``biz_opaque_callback_data``; Evolution status updates and broadcasts by the
member who posted or read them. Payloads written from Meta's messages webhook
reference and Discord's message object reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource.domains.omni.normalize import Malformed, Unrecognised, normalize

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
META = {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}


def one(provider: str, body: dict[str, Any]) -> pb.NormalizedEvent:
    events = normalize(provider, "acme", body, NOW, "raw-1")
    assert len(events) == 1, events
    return events[0]


def cloud(value: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": META, **value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}],
    }


def cloud_message(kind: str, **fields: Any) -> dict[str, Any]:
    msg = {"from": "16505551234", "id": f"wamid.{kind}", "timestamp": "1796047200", "type": kind}
    return cloud({"messages": [{**msg, **fields}]})


def gateway(**d: Any) -> dict[str, Any]:
    message = {
        "id": "1300000000000000001",
        "channel_id": "200",
        "guild_id": "300",
        "author": {"id": "111", "username": "alice"},
        "content": "",
        "timestamp": "2026-11-30T14:00:00.000000+00:00",
        "type": 0,
        "attachments": [],
        "embeds": [],
        "mentions": [],
    }
    return {"op": 0, "t": "MESSAGE_CREATE", "s": 5, "d": {**message, **d}}


def test_discord_forward_carries_the_forwarded_content_and_where_it_came_from() -> None:
    e = one(
        "discord",
        gateway(
            message_reference={
                "type": 1,
                "message_id": "1299",
                "channel_id": "201",
                "guild_id": "300",
            },
            message_snapshots=[
                {
                    "message": {
                        "type": 0,
                        "content": "the release is out",
                        "timestamp": "2026-11-29T10:00:00+00:00",
                        "attachments": [
                            {
                                "id": "9",
                                "filename": "notes.png",
                                "content_type": "image/png",
                                "size": 10,
                                "url": "https://cdn.discordapp.com/x/notes.png",
                            }
                        ],
                        "embeds": [],
                    }
                }
            ],
        ),
    )
    assert e.metadata.forwarded
    assert e.content_type == pb.CONTENT_TYPE_IMAGE
    assert e.content_text == "the release is out notes.png"
    assert [m.media_id for m in e.metadata.media] == ["9"]
    assert e.content_media_url == "https://cdn.discordapp.com/x/notes.png"
    extra = e.metadata.extra
    assert (extra["forwarded_message_id"], extra["forwarded_channel_id"]) == ("1299", "201")
    assert not e.metadata.quoted.message_id  # a forward is no reply


def test_discord_message_of_embeds_only_is_searchable_by_their_words() -> None:
    embed = {
        "title": "Build failed",
        "description": "job 42",
        "fields": [{"name": "branch", "value": "main"}],
    }
    e = one("discord", gateway(embeds=[embed]))
    assert e.content_type == pb.CONTENT_TYPE_OTHER
    assert e.content_text == "Build failed job 42 branch main"
    # beside content an embed is a link's preview: the content alone is the text
    e = one("discord", gateway(content="see https://x.example", embeds=[embed]))
    assert e.content_text == "see https://x.example"


def test_cloud_unsupported_names_the_kind_whatsapp_could_not_deliver() -> None:
    error = {
        "code": 131051,
        "title": "Message type unknown",
        "message": "Message type unknown",
        "error_data": {"details": "Message type is currently not supported."},
    }
    e = one("whatsapp", cloud_message("unsupported", unsupported={"type": "poll"}, errors=[error]))
    assert e.content_type == pb.CONTENT_TYPE_OTHER
    assert e.metadata.extra["type"] == "unsupported"
    assert e.metadata.extra["unsupported_type"] == "poll"
    assert e.metadata.extra["error_0"] == "131051 Message type unknown"
    assert e.metadata.extra["error_0_details"] == "Message type is currently not supported."


def test_cloud_referral_and_order_are_kept_in_extra() -> None:
    referral = {
        "source_url": "https://fb.me/ad",
        "source_id": "120",
        "source_type": "ad",
        "headline": "Winter sale",
        "body": "Half off",
        "media_type": "image",
        "ctwa_clid": "ARA-clid",
        "welcome_message": {"text": "Hi there"},
    }
    e = one("whatsapp", cloud_message("text", text={"body": "Is it on?"}, referral=referral))
    assert e.content_text == "Is it on?"
    extra = e.metadata.extra
    assert extra["referral_source_url"] == "https://fb.me/ad"
    assert extra["referral_source_type"] == "ad"
    assert extra["referral_ctwa_clid"] == "ARA-clid"
    assert extra["referral_headline"] == "Winter sale"
    assert extra["referral_welcome_message"] == "Hi there"

    order = {
        "catalog_id": "cat-1",
        "text": "two please",
        "product_items": [
            {"product_retailer_id": "sku-1", "quantity": 2, "item_price": 9.5, "currency": "USD"}
        ],
    }
    e = one("whatsapp", cloud_message("order", order=order))
    assert e.content_type == pb.CONTENT_TYPE_OTHER
    assert e.content_text == "two please"
    extra = e.metadata.extra
    assert (extra["order_catalog_id"], extra["order_items"]) == ("cat-1", "1")
    assert extra["order_item_0_product_retailer_id"] == "sku-1"
    assert (extra["order_item_0_quantity"], extra["order_item_0_item_price"]) == ("2", "9.5")


def test_cloud_receipt_keeps_pricing_conversation_expiry_and_callback_data() -> None:
    status = {
        "id": "wamid.S",
        "status": "delivered",
        "timestamp": "1796047200",
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "order-77",
        "conversation": {
            "id": "conv-1",
            "expiration_timestamp": "1796133600",
            "origin": {"type": "marketing"},
        },
        "pricing": {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "x"},
    }
    e = one("whatsapp", cloud({"statuses": [status]}))
    receipt = e.metadata.receipt
    assert (receipt.provider_conversation_id, receipt.conversation_category) == (
        "conv-1",
        "marketing",
    )
    extra = e.metadata.extra
    assert extra["biz_opaque_callback_data"] == "order-77"
    assert extra["conversation_expiration_timestamp"] == "1796133600"
    assert (extra["pricing_billable"], extra["pricing_pricing_model"]) == ("true", "PMP")
    assert (extra["pricing_type"], extra["pricing_category"]) == ("regular", "x")


def evolution(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": event,
        "instance": "acme-evo",
        "sender": "5511987650000@s.whatsapp.net",
        "date_time": "2026-11-30T14:00:00.000Z",
        "data": data,
    }


def test_evolution_status_update_is_from_its_poster_not_from_status_broadcast() -> None:
    """A status update (Baileys' ``status@broadcast`` chat) names its poster in the key's
    ``participant``, as a group message names its author."""
    data = {
        "key": {
            "remoteJid": "status@broadcast",
            "fromMe": False,
            "id": "3EB0STATUS1",
            "participant": "5511912345678@s.whatsapp.net",
        },
        "pushName": "Ana",
        "message": {"conversation": "at the beach"},
        "messageType": "conversation",
        "messageTimestamp": 1796047300,
    }
    e = one("whatsapp", evolution("messages.upsert", data))
    assert (e.sender_handle, e.conversation_id) == ("5511912345678", "status@broadcast")
    assert e.recipient_handle == "5511987650000"


def test_evolution_views_of_a_status_or_broadcast_are_one_receipt_per_member() -> None:
    """Two contacts viewing the business's own status (or reading a broadcast list's
    message): two receipts, not the second taken for a re-delivery of the first."""
    for chat in ("status@broadcast", "1796047300@broadcast"):
        ids = []
        for member in ("5511911111111", "5511922222222"):
            data = {
                "keyId": "3EB0MYSTATUS",
                "remoteJid": chat,
                "fromMe": True,
                "participant": f"{member}@s.whatsapp.net",
                "status": "READ",
            }
            e = one("whatsapp", evolution("messages.update", data))
            assert e.recipient_handle == member, chat
            ids.append(e.id)
        assert len(set(ids)) == 2, chat


def test_cloud_user_known_only_by_business_scoped_id_is_a_sender_and_a_recipient() -> None:
    """Meta's usernames (2026): a user who adopted one and hides their number comes with
    ``from_user_id`` (``contacts[].user_id``) and no ``from``; receipts of messages to
    them with ``recipient_user_id``. Both were 422 naming ``from`` / ``recipient_id``."""
    bsuid = "US.13491208655302741918"
    contacts = [{"profile": {"name": "Bob", "username": "@bob"}, "user_id": bsuid}]
    msg = {"from_user_id": bsuid, "id": "wamid.U1", "timestamp": "1796047200", "type": "text"}
    e = one(
        "whatsapp", cloud({"contacts": contacts, "messages": [{**msg, "text": {"body": "hi"}}]})
    )
    assert (e.sender_handle, e.conversation_id, e.sender_name) == (bsuid, bsuid, "Bob")
    assert e.content_text == "hi"

    # with the number beside it, the number stays the handle (as before, and as on
    # Evolution) and the id is kept
    both = {**msg, "from": "16505551234", "text": {"body": "hi"}}
    e = one("whatsapp", cloud({"messages": [both]}))
    assert e.sender_handle == "16505551234"
    assert e.metadata.extra["from_user_id"] == bsuid

    status = {
        "id": "wamid.S",
        "status": "read",
        "timestamp": "1796047200",
        "recipient_user_id": bsuid,
    }
    e = one("whatsapp", cloud({"statuses": [status]}))
    assert (e.recipient_handle, e.conversation_id) == (bsuid, bsuid)

    echo = {"to_user_id": bsuid, "id": "wamid.E", "timestamp": "1796047200", "type": "text"}
    body = cloud({"message_echoes": [{**echo, "text": {"body": "hello"}}]})
    body["entry"][0]["changes"][0]["field"] = "smb_message_echoes"
    e = one("whatsapp", body)
    assert (e.direction, e.recipient_handle) == (pb.DIRECTION_OUTBOUND, bsuid)


def test_cloud_message_with_neither_number_nor_user_id_names_from() -> None:
    msg = {"id": "wamid.N", "timestamp": "1796047200", "type": "text", "text": {"body": "x"}}
    with pytest.raises(Malformed) as refused:
        normalize("whatsapp", "acme", cloud({"messages": [msg]}), NOW, "raw-1")
    assert refused.value.field == "entry[0].changes[0].value.messages[0].from"


def interaction(data: dict[str, Any]) -> pb.NormalizedEvent:
    body = {
        "id": "1313571290521210883",
        "application_id": "1309958214380990464",
        "type": 2,
        "token": "tok",
        "channel_id": "1313570000000000100",
        "guild_id": "1002",
        "member": {"user": {"id": "80351110224678912", "username": "nelly"}},
        "data": data,
    }
    events = normalize("discord", "acme-app", body, NOW, "raw-1", "interactions")
    assert len(events) == 1, events
    return events[0]


def test_discord_message_command_quotes_the_message_it_was_run_on() -> None:
    target = "1313571000000000000"
    message = {"id": target, "content": "remember this", "author": {"id": "539082"}}
    e = interaction(
        {
            "id": "1309961102276677635",
            "name": "Save message",
            "type": 3,
            "target_id": target,
            "resolved": {"messages": {target: message}},
        }
    )
    quoted = e.metadata.quoted
    assert (quoted.message_id, quoted.sender_handle, quoted.text) == (
        target,
        "539082",
        "remember this",
    )


def test_discord_command_attachment_option_keeps_the_file() -> None:
    attachment = {
        "id": "1313000000000000001",
        "filename": "invoice.pdf",
        "content_type": "application/pdf",
        "size": 2048,
        "url": "https://cdn.discordapp.com/ephemeral-attachments/1/invoice.pdf",
    }
    e = interaction(
        {
            "id": "1309961102276677632",
            "name": "upload",
            "type": 1,
            "options": [{"name": "file", "type": 11, "value": attachment["id"]}],
            "resolved": {"attachments": {attachment["id"]: attachment}},
        }
    )
    assert e.content_text == f"/upload file:{attachment['id']}"
    [m] = e.metadata.media
    assert (m.media_id, m.file_name, m.mime_type, m.size_bytes) == (
        attachment["id"],
        "invoice.pdf",
        "application/pdf",
        2048,
    )
    assert e.content_media_url == attachment["url"]


def test_evolution_on_baileys_6_7_keeps_the_phone_number_of_a_lid_addressed_person() -> None:
    """Baileys 6.7 (Evolution 2.2 to 2.3) gives the phone JID beside a LID as ``senderPn``
    / ``participantPn`` where Baileys 7 says ``remoteJidAlt`` / ``participantAlt``: the
    person is their number either way (a LID handle was another identity)."""
    base = {
        "pushName": "Ana",
        "message": {"conversation": "oi"},
        "messageType": "conversation",
        "messageTimestamp": 1796047300,
    }
    direct = {
        "remoteJid": "190000000000001@lid",
        "senderPn": "5511912345678@s.whatsapp.net",
        "fromMe": False,
        "id": "3EB0LID1",
    }
    e = one("whatsapp", evolution("messages.upsert", {**base, "key": direct}))
    assert (e.sender_handle, e.conversation_id) == ("5511912345678", "5511912345678")
    assert e.metadata.extra["remoteJid_lid"] == "190000000000001@lid"

    group = {
        "remoteJid": "120363000000000001@g.us",
        "participant": "190000000000001@lid",
        "participantPn": "5511912345678@s.whatsapp.net",
        "fromMe": False,
        "id": "3EB0LID2",
    }
    e = one("whatsapp", evolution("messages.upsert", {**base, "key": group}))
    assert (e.sender_handle, e.conversation_id) == ("5511912345678", "120363000000000001@g.us")

    receipt = {**group, "fromMe": True, "keyId": "3EB0LID2", "status": "READ"}
    del receipt["id"]
    e = one("whatsapp", evolution("messages.update", receipt))
    assert e.recipient_handle == "5511912345678"


def test_cloud_product_inquiry_and_a_newer_interactive_reply_keep_their_fields() -> None:
    product = {"catalog_id": "cat-1", "product_retailer_id": "sku-9"}
    e = one(
        "whatsapp",
        cloud_message("text", text={"body": "in blue?"}, context={"referred_product": product}),
    )
    assert e.metadata.extra["referred_product_catalog_id"] == "cat-1"
    assert e.metadata.extra["referred_product_product_retailer_id"] == "sku-9"

    reply = {"response": "accept", "is_permanent": False, "expiration_timestamp": 1796133600}
    e = one(
        "whatsapp",
        cloud_message(
            "interactive",
            interactive={"type": "call_permission_reply", "call_permission_reply": reply},
        ),
    )
    extra = e.metadata.extra
    assert extra["interactive_type"] == "call_permission_reply"
    assert extra["call_permission_reply_response"] == "accept"
    assert extra["call_permission_reply_is_permanent"] == "false"
    assert extra["call_permission_reply_expiration_timestamp"] == "1796133600"


def test_evolution_update_without_a_delivery_status_is_no_deleted_receipt() -> None:
    """Evolution sends a change of a message that is no receipt (an edit, a star) as
    messages.update with status DELETED (no status in 2025's earlier releases); a
    deletion is messages.delete. It was a receipt "deleted" (or 422 naming status)."""
    key = {"keyId": "3EB0STAR", "remoteJid": "5511912345678@s.whatsapp.net", "fromMe": False}
    ids = set()
    for extra in ({"status": "DELETED"}, {}):
        e = one("whatsapp", evolution("messages.update", {**key, **extra}))
        assert e.event_type == pb.EVENT_TYPE_PROTOCOL
        assert e.metadata.protocol.kind == "message_update"
        assert e.metadata.extra["target_message_id"] == "3EB0STAR"
        assert not e.metadata.HasField("receipt")
        ids.add(e.id)
    assert len(ids) == 2
    # a delivery status is still a receipt
    e = one("whatsapp", evolution("messages.update", {**key, "status": "READ"}))
    assert e.metadata.receipt.status == pb.RECEIPT_STATUS_READ


def test_cloud_contact_shared_without_a_name_is_kept() -> None:
    """Meta omits the contact properties a user does not share, ``name`` among them; a
    REQUEST_CONTACT_INFO answer is a vcard and phones (``origin`` contact_request)."""
    vcard = "BEGIN:VCARD\\nVERSION:3.0\\nTEL;type=CELL:+1 650 555 1234\\nEND:VCARD"
    shared = {"vcard": vcard, "phones": [{"phone": "+1 650 555 1234"}]}
    e = one(
        "whatsapp",
        cloud_message("contacts", contacts=[shared], origin="contact_request/other"),
    )
    assert e.content_type == pb.CONTENT_TYPE_CONTACT
    [c] = e.metadata.contacts
    assert (c.formatted_name, c.vcard, c.phones[0].phone) == ("", vcard, "+1 650 555 1234")
    assert e.content_text == "+1 650 555 1234"
    assert e.metadata.extra["origin"] == "contact_request/other"


def test_evolution_upsert_of_only_a_sender_key_distribution_is_unrecognised() -> None:
    """Baileys emits a group member's sender key distribution with no content; Evolution
    forwards it (messageType "unknown"). A well-formed body of nothing to normalize: 200
    unrecognised, not 422 "message has no content"; beside a real message it is skipped."""
    distribution = {
        "key": {"remoteJid": "120363000000000001@g.us", "fromMe": False, "id": "3EB0SKD"},
        "message": {
            "senderKeyDistributionMessage": {"groupId": "120363000000000001@g.us"},
            "messageContextInfo": {"deviceListMetadataVersion": 2},
        },
        "messageType": "unknown",
        "messageTimestamp": 1796047300,
    }
    with pytest.raises(Unrecognised):
        normalize("whatsapp", "acme", evolution("messages.upsert", distribution), NOW, "r")
    text = {
        "key": {"remoteJid": "5511912345678@s.whatsapp.net", "fromMe": False, "id": "3EB0TXT"},
        "message": {"conversation": "oi"},
        "messageType": "conversation",
        "messageTimestamp": 1796047300,
    }
    both = evolution("messages.upsert", [distribution, text])  # type: ignore[arg-type]
    [e] = normalize("whatsapp", "acme", both, NOW, "r")
    assert e.provider_event_id == "3EB0TXT"


def test_cloud_receipt_with_empty_callback_data_is_kept() -> None:
    """``biz_opaque_callback_data`` is an extra: an empty one is left out, not 422 (a
    receipt refused is lost after Meta's retries)."""
    status = {
        "id": "wamid.S",
        "status": "read",
        "timestamp": "1796047200",
        "recipient_id": "16505551234",
        "biz_opaque_callback_data": "",
    }
    e = one("whatsapp", cloud({"statuses": [status]}))
    assert e.metadata.receipt.target_message_id == "wamid.S"
    assert "biz_opaque_callback_data" not in e.metadata.extra


@pytest.mark.parametrize("event", ["messages.update", "messages.delete", "presence.update"])
def test_evolution_empty_data_of_other_events_is_not_called_a_sender_key(event: str) -> None:
    """Only an upsert of no message content (a sender key distribution) is Unrecognised
    saying so; another event whose ``data`` is an empty array normalizes to nothing, as
    before, not to that misleading reason."""
    assert normalize("whatsapp", "acme", evolution(event, []), NOW, "r") == []  # type: ignore[arg-type]
