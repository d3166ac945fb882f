"""Discord interactions delivered by Discord itself over HTTP (an application's
Interactions Endpoint URL), not through a bot's gateway: the interaction object as the body,
``{"id", "application_id", "type", "data", "guild_id", "channel_id", "member" | "user",
"token", ...}``, signed with Ed25519 (checked by the ingress, signatures.py).

Types:

- 1 PING: no event (the ingress answers PONG, ``{"type": 1}``);
- 2 APPLICATION_COMMAND, 3 MESSAGE_COMPONENT, 5 MODAL_SUBMIT: one inbound message event
  (content type interactive), its provider event id the interaction's id (a snowflake, which
  also gives the event's time), the sender the user (``member.user`` in a guild, ``user``
  in a DM), the conversation the channel; the command as text (``/name sub option:value``),
  a component's ``custom_id`` and chosen values, a modal's submitted values; the structured
  parts in ``metadata.extra`` (``options`` and ``values`` as JSON);
- 4 APPLICATION_COMMAND_AUTOCOMPLETE: no event (a keystroke; answered with no choices);
- any other type: ``Unrecognised`` (the ingress answers 400 naming ``type``: Discord does
  not retry an interaction, so nothing is gained by a 200).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import Context, Node
from jetsource.domains.omni.normalize.errors import Malformed, Unrecognised

FORMAT = "discord_interactions"

PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
_NAMES = {
    PING: "ping",
    APPLICATION_COMMAND: "application_command",
    MESSAGE_COMPONENT: "message_component",
    AUTOCOMPLETE: "application_command_autocomplete",
    MODAL_SUBMIT: "modal_submit",
}
# Interaction response types (Discord's "Interaction Response Object").
PONG, CHANNEL_MESSAGE, DEFERRED_MESSAGE, DEFERRED_UPDATE, AUTOCOMPLETE_RESULT = 1, 4, 5, 6, 8
EPHEMERAL = 1 << 6
# Milliseconds from the Unix epoch to Discord's (2015-01-01), for a snowflake's time.
DISCORD_EPOCH_MS = 1_420_070_400_000
_SUB_COMMAND, _SUB_COMMAND_GROUP = 1, 2


def interaction_type(body: Mapping[str, Any]) -> int:
    """The interaction's ``type``: Malformed when missing or not an integer,
    Unrecognised when it is no type Discord sends to an endpoint."""
    value = body.get("type")
    if value is None:
        raise Malformed("type", "required field is missing")
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed("type", "must be an integer")
    if value not in _NAMES:
        text = str(value) if -(10**20) < value < 10**20 else f"{str(value)[:20]}..."
        raise Unrecognised(
            f"interaction type {text} is not one of 1 (PING), 2 "
            "(APPLICATION_COMMAND), 3 (MESSAGE_COMPONENT), 4 (APPLICATION_COMMAND_"
            "AUTOCOMPLETE), 5 (MODAL_SUBMIT)"
        )
    return value


def response(kind: int, mode: str, text: str) -> dict[str, Any]:
    """What the endpoint answers an interaction of ``kind`` with: PONG to a PING, no
    choices to an autocomplete, and to a command, component or modal either (``mode``
    ``message``) an ephemeral message of ``text`` (type 4) or (``deferred``) an
    ephemeral deferral: type 5 ("thinking...", the bot edits the original response
    later) for a command or modal, type 6 (nothing shown) for a component."""
    if kind == PING:
        return {"type": PONG}
    if kind == AUTOCOMPLETE:
        return {"type": AUTOCOMPLETE_RESULT, "data": {"choices": []}}
    if mode == "deferred":
        deferred = DEFERRED_UPDATE if kind == MESSAGE_COMPONENT else DEFERRED_MESSAGE
        return {"type": deferred, "data": {"flags": EPHEMERAL}}
    return {"type": CHANNEL_MESSAGE, "data": {"content": text, "flags": EPHEMERAL}}


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    kind = interaction_type(body)
    if kind in (PING, AUTOCOMPLETE):
        return []
    root = Node(body)
    interaction_id = root.req_str("id")
    when = _snowflake_time(interaction_id, root.at("id"))
    application_id = root.req_handle("application_id")  # the DM recipient
    guild_id = root.opt_str("guild_id")
    member = root.opt_obj("member")
    user = member.obj("user") if member is not None else root.obj("user")
    channel = root.opt_obj("channel")
    channel_id = root.opt_str("channel_id") or (channel.opt_str("id") if channel else "")
    data = root.obj("data")

    ev = ctx.event(FORMAT, interaction_id)
    ev.event_type = pb.EVENT_TYPE_MESSAGE
    ev.direction = pb.DIRECTION_INBOUND
    ev.content_type = pb.CONTENT_TYPE_INTERACTIVE
    ev.provider_timestamp.CopyFrom(when)
    ev.sender_handle = user.req_handle("id")
    ev.sender_name = user.opt_str("global_name") or user.opt_str("username")
    ev.channel_id = ev.conversation_id = channel_id
    ev.guild_id = guild_id
    if not guild_id:
        ev.recipient_handle = application_id  # a DM to the application's bot
    extra = ev.metadata.extra
    extra["interaction_type"] = _NAMES[kind]
    extra["application_id"] = application_id
    extra["interaction_token"] = root.opt_str("token")
    for key in ("locale", "guild_locale"):
        if value := root.opt_str(key):
            extra[key] = value
    if member is not None and (nick := member.opt_str("nick")):
        extra["member_nick"] = nick

    if kind == APPLICATION_COMMAND:
        _command(ev, data)
    elif kind == MESSAGE_COMPONENT:
        _component(ev, data, root)
    else:
        _modal(ev, data, root)
    return [ev]


def _snowflake_time(value: str, where: str) -> Timestamp:
    if not (value.isascii() and value.isdigit() and len(value) <= 20 and int(value) < 2**64):
        raise Malformed(where, "must be a Discord snowflake (a decimal integer of 64 bits)")
    ts = Timestamp()
    ts.FromMilliseconds((int(value) >> 22) + DISCORD_EPOCH_MS)
    return ts


def _value(node: Node, key: str) -> str:
    """An option's value as text: a string, an integer, a finite number or a boolean."""
    value = node.raw.get(key)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Malformed(node.at(key), "must be a finite number")
        return repr(value)
    raise Malformed(node.at(key), "must be a string, a number or a boolean")


def _options(node: Node, words: list[str], out: list[dict[str, Any]]) -> None:
    """A command's options, depth first: sub-command (groups) as words, the others as
    ``name:value``; ``out`` gets them as ``{"name", "type", "value"}`` (nested for
    sub-commands)."""
    for opt in node.objs("options"):
        name = opt.req_str("name")
        otype = opt.opt_int("type")
        if otype in (_SUB_COMMAND, _SUB_COMMAND_GROUP):
            words.append(name)
            nested: list[dict[str, Any]] = []
            _options(opt, words, nested)
            out.append({"name": name, "type": otype, "options": nested})
            continue
        if not opt.has("value"):
            raise Malformed(opt.at("value"), "required field is missing")
        value = _value(opt, "value")
        words.append(f"{name}:{value}")
        row: dict[str, Any] = {"name": name, "type": otype, "value": opt.raw["value"]}
        if opt.opt_bool("focused"):
            row["focused"] = True
        out.append(row)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _command(ev: NormalizedEvent, data: Node) -> None:
    name = data.req_str("name")
    extra = ev.metadata.extra
    extra["command_id"] = data.req_str("id")
    extra["command_name"] = name
    ctype = data.opt_int("type") or 1
    extra["command_type"] = str(ctype)
    words = [f"/{name}" if ctype == 1 else name]
    options: list[dict[str, Any]] = []
    _options(data, words, options)
    if options:
        extra["options"] = _compact(options)
    resolved = data.opt_obj("resolved")
    if target := data.opt_str("target_id"):
        # A user or message command: who or what it was run on.
        extra["target_id"] = target
        if ctype == 3:
            quoted = ev.metadata.quoted
            quoted.message_id = target
            # The message it was run on, as Discord resolved it: its author and text (a
            # component's message is quoted so; a message command's was the id alone).
            messages = resolved.opt_obj("messages") if resolved is not None else None
            message = messages.opt_obj(target) if messages is not None else None
            if message is not None:
                author = message.opt_obj("author")
                quoted.sender_handle = author.opt_str("id") if author is not None else ""
                quoted.text = message.opt_str("content")
    # Files given to attachment options (their value is only the attachment's id): the
    # files themselves, as a message's attachments are.
    attachments = resolved.opt_obj("attachments") if resolved is not None else None
    if attachments is not None:
        for key in attachments.raw:
            a = attachments.obj(key)
            m = ev.metadata.media.add(
                media_id=a.opt_str("id") or key,
                mime_type=a.opt_str("content_type"),
                file_name=a.opt_str("filename"),
                caption=a.opt_str("description"),
                size_bytes=a.opt_count("size", 64),
                width=a.opt_count("width"),
                height=a.opt_count("height"),
                url=a.opt_str("url"),
            )
            if not ev.content_media_url:
                ev.content_media_url = m.url
    ev.content_text = " ".join(words)


def _component(ev: NormalizedEvent, data: Node, root: Node) -> None:
    custom_id = data.req_str("custom_id")
    extra = ev.metadata.extra
    extra["custom_id"] = custom_id
    extra["component_type"] = str(data.opt_int("component_type"))
    values = data.str_list("values")
    if values:
        extra["values"] = _compact(values)
    ev.content_text = f"{custom_id}: {', '.join(values)}" if values else custom_id
    message = root.opt_obj("message")
    if message is not None:
        # The message whose button or menu was used.
        ev.metadata.quoted.message_id = message.req_str("id")
        author = message.opt_obj("author")
        ev.metadata.quoted.sender_handle = author.opt_str("id") if author is not None else ""
        ev.metadata.quoted.text = message.opt_str("content")


def _modal(ev: NormalizedEvent, data: Node, root: Node) -> None:
    custom_id = data.req_str("custom_id")
    extra = ev.metadata.extra
    extra["custom_id"] = custom_id
    submitted: dict[str, Any] = {}
    for row in data.objs("components", required=True):
        # An action row of text inputs ({"type": 1, "components": [...]}), or a label
        # holding one component ({"type": 18, "component": {...}}).
        inner = list(row.objs("components"))
        if (single := row.opt_obj("component")) is not None:
            inner.append(single)
        for field in inner:
            key = field.req_str("custom_id")
            if field.has("value"):
                submitted[key] = _value(field, "value")
            elif field.has("values"):
                submitted[key] = field.str_list("values")
    extra["values"] = _compact(submitted)
    texts = [v if isinstance(v, str) else ", ".join(v) for v in submitted.values()]
    ev.content_text = " ".join(t for t in texts if t) or custom_id
    message = root.opt_obj("message")
    if message is not None:  # a modal opened from a component
        ev.metadata.quoted.message_id = message.req_str("id")
