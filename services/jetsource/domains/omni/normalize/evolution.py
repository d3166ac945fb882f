"""Evolution API webhooks (Baileys-based WhatsApp): ``{"event": "messages.upsert", "instance":
..., "data": {...}, "date_time": ..., "sender": <the instance's own JID>, ...}``.

Events normalized: ``messages.upsert`` and ``send.message`` (messages in and out, reactions,
polls, protocol messages), ``messages.edited`` / ``send.message.update`` (edits and revokes),
``messages.update`` (receipts, decrypted poll votes), ``messages.delete`` and
``presence.update``. Upper-case names (``MESSAGES_UPSERT``) are accepted as well. Other events
(connection, contacts, chats, groups, ...) are ``Unrecognised``.

JIDs become handles without their server part for people (``5511999990000@s.whatsapp.net`` ->
``5511999990000``, so they meet the WhatsApp Cloud API's ``wa_id`` for the same number); group
and LID JIDs are kept whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import (
    Context,
    Node,
    as_int,
    check_handle,
    digest,
    id_part,
    iso_time,
    provider_kind,
    unix_millis,
)
from jetsource.domains.omni.normalize.errors import Malformed, Unrecognised, listed, quoted

FORMAT = "evolution"

_MEDIA = {
    "imageMessage": pb.CONTENT_TYPE_IMAGE,
    "videoMessage": pb.CONTENT_TYPE_VIDEO,
    "ptvMessage": pb.CONTENT_TYPE_VIDEO,
    "audioMessage": pb.CONTENT_TYPE_AUDIO,
    "documentMessage": pb.CONTENT_TYPE_DOCUMENT,
    "stickerMessage": pb.CONTENT_TYPE_STICKER,
}
# Wrappers whose inner ``message`` is the real content.
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "documentWithCaptionMessage",
    "editedMessage",
)
# Keys beside the content in a Baileys message (and what Evolution adds to it).
_NOT_CONTENT = frozenset(
    {"messageContextInfo", "senderKeyDistributionMessage", "mediaUrl", "base64", "speechToText"}
)
_POLLS = ("pollCreationMessage", "pollCreationMessageV2", "pollCreationMessageV3")
# Baileys' WebMessageInfo status names (src/utils/renderStatus.ts) and their numbers.
_RECEIPTS = {
    "ERROR": pb.RECEIPT_STATUS_FAILED,
    "PENDING": pb.RECEIPT_STATUS_PENDING,
    "SERVER_ACK": pb.RECEIPT_STATUS_SENT,
    "DELIVERY_ACK": pb.RECEIPT_STATUS_DELIVERED,
    "READ": pb.RECEIPT_STATUS_READ,
    "PLAYED": pb.RECEIPT_STATUS_PLAYED,
}
_RECEIPT_NUMBERS = ["ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED"]
# proto.Message.ProtocolMessage.Type, by number, for payloads that keep enums numeric.
_PROTOCOL_TYPES = {
    0: "REVOKE",
    3: "EPHEMERAL_SETTING",
    4: "EPHEMERAL_SYNC_RESPONSE",
    5: "HISTORY_SYNC_NOTIFICATION",
    6: "APP_STATE_SYNC_KEY_SHARE",
    7: "APP_STATE_SYNC_KEY_REQUEST",
    8: "MSG_FANOUT_BACKFILL_REQUEST",
    9: "INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC",
    10: "APP_STATE_FATAL_EXCEPTION_NOTIFICATION",
    11: "SHARE_PHONE_NUMBER",
    14: "MESSAGE_EDIT",
    16: "PEER_DATA_OPERATION_REQUEST_MESSAGE",
    17: "PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE",
}
_PRESENCE = {
    "available": pb.PRESENCE_STATUS_ONLINE,
    "unavailable": pb.PRESENCE_STATUS_OFFLINE,
    "composing": pb.PRESENCE_STATUS_TYPING,
    "recording": pb.PRESENCE_STATUS_RECORDING,
    "paused": pb.PRESENCE_STATUS_PAUSED,
}


def matches(body: Mapping[str, Any]) -> bool:
    return isinstance(body.get("event"), str) and "data" in body


def event_name(raw: str) -> str:
    """``MESSAGES_UPSERT`` and ``messages.upsert`` name the same event."""
    return raw.strip().lower().replace("_", ".")


def handle(jid: str) -> str:
    """A person's handle from a JID (device suffix and server dropped); groups, LIDs, newsletters
    and broadcast lists keep their whole JID, which is their only stable name, with the server
    in lower case."""
    user, at, server = jid.partition("@")
    # Servers compared as the JID spec does, without case: 1@S.WHATSAPP.NET is 1, and
    # 1@LID is 1@lid (it was a handle and an identity apart from its lower-case twin).
    if server.lower() in ("s.whatsapp.net", "c.us") and user:
        return user.split(":", 1)[0]
    return f"{user}{at}{server.lower()}"


def _is_lid(jid: str) -> bool:
    return jid.lower().endswith("@lid")


def shared_chat(jid: str) -> bool:
    """A chat of many people, whose messages and receipts name the member in the key's
    ``participant``: a group (``@g.us``), or a broadcast (``status@broadcast``, the
    status updates people post; ``<id>@broadcast``, a broadcast list). A status update
    was taken for a message from ``status@broadcast``: every contact's status was one
    sender, and two contacts' views of one's own status one receipt (the second lost)."""
    return jid.lower().endswith(("@g.us", "@broadcast"))


class _Envelope:
    def __init__(self, ctx: Context, root: Node) -> None:
        self.ctx = ctx
        self.root = root
        # An upsert of no message content (a sender key distribution) was skipped: a body
        # of only those is Unrecognised saying so; other events' empty bodies are not.
        self.skipped_no_content = False
        # The kinds of the protocol messages skipped for naming no message (no key).
        self.skipped_keyless: list[str] = []
        own = root.opt_str("sender")
        self.own = check_handle(handle(own), root.at("sender")) if own else ""
        self.sent_at = (
            iso_time(root.raw["date_time"], "date_time") if root.has("date_time") else None
        )

    def event(self, provider_event_id: str) -> NormalizedEvent:
        ev = self.ctx.event(FORMAT, provider_event_id)
        if self.sent_at is not None:
            ev.provider_timestamp.CopyFrom(self.sent_at)
        return ev

    def route(self, ev: NormalizedEvent, key: Node) -> None:
        """Direction, sender, recipient and conversation from a message key."""
        remote = key.req_str("remoteJid")
        group = shared_chat(remote)
        chat = handle(remote) if group else _person(key, "remoteJid", ev)
        ev.conversation_id = ev.channel_id = chat
        if key.opt_bool("fromMe"):
            ev.direction = pb.DIRECTION_OUTBOUND
            ev.sender_handle = self.own
            ev.recipient_handle = "" if group else chat
        else:
            ev.direction = pb.DIRECTION_INBOUND
            if group and key.has("participant"):
                ev.sender_handle = _person(key, "participant", ev)
            else:
                ev.sender_handle = chat
            ev.recipient_handle = self.own


# Where a key gives the phone JID beside a LID: Baileys 7 ``remoteJidAlt`` /
# ``participantAlt``; Baileys 6.7 (Evolution 2.2 to 2.3) ``senderPn`` / ``participantPn``
# (before 2026-12-06 only the first were read, so a group member addressed by LID
# under Baileys 6.7 was an identity apart from the same number's).
_ALTERNATES = {
    "remoteJid": ("remoteJidAlt", "senderPn"),
    "participant": ("participantAlt", "participantPn"),
}


def _person(key: Node, field: str, ev: NormalizedEvent | None) -> str:
    """A person's handle from a key: the phone number where WhatsApp addresses them by LID
    (a privacy id) and Evolution gives the phone JID beside it (``_ALTERNATES``), so that
    the same person keeps one handle; the LID is kept in metadata.extra (of ``ev``, when
    given). A ``field`` that is absent or empty is "" when ``ev`` is None."""
    if ev is None and not key.opt_str(field):
        return ""
    jid = key.req_str(field)
    alt_field = next((a for a in _ALTERNATES[field] if key.opt_str(a)), _ALTERNATES[field][0])
    alt = key.opt_str(alt_field)
    if _is_lid(jid) and alt and not _is_lid(alt):
        if ev is not None:
            ev.metadata.extra[f"{field}_lid"] = jid
        return check_handle(handle(alt), key.at(alt_field))
    if _is_lid(alt) and ev is not None:
        ev.metadata.extra[f"{field}_lid"] = alt
    return check_handle(handle(jid), key.at(field))


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    root = Node(body)
    name = event_name(root.req_str("event"))
    handler = _HANDLERS.get(name)
    if handler is None:
        raise Unrecognised(f"Evolution API event {quoted(root.raw['event'])} is not normalized")
    env = _Envelope(ctx, root)
    out: list[NormalizedEvent] = []
    for item in _items(root):
        out.extend(handler(env, item))
    if not out and env.skipped_no_content:
        raise Unrecognised(
            f"Evolution API event {quoted(root.raw['event'])} carries no message content (only "
            "what Baileys sends beside it: a sender key distribution, context info)"
        )
    if not out and env.skipped_keyless:
        raise Unrecognised(
            f"Evolution API event {quoted(root.raw['event'])} carries only protocol messages "
            f"that name no message or chat (no key): {listed(sorted(set(env.skipped_keyless)))}"
        )
    return out


def _items(root: Node) -> Iterator[Node]:
    """``data`` is one object, or for some events and versions an array of them."""
    data = root.raw.get("data")
    if isinstance(data, list):
        yield from root.objs("data", required=True)
    else:
        yield root.obj("data")


# --- messages.upsert / send.message ---------------------------------------------------------


def _upsert(env: _Envelope, data: Node) -> list[NormalizedEvent]:
    key = data.obj("key")
    msg_id = key.req_str("id")
    message = data.obj("message")
    if message.raw and all(k in _NOT_CONTENT for k in message.raw):
        # Only a group's sender key distribution or context info (Evolution's messageType
        # "unknown"): nothing a person sent. It was 422 "message has no content" (as an
        # empty message still is).
        env.skipped_no_content = True
        return []
    kind, content = _content_of(message, data.opt_str("messageType"))
    ev = env.event(msg_id)
    env.route(ev, key)
    ev.provider_timestamp.CopyFrom(_seconds(data, "messageTimestamp"))
    if ev.direction == pb.DIRECTION_INBOUND:
        ev.sender_name = data.opt_str("pushName")
    ev.event_type = pb.EVENT_TYPE_MESSAGE
    md = ev.metadata
    md.extra["messageType"] = kind
    if data.has("source"):
        md.extra["source"] = data.opt_str("source")
    if kind in ("protocolMessage",):
        return [_protocol(env, ev, content, outer_key=key)]
    _fill_content(ev, kind, content, message)
    ctx_info = data.opt_obj("contextInfo") or (
        content.opt_obj("contextInfo") if isinstance(content, Node) else None
    )
    if ctx_info is not None:
        _context_info(ev, ctx_info)
    return [ev]


def _content_of(message: Node, declared: str) -> tuple[str, Any]:
    """The content key of a Baileys message and its value, through wrapper messages."""
    for _ in range(4):  # wrappers nest at most a couple of levels
        keys = [k for k in message.raw if k not in _NOT_CONTENT]
        kind = declared if declared in message.raw else (keys[0] if keys else "")
        if not kind:
            raise Malformed(message.path, "message has no content")
        if kind in _WRAPPERS:
            inner = message.obj(kind)
            if not inner.has("message"):
                return kind, inner
            message, declared = inner.obj("message"), ""
            continue
        value = message.raw[kind]
        return kind, Node(value, message.at(kind)) if isinstance(value, dict) else value
    raise Malformed(message.path, "message wrappers nest too deep")


def _fill_content(ev: NormalizedEvent, kind: str, content: Any, message: Node) -> None:
    md = ev.metadata
    if kind == "conversation":
        if not isinstance(content, str):
            raise Malformed(message.at(kind), "must be a string")
        ev.content_type = pb.CONTENT_TYPE_TEXT
        ev.content_text = content
        return
    if not isinstance(content, Node):
        raise Malformed(message.at(kind), "must be an object")
    if kind == "extendedTextMessage":
        ev.content_type = pb.CONTENT_TYPE_TEXT
        ev.content_text = content.req_str("text")
    elif kind in _MEDIA:
        ev.content_type = _MEDIA[kind]
        m = md.media.add(
            mime_type=content.opt_str("mimetype"),
            sha256=content.opt_str("fileSha256"),
            file_name=content.opt_str("fileName") or content.opt_str("title"),
            caption=content.opt_str("caption"),
            size_bytes=content.opt_count("fileLength", 64),
            duration_seconds=content.opt_count("seconds"),
            width=content.opt_count("width"),
            height=content.opt_count("height"),
            voice=content.opt_bool("ptt"),
            # Evolution adds mediaUrl when it stores the media (S3/MinIO); the WhatsApp url is
            # encrypted media that needs the mediaKey.
            url=message.opt_str("mediaUrl") or content.opt_str("url"),
            media_id=content.opt_str("directPath"),
        )
        ev.content_media_url = m.url
        ev.content_text = " ".join(p for p in (m.caption, m.file_name) if p)
        if kind == "stickerMessage":
            sticker_id = m.sha256 or m.media_id
            md.sticker_ids.append(sticker_id)
            md.stickers.add(
                sticker_id=sticker_id,
                format=m.mime_type.removeprefix("image/"),
                animated=content.opt_bool("isAnimated"),
            )
    elif kind in ("locationMessage", "liveLocationMessage"):
        ev.content_type = pb.CONTENT_TYPE_LOCATION
        loc = md.location
        loc.latitude = content.coordinate("degreesLatitude", 90)
        loc.longitude = content.coordinate("degreesLongitude", 180)
        loc.name, loc.address = content.opt_str("name"), content.opt_str("address")
        loc.url = content.opt_str("url")
        ev.content_text = " ".join(
            p for p in (loc.name, loc.address, content.opt_str("caption")) if p
        )
    elif kind == "contactMessage":
        ev.content_type = pb.CONTENT_TYPE_CONTACT
        md.contacts.append(_vcard_contact(content))
        ev.content_text = md.contacts[0].formatted_name
    elif kind == "contactsArrayMessage":
        ev.content_type = pb.CONTENT_TYPE_CONTACT
        for c in content.objs("contacts", required=True):
            md.contacts.append(_vcard_contact(c))
        ev.content_text = " ".join(c.formatted_name for c in md.contacts if c.formatted_name)
    elif kind in _POLLS:
        ev.content_type = pb.CONTENT_TYPE_POLL
        poll = md.poll
        poll.question = content.req_str("name")
        for opt in content.objs("options", required=True):
            poll.options.add(name=opt.req_str("optionName"))
        poll.selectable_count = content.opt_count("selectableOptionsCount")
        poll.allow_multiselect = poll.selectable_count != 1
        ev.content_text = " ".join([poll.question, *(o.name for o in poll.options)])
    elif kind == "pollUpdateMessage":
        # The vote itself is encrypted for the poll's creator; Evolution reports decrypted
        # tallies in messages.update (pollUpdates). Here only which poll was voted on.
        ev.content_type = pb.CONTENT_TYPE_POLL_VOTE
        md.poll_vote.poll_message_id = content.obj("pollCreationMessageKey").req_str("id")
        md.extra["vote_encrypted"] = "true"
    elif kind == "reactionMessage":
        ev.event_type = pb.EVENT_TYPE_REACTION
        ev.content_type = pb.CONTENT_TYPE_REACTION
        emoji = content.opt_str("text")
        md.reactions.add(
            target_message_id=content.obj("key").req_str("id"),
            emoji=emoji,
            reactor_handle=ev.sender_handle,
            removed=not emoji,
        )
    elif kind in ("buttonsResponseMessage", "templateButtonReplyMessage", "listResponseMessage"):
        ev.content_type = pb.CONTENT_TYPE_INTERACTIVE
        ev.content_text = (
            content.opt_str("selectedDisplayText")
            or content.opt_str("title")
            or content.opt_str("description")
        )
        reply = content.opt_obj("singleSelectReply")
        md.extra["reply_id"] = (
            content.opt_str("selectedButtonId")
            or content.opt_str("selectedId")
            or (reply.opt_str("selectedRowId") if reply is not None else "")
        )
    else:
        ev.content_type = pb.CONTENT_TYPE_OTHER


def _vcard_contact(node: Node) -> pb.Contact:
    vcard = node.opt_str("vcard")
    contact = pb.Contact(formatted_name=node.opt_str("displayName"), vcard=vcard)
    for line in vcard.splitlines():
        name, _, value = line.partition(":")
        params = name.split(";")
        field = params[0].upper().rsplit(".", 1)[-1]  # "item1.TEL" -> "TEL"
        if field == "FN" and not contact.formatted_name:
            contact.formatted_name = value
        elif field == "N":
            parts = value.split(";")
            contact.last_name = parts[0]
            contact.first_name = parts[1] if len(parts) > 1 else ""
        elif field == "ORG":
            contact.organization = value.split(";")[0]
        elif field == "EMAIL":
            contact.emails.append(value)
        elif field == "TEL":
            wa_id = next((p[5:] for p in params if p.lower().startswith("waid=")), "")
            kinds = [p[5:].upper() for p in params if p.lower().startswith("type=")]
            contact.phones.add(phone=value, wa_id=wa_id, type=kinds[0] if kinds else "")
    return contact


def _context_info(ev: NormalizedEvent, info: Node) -> None:
    md = ev.metadata
    if info.has("stanzaId"):
        md.quoted.message_id = info.req_str("stanzaId")
        md.quoted.sender_handle = handle(info.opt_str("participant"))
        quoted = info.opt_obj("quotedMessage")
        if quoted is not None:
            text = quoted.raw.get("conversation")
            ext = quoted.opt_obj("extendedTextMessage")
            md.quoted.text = text if isinstance(text, str) else (ext.opt_str("text") if ext else "")
    md.mentions.extend(handle(j) for j in info.str_list("mentionedJid"))
    md.forwarded = info.opt_bool("isForwarded")
    md.quoted.forwarded = md.forwarded and md.HasField("quoted")


# --- protocol messages: edits and revokes ---------------------------------------------------


# Where an edit's new message is: a ProtocolMessage's ``editedMessage``; some Evolution
# forks send messages.edited as ``{key, message, oldMessage}``, the new message whole.
_EDITED_BODIES = ("editedMessage", "message")


def _edited_body(node: Node) -> str:
    """The field of ``node`` holding an edited message's new body, or "". A ``message``
    holding a ``protocolMessage`` is not one: it is a whole message around a protocol
    message (``_wrapped_protocol``), which says what it is."""
    return next((f for f in _EDITED_BODIES if node.has(f) and not _wrapped_protocol(node, f)), "")


def _wrapped_protocol(node: Node, field: str = "message") -> bool:
    """Does ``node.<field>`` hold a ``protocolMessage`` (a WAMessage as messages.upsert
    carries it, not an edit's new body)?"""
    inner = node.raw.get(field)
    return isinstance(inner, dict) and "protocolMessage" in inner


def _protocol_type(node: Node) -> str:
    """The protocol message's kind by its ``type``. With no ``type``, by what it holds:
    an edited message's body is an edit; otherwise Malformed naming ``type``. A missing
    type was read as REVOKE (proto's 0), so an edit a fork sent without one was stored
    as a delete for everyone: a delete is never inferred from a field that is missing."""
    raw = node.raw.get("type")
    if isinstance(raw, str):
        return raw.upper()
    if raw is None:
        if _edited_body(node):
            return "MESSAGE_EDIT"
        raise Malformed(
            node.at("type"),
            "required field is missing (a revoke says REVOKE or 0; an edit says "
            "MESSAGE_EDIT or holds its editedMessage)",
        )
    number = as_int(raw, node.at("type"))
    return _PROTOCOL_TYPES.get(number, f"TYPE_{number}")


def _protocol(
    env: _Envelope, ev: NormalizedEvent | None, proto: Any, *, outer_key: Node | None = None
) -> NormalizedEvent:
    """A ProtocolMessage: a revoke becomes a delete, a MESSAGE_EDIT an edit, the rest protocol.
    Ids of edits and revokes are derived from the message they act on, so that the same revoke
    reported by messages.upsert, messages.edited and messages.delete is one event."""
    if not isinstance(proto, Node):
        raise Malformed("data.message.protocolMessage", "must be an object")
    kind = _protocol_type(proto)
    if kind == "REVOKE":
        key = proto.obj("key")
        target = key.req_str("id")
        ev = _rekey(env, ev, f"{target}:delete")
        env.route(ev, outer_key or key)
        ev.event_type = pb.EVENT_TYPE_DELETE
        ev.content_type = pb.CONTENT_TYPE_UNSPECIFIED
        ev.metadata.deletion.target_message_id = target
        ev.metadata.deletion.deleted_by_handle = ev.sender_handle
        ev.metadata.deletion.for_everyone = True
    elif kind == "MESSAGE_EDIT":
        key = proto.obj("key")
        target = key.req_str("id")
        edited = proto.obj(_edited_body(proto) or "editedMessage")
        ekind, econtent = _content_of(edited, "")
        probe = pb.NormalizedEvent()
        _fill_content(probe, ekind, econtent, edited)
        ev = _rekey(env, ev, f"{target}:edit:{digest(edited.raw)}")
        env.route(ev, outer_key or key)
        ev.event_type = pb.EVENT_TYPE_EDIT
        ev.content_type = probe.content_type
        ev.content_text = probe.content_text
        ev.metadata.edit.target_message_id = target
        ev.metadata.edit.new_text = probe.content_text
        if proto.has("timestampMs"):
            at = unix_millis(proto.raw["timestampMs"], proto.at("timestampMs"))
            ev.metadata.edit.edited_at.CopyFrom(at)
            ev.provider_timestamp.CopyFrom(at)
        elif proto.has("messageTimestamp"):  # a fork's {key, message, oldMessage}
            at = proto.unix_seconds("messageTimestamp")
            ev.metadata.edit.edited_at.CopyFrom(at)
            ev.provider_timestamp.CopyFrom(at)
        elif ev.HasField("provider_timestamp"):
            ev.metadata.edit.edited_at.CopyFrom(ev.provider_timestamp)
    else:
        if ev is None:
            key = proto.obj("key")
            ev = env.event(f"{key.req_str('id')}:protocol:{kind}:{digest(proto.raw)}")
            env.route(ev, key)
        ev.event_type = pb.EVENT_TYPE_PROTOCOL
        ev.content_type = pb.CONTENT_TYPE_UNSPECIFIED
        ev.metadata.protocol.kind = kind.lower()
        if proto.has("ephemeralExpiration"):
            ev.metadata.protocol.detail = (
                f"ephemeralExpiration={proto.opt_int('ephemeralExpiration')}"
            )
    return ev


def _rekey(env: _Envelope, ev: NormalizedEvent | None, provider_event_id: str) -> NormalizedEvent:
    fresh = env.event(provider_event_id)
    if ev is not None:
        if ev.HasField("provider_timestamp"):
            fresh.provider_timestamp.CopyFrom(ev.provider_timestamp)
        for k, v in ev.metadata.extra.items():
            fresh.metadata.extra[k] = v
        fresh.metadata.extra["via_message_id"] = ev.provider_event_id
    return fresh


def _edited(env: _Envelope, data: Node) -> list[NormalizedEvent]:
    """Evolution sends every protocol message Baileys receives as messages.edited, the
    protocol message alone (not the message around it). Those of a device's own
    housekeeping carry no key: an app state key share, a history sync notification, a
    peer data operation's response, a disappearing-messages setting (whose chat only
    the outer message named). They name no message and no chat: skipped, and a body
    of only those is Unrecognised (it was 422 naming ``data.key``, refused after every
    retry). A revoke or an edit without a key is still Malformed: it must name its
    target. An item with no ``type`` is an edit when it holds the edited message
    (``editedMessage``, or a fork's ``{key, message, oldMessage}``), else Malformed
    naming ``type``: it was read as a revoke. An item with no ``type`` whose ``message``
    holds a ``protocolMessage`` (a whole message, as messages.upsert sends it) is read as
    messages.upsert reads it, by that protocol message (a revoke of its key's message
    is a delete): it was an edit of the outer message, its body the protocol message."""
    if data.raw.get("type") is None and _wrapped_protocol(data):
        return _upsert(env, data)
    kind = _protocol_type(data)
    if kind not in ("REVOKE", "MESSAGE_EDIT") and not data.has("key"):
        env.skipped_keyless.append(kind.lower()[:60].encode("ascii", "backslashreplace").decode())
        return []
    return [_protocol(env, None, data)]


# --- messages.update: receipts and poll votes ----------------------------------------------


def _update(env: _Envelope, data: Node) -> list[NormalizedEvent]:
    key = data.opt_obj("key") or data
    id_field = "id" if key is not data else "keyId"
    msg_id = key.req_str(id_field)
    votes = list(data.objs("pollUpdates"))
    if votes:
        return _poll_votes(env, key, msg_id, votes)
    raw = data.raw.get("status")
    if raw is None or (isinstance(raw, str) and raw.upper() == "DELETED"):
        return [_changed(env, key, msg_id, data)]
    # A status this normalizer does not know (a name or a number Baileys adds) is a
    # receipt all the same, of status UNSPECIFIED, the value kept in extra["status"]: it
    # was 422 naming the field, and Evolution's retries of the body failed alike.
    if isinstance(raw, str):
        # A name known in any case is kept upper-case, as Baileys writes it; one not
        # known is kept as it came ("Warning" was stored as "WARNING").
        state = provider_kind(raw, data.at("status"), "message status")
        state = state.upper() if state.upper() in _RECEIPTS else state
    elif isinstance(raw, int) and not isinstance(raw, bool):
        number = as_int(raw, data.at("status"))
        state = _RECEIPT_NUMBERS[number] if 0 <= number < 6 else str(number)
    else:
        raise Malformed(data.at("status"), "must be a string or an integer")
    # In a group (or of a broadcast) each member's receipt of one message comes on its
    # own, naming the member (participant): the member is part of the id (every receipt after the
    # first of a state was taken for a re-delivery of it, and lost).
    group = shared_chat(key.req_str("remoteJid"))
    member = _person(key, "participant", None) if group else ""
    part = id_part(state)
    ev = env.event(f"{msg_id}:{part}:{member}" if member else f"{msg_id}:{part}")
    env.route(ev, key)
    if member and key.opt_bool("fromMe"):
        ev.recipient_handle = member  # whose receipt of the business's message it is
    ev.event_type = pb.EVENT_TYPE_STATUS
    ev.metadata.receipt.status = _RECEIPTS.get(state, pb.RECEIPT_STATUS_UNSPECIFIED)
    ev.metadata.receipt.target_message_id = msg_id
    ev.metadata.extra["status"] = state
    return [ev]


def _changed(env: _Envelope, key: Node, msg_id: str, data: Node) -> NormalizedEvent:
    """A messages.update that is no receipt: Baileys reported a change of the message
    (an edit, a star, ...) with no delivery status, which Evolution sends as status
    ``DELETED`` (its default since October 2025; no status at all from May 2025 to then). A
    deletion is messages.delete; this was stored as a receipt "deleted" (a starred
    message read as deleted), or refused 422 naming ``status``. Now a protocol event
    naming the message."""
    ev = env.event(f"{msg_id}:update:{digest(data.raw)}")
    env.route(ev, key)
    ev.event_type = pb.EVENT_TYPE_PROTOCOL
    ev.metadata.protocol.kind = "message_update"
    ev.metadata.protocol.detail = "messages.update with no delivery status (an edit, a star, ...)"
    ev.metadata.extra["target_message_id"] = msg_id
    if isinstance(data.raw.get("status"), str):
        ev.metadata.extra["status"] = data.raw["status"]
    return ev


def _poll_votes(
    env: _Envelope, key: Node, poll_id: str, tallies: list[Node]
) -> list[NormalizedEvent]:
    """Evolution sends the poll's aggregate ([{name, voters: [jid]}]); one vote event per voter
    with the options that voter holds now."""
    chosen: dict[str, list[str]] = {}
    for option in tallies:
        name = option.req_str("name")
        for i, voter in enumerate(option.str_list("voters")):
            where = f"{option.at('voters')}[{i}]"
            if not handle(voter):
                # A vote of nobody: it was stored with an empty sender.
                raise Malformed(where, "must not be empty")
            check_handle(handle(voter), where)
            chosen.setdefault(voter, []).append(name)
    out = []
    for voter, names in sorted(chosen.items()):
        ev = env.event(f"{poll_id}:vote:{handle(voter)}:{digest(sorted(names))}")
        env.route(ev, key)
        ev.direction = pb.DIRECTION_INBOUND if handle(voter) != env.own else pb.DIRECTION_OUTBOUND
        ev.sender_handle = handle(voter)
        ev.recipient_handle = env.own if ev.direction == pb.DIRECTION_INBOUND else ""
        ev.event_type = pb.EVENT_TYPE_MESSAGE
        ev.content_type = pb.CONTENT_TYPE_POLL_VOTE
        ev.content_text = " ".join(names)
        ev.metadata.poll_vote.poll_message_id = poll_id
        ev.metadata.poll_vote.selected_options.extend(names)
        out.append(ev)
    return out


# --- messages.delete ------------------------------------------------------------------------


def _delete(env: _Envelope, data: Node) -> list[NormalizedEvent]:
    key = data.opt_obj("key") or data
    target = key.req_str("id")
    ev = env.event(f"{target}:delete")
    env.route(ev, key)
    ev.event_type = pb.EVENT_TYPE_DELETE
    ev.metadata.deletion.target_message_id = target
    ev.metadata.deletion.deleted_by_handle = ev.sender_handle
    ev.metadata.deletion.for_everyone = True
    return [ev]


# --- presence.update ------------------------------------------------------------------------


def _presence(env: _Envelope, data: Node) -> list[NormalizedEvent]:
    chat = data.req_str("id")
    presences = data.obj("presences")
    out = []
    for jid in sorted(presences.raw):
        p = presences.obj(jid)
        where = p.at("lastKnownPresence")
        state = provider_kind(p.req_str("lastKnownPresence"), where, "presence")
        # Presence has no id of its own: the webhook's time tells one report from the next.
        stamp = env.root.opt_str("date_time") or digest(p.raw)
        ev = env.event(f"presence:{chat}:{jid}:{id_part(state)}:{stamp}")
        ev.event_type = pb.EVENT_TYPE_PRESENCE
        ev.direction = pb.DIRECTION_INBOUND
        ev.sender_handle = check_handle(handle(jid), presences.at(jid))
        ev.recipient_handle = env.own
        ev.conversation_id = ev.channel_id = handle(chat)
        # One this normalizer does not know: UNSPECIFIED, the value kept (it was 422).
        ev.metadata.presence.status = _PRESENCE.get(state, pb.PRESENCE_STATUS_UNSPECIFIED)
        if state not in _PRESENCE:
            ev.metadata.extra["presence_status"] = state
        if p.has("lastSeen"):
            ev.metadata.presence.last_seen.CopyFrom(p.unix_seconds("lastSeen"))
        out.append(ev)
    if not out:
        raise Malformed(presences.path, "no presences")
    return out


def _seconds(node: Node, key: str) -> Any:
    return node.unix_seconds(key)


_HANDLERS = {
    "messages.upsert": _upsert,
    "send.message": _upsert,
    "messages.edited": _edited,
    "send.message.update": _edited,
    "messages.update": _update,
    "messages.delete": _delete,
    "presence.update": _presence,
}
