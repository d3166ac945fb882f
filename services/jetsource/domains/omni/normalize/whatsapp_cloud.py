"""WhatsApp Business Cloud API webhooks (``object: whatsapp_business_account``).

``entry[].changes[]`` with ``field: messages`` carries ``value.messages`` (from users),
``value.statuses`` (receipts of the business's messages) and ``value.errors``;
``field: smb_message_echoes`` carries ``value.message_echoes`` (messages the business sent from
the WhatsApp Business app). Other fields (templates, account updates, ...) yield no events; a
body with none of the above is ``Unrecognised``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import (
    Context,
    Node,
    digest,
    id_part,
    provider_kind,
)
from jetsource.domains.omni.normalize.errors import Unrecognised

FORMAT = "whatsapp_cloud"
OBJECT = "whatsapp_business_account"

_MEDIA = {
    "image": pb.CONTENT_TYPE_IMAGE,
    "audio": pb.CONTENT_TYPE_AUDIO,
    "video": pb.CONTENT_TYPE_VIDEO,
    "document": pb.CONTENT_TYPE_DOCUMENT,
    "sticker": pb.CONTENT_TYPE_STICKER,
}
_RECEIPTS = {
    "sent": pb.RECEIPT_STATUS_SENT,
    "delivered": pb.RECEIPT_STATUS_DELIVERED,
    "read": pb.RECEIPT_STATUS_READ,
    "played": pb.RECEIPT_STATUS_PLAYED,
    "failed": pb.RECEIPT_STATUS_FAILED,
    "deleted": pb.RECEIPT_STATUS_DELETED,
}


def matches(body: Mapping[str, Any]) -> bool:
    return body.get("object") == OBJECT


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    root = Node(body)
    out: list[NormalizedEvent] = []
    understood = False
    for entry in root.objs("entry", required=True):
        for change in entry.objs("changes", required=True):
            field = change.opt_str("field", "messages")
            if field not in ("messages", "smb_message_echoes"):
                continue
            value = change.obj("value")
            business = _business(value)
            names = _profile_names(value)
            for msg in value.objs("messages"):
                understood = True
                out.append(_message(ctx, msg, business, names, outbound=False))
            for msg in value.objs("message_echoes"):
                understood = True
                out.append(_message(ctx, msg, business, names, outbound=True))
            for status in value.objs("statuses"):
                understood = True
                out.append(_status(ctx, status, business))
            for i, error in enumerate(value.objs("errors")):
                understood = True
                out.append(_error(ctx, error, business, entry.opt_str("id"), i, value))
    if not understood:
        raise Unrecognised("WhatsApp Cloud webhook without messages, statuses or errors")
    return out


def _business(value: Node) -> str:
    """The business's own number: the instance's handle."""
    meta = value.obj("metadata")
    return meta.opt_handle("display_phone_number") or meta.req_handle("phone_number_id")


def _profile_names(value: Node) -> dict[str, str]:
    """Each user's profile name, by their number (``wa_id``) and by their business-scoped
    user id (``user_id``: a user who adopted a username may come with that alone)."""
    names = {}
    for contact in value.objs("contacts"):
        profile = contact.opt_obj("profile")
        if profile is None:
            continue
        for key in ("wa_id", "user_id"):
            if contact.has(key):
                names[contact.req_str(key)] = profile.opt_str("name")
    return names


def _user(node: Node, key: str, extra: Any) -> str:
    """A WhatsApp user's handle from ``key`` (``from``, ``to``, ``recipient_id``): their
    phone number, the handle Evolution and earlier webhooks give them; or, since Meta's
    usernames (2026), their business-scoped user id (``from_user_id``, ``to_user_id``,
    ``recipient_user_id``: ``US.13491208655302741918``), which is all a webhook carries
    of a user who adopted a username and hides their number (such a message was
    refused, 422 naming ``from``, and lost after Meta's retries). The id is kept in
    ``extra`` when both come."""
    user_key = f"{key.removesuffix('_id')}_user_id"
    if node.has(key):
        number = node.req_handle(key)
        if node.has(user_key):
            extra[user_key] = node.req_handle(user_key)
        return number
    if node.has(user_key):
        return node.req_handle(user_key)
    return node.req_handle(key)  # Malformed, naming the phone number's field


def _message(
    ctx: Context, msg: Node, business: str, names: dict[str, str], *, outbound: bool
) -> NormalizedEvent:
    wamid = msg.req_str("id")
    kind = msg.req_str("type")
    ev = ctx.event(FORMAT, wamid)
    ev.provider_timestamp.CopyFrom(msg.unix_seconds("timestamp"))
    if outbound:
        ev.direction = pb.DIRECTION_OUTBOUND
        ev.sender_handle = business
        ev.recipient_handle = _user(msg, "to", ev.metadata.extra)
        other = ev.recipient_handle
    else:
        ev.direction = pb.DIRECTION_INBOUND
        ev.sender_handle = _user(msg, "from", ev.metadata.extra)
        ev.recipient_handle = business
        ev.sender_name = names.get(ev.sender_handle, "")
        other = ev.sender_handle
    # Group messages name the group; one-to-one chats are keyed by the user's number.
    ev.conversation_id = ev.channel_id = msg.opt_str("group_id") or other
    ev.event_type = pb.EVENT_TYPE_MESSAGE
    md = ev.metadata
    md.extra["type"] = kind
    context = msg.opt_obj("context")
    if context is not None:
        if context.has("id"):
            md.quoted.message_id = context.req_str("id")
            md.quoted.sender_handle = context.opt_str("from")
            md.quoted.forwarded = context.opt_bool("forwarded")
        md.forwarded = context.opt_bool("forwarded") or context.opt_bool("frequently_forwarded")
        product = context.opt_obj("referred_product")
        if product is not None:  # a question about a catalog's product ("Message business")
            _scalars(md.extra, "referred_product_", product)
    referral = msg.opt_obj("referral")
    if referral is not None:  # a click-to-WhatsApp ad or post the user came from
        _scalars(md.extra, "referral_", referral)
        welcome = referral.opt_obj("welcome_message")
        if welcome is not None:
            md.extra["referral_welcome_message"] = welcome.opt_str("text")
    _content(ev, msg, kind)
    return ev


def _scalars(extra: Any, prefix: str, node: Node) -> None:
    """A provider block's text, number and boolean fields into ``extra`` (``prefix`` + key),
    as strings; objects and lists are left to the raw archive."""
    for key in sorted(node.raw):
        value = node.raw[key]
        if isinstance(value, bool):
            extra[prefix + key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            extra[prefix + key] = str(value)


def _content(ev: NormalizedEvent, msg: Node, kind: str) -> None:
    md = ev.metadata
    if kind == "text":
        ev.content_type = pb.CONTENT_TYPE_TEXT
        ev.content_text = msg.obj("text").req_str("body")
    elif kind in _MEDIA:
        ev.content_type = _MEDIA[kind]
        _media(ev, msg.obj(kind), kind)
    elif kind == "location":
        loc = msg.obj("location")
        ev.content_type = pb.CONTENT_TYPE_LOCATION
        _location(md.location, loc)
        ev.content_text = " ".join(p for p in (md.location.name, md.location.address) if p)
    elif kind == "contacts":
        ev.content_type = pb.CONTENT_TYPE_CONTACT
        for c in msg.objs("contacts", required=True):
            md.contacts.append(_contact(c))
        shown = (c.formatted_name or (c.phones[0].phone if c.phones else "") for c in md.contacts)
        ev.content_text = " ".join(t for t in shown if t)
        if isinstance(msg.raw.get("origin"), str):  # contact_request/...: the button's answer
            md.extra["origin"] = msg.raw["origin"]
    elif kind == "reaction":
        r = msg.obj("reaction")
        ev.event_type = pb.EVENT_TYPE_REACTION
        ev.content_type = pb.CONTENT_TYPE_REACTION
        emoji = r.opt_str("emoji")
        md.reactions.add(
            target_message_id=r.req_str("message_id"),
            emoji=emoji,
            reactor_handle=ev.sender_handle,
            # WhatsApp sends a reaction with no emoji when the user takes theirs back.
            removed=not emoji,
        )
    elif kind in ("interactive", "button"):
        ev.content_type = pb.CONTENT_TYPE_INTERACTIVE
        _interactive(ev, msg, kind)
    elif kind == "edit":
        edit = msg.obj("edit")
        ev.event_type = pb.EVENT_TYPE_EDIT
        md.edit.target_message_id = edit.req_str("original_message_id")
        inner = edit.obj("message")
        inner_kind = inner.opt_str("type", "text")
        if inner_kind == "text":
            md.edit.new_text = inner.obj("text").req_str("body")
            ev.content_type = pb.CONTENT_TYPE_TEXT
        elif inner_kind in _MEDIA:
            media = inner.obj(inner_kind)
            md.edit.new_text = media.opt_str("caption")
            ev.content_type = _MEDIA[inner_kind]
        ev.content_text = md.edit.new_text
        md.edit.edited_at.CopyFrom(ev.provider_timestamp)
    elif kind == "revoke":
        revoke = msg.obj("revoke")
        ev.event_type = pb.EVENT_TYPE_DELETE
        md.deletion.target_message_id = revoke.req_str("original_message_id")
        md.deletion.deleted_by_handle = ev.sender_handle
        md.deletion.for_everyone = True
    elif kind in ("system", "request_welcome"):
        ev.event_type = pb.EVENT_TYPE_SYSTEM
        ev.direction = pb.DIRECTION_SYSTEM
        system = msg.opt_obj("system")
        if system is not None:
            ev.content_text = system.opt_str("body")
            for key in ("type", "wa_id", "new_wa_id", "customer", "identity"):
                if isinstance(system.raw.get(key), str):
                    md.extra[f"system_{key}"] = system.raw[key]
            if ev.content_text:
                ev.content_type = pb.CONTENT_TYPE_TEXT
    elif kind == "order":
        order = msg.obj("order")
        ev.content_type = pb.CONTENT_TYPE_OTHER
        ev.content_text = order.opt_str("text")
        md.extra["order_catalog_id"] = order.opt_str("catalog_id")
        items = list(order.objs("product_items"))
        md.extra["order_items"] = str(len(items))
        for i, item in enumerate(items):
            _scalars(md.extra, f"order_item_{i}_", item)
    else:
        # unsupported and kinds newer than this normalizer: still a message, kept whole in
        # the raw archive. The kind WhatsApp could not deliver (``unsupported.type``: an
        # edit, a poll, a video note, ...) and the errors Meta attaches are carried along.
        ev.content_type = pb.CONTENT_TYPE_OTHER
        block = msg.opt_obj(kind) if isinstance(msg.raw.get(kind), Mapping) else None
        if block is not None and isinstance(block.raw.get("type"), str):
            md.extra[f"{kind}_type"] = block.req_str("type")
        for i, err in enumerate(msg.objs("errors")):
            md.extra[f"error_{i}"] = f"{err.opt_int('code')} {err.opt_str('title')}".strip()
            data = err.opt_obj("error_data")
            if data is not None and data.opt_str("details"):
                md.extra[f"error_{i}_details"] = data.opt_str("details")


def _media(ev: NormalizedEvent, media: Node, kind: str) -> None:
    md = ev.metadata
    m = md.media.add(
        media_id=media.req_str("id"),
        mime_type=media.opt_str("mime_type"),
        sha256=media.opt_str("sha256"),
        file_name=media.opt_str("filename"),
        caption=media.opt_str("caption"),
        voice=media.opt_bool("voice"),
        url=media.opt_str("url"),
    )
    ev.content_media_url = m.url
    ev.content_text = " ".join(p for p in (m.caption, m.file_name) if p)
    if kind == "sticker":
        md.sticker_ids.append(m.media_id)
        md.stickers.add(
            sticker_id=m.media_id,
            format=m.mime_type.removeprefix("image/"),
            animated=media.opt_bool("animated"),
        )


def _location(loc: pb.Location, node: Node) -> None:
    loc.latitude = node.coordinate("latitude", 90)
    loc.longitude = node.coordinate("longitude", 180)
    loc.name = node.opt_str("name")
    loc.address = node.opt_str("address")
    loc.url = node.opt_str("url")


def _contact(node: Node) -> pb.Contact:
    """A shared contact. Meta: "many contact object properties may be omitted if the
    WhatsApp user chooses not to share them, or their device prevents them from being
    shared" (a contact without ``name`` was refused 422 naming it); one shared through a
    REQUEST_CONTACT_INFO button carries a ``vcard``."""
    name = node.opt_obj("name")
    org = node.opt_obj("org")
    return pb.Contact(
        formatted_name=name.opt_str("formatted_name") if name is not None else "",
        first_name=name.opt_str("first_name") if name is not None else "",
        last_name=name.opt_str("last_name") if name is not None else "",
        vcard=node.opt_str("vcard"),
        phones=[
            pb.ContactPhone(
                phone=p.opt_str("phone"), wa_id=p.opt_str("wa_id"), type=p.opt_str("type")
            )
            for p in node.objs("phones")
        ],
        emails=[e.opt_str("email") for e in node.objs("emails")],
        organization=org.opt_str("company") if org is not None else "",
    )


def _interactive(ev: NormalizedEvent, msg: Node, kind: str) -> None:
    md = ev.metadata
    if kind == "button":
        button = msg.obj("button")
        ev.content_text = button.opt_str("text")
        md.extra["button_payload"] = button.opt_str("payload")
        return
    inter = msg.obj("interactive")
    sub = inter.req_str("type")
    md.extra["interactive_type"] = sub
    reply = inter.opt_obj(sub)
    if reply is None:
        return
    md.extra["reply_id"] = reply.opt_str("id")
    ev.content_text = " ".join(
        p
        for p in (reply.opt_str("title"), reply.opt_str("description"), reply.opt_str("body"))
        if p
    )
    if sub == "nfm_reply":
        md.extra["response_json"] = reply.opt_str("response_json")
    elif sub not in ("button_reply", "list_reply"):
        # A reply of a kind newer than this normalizer (call_permission_reply, ...): its
        # fields kept, named by the kind, rather than dropped for want of an id or title.
        _scalars(md.extra, f"{sub}_", reply)


def _status(ctx: Context, status: Node, business: str) -> NormalizedEvent:
    wamid = status.req_str("id")
    # A status this normalizer does not know (Meta adds them) is a receipt all the same,
    # of status UNSPECIFIED, the value kept in extra["status"]; it was 422 naming the
    # field, and Meta's retries of the body, its other messages with it, failed alike.
    state = provider_kind(status.req_str("status"), status.at("status"), "receipt status")
    if status.opt_str("recipient_type") == "group":
        # Each member's receipt of a group message comes on its own, naming the member:
        # the member is part of the id (every receipt after the first of a state was
        # taken for a re-delivery of it, and lost).
        member = status.opt_handle("recipient_participant_id")
        part = id_part(state)
        ev = ctx.event(FORMAT, f"{wamid}:{part}:{member}" if member else f"{wamid}:{part}")
        ev.conversation_id = ev.channel_id = status.req_str("recipient_id")
        ev.recipient_handle = member
    else:
        ev = ctx.event(FORMAT, f"{wamid}:{id_part(state)}")
        recipient = _user(status, "recipient_id", ev.metadata.extra)
        ev.conversation_id = ev.channel_id = ev.recipient_handle = recipient
    ev.event_type = pb.EVENT_TYPE_STATUS
    ev.direction = pb.DIRECTION_OUTBOUND
    ev.sender_handle = business
    ev.provider_timestamp.CopyFrom(status.unix_seconds("timestamp"))
    receipt = ev.metadata.receipt
    receipt.status = _RECEIPTS.get(state, pb.RECEIPT_STATUS_UNSPECIFIED)
    if state not in _RECEIPTS:
        ev.metadata.extra["status"] = state
    receipt.target_message_id = wamid
    for err in status.objs("errors"):
        data = err.opt_obj("error_data")
        receipt.errors.add(
            code=str(err.opt_int("code")),
            title=err.opt_str("title"),
            message=(data.opt_str("details") if data is not None else "") or err.opt_str("message"),
        )
    conversation = status.opt_obj("conversation")
    if conversation is not None:
        receipt.provider_conversation_id = conversation.opt_str("id")
        origin = conversation.opt_obj("origin")
        if origin is not None:
            receipt.conversation_category = origin.opt_str("type")
        if conversation.has("expiration_timestamp"):
            ev.metadata.extra["conversation_expiration_timestamp"] = str(
                conversation.opt_int("expiration_timestamp")
            )
    pricing = status.opt_obj("pricing")
    if pricing is not None:
        if not receipt.conversation_category:
            receipt.conversation_category = pricing.opt_str("category")
        _scalars(ev.metadata.extra, "pricing_", pricing)
    if status.opt_str("biz_opaque_callback_data"):
        # What the business sent with the message to find it again in its receipts. An
        # extra: an empty value is left out (req_str made it 422, the receipt lost
        # after Meta's retries).
        ev.metadata.extra["biz_opaque_callback_data"] = status.opt_str("biz_opaque_callback_data")
    return ev


def _error(
    ctx: Context, error: Node, business: str, account: str, index: int, value: Node
) -> NormalizedEvent:
    """An error Meta reports about the account or number, not about one message. Its id
    names the number it came for (``metadata.phone_number_id``): the same error for two
    numbers of one account was one id, the second taken for a re-delivery of the first
    and lost."""
    number = value.obj("metadata").opt_str("phone_number_id")
    where = f"{account}:{number}" if number else account
    ev = ctx.event(FORMAT, f"error:{where}:{index}:{digest(error.raw)}")
    ev.event_type = pb.EVENT_TYPE_SYSTEM
    ev.direction = pb.DIRECTION_SYSTEM
    ev.recipient_handle = business
    data = error.opt_obj("error_data")
    ev.content_text = error.opt_str("title")
    ev.metadata.extra["error_code"] = str(error.opt_int("code"))
    if data is not None:
        ev.metadata.extra["error_details"] = data.opt_str("details")
    return ev
