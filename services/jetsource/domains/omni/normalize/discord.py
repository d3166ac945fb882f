"""Discord gateway dispatches forwarded by a bot: ``{"op": 0, "t": "MESSAGE_CREATE", "s": 42,
"d": {...}}``, as the gateway sent them. The forwarder may add ``"bot_user_id"`` (the bot's own
user id) so that the bot's own messages and reactions are told apart as outbound.

Dispatches normalized: MESSAGE_CREATE, MESSAGE_UPDATE, MESSAGE_DELETE, MESSAGE_DELETE_BULK,
MESSAGE_REACTION_ADD / _REMOVE, MESSAGE_POLL_VOTE_ADD / _REMOVE, PRESENCE_UPDATE and
TYPING_START. Others (GUILD_CREATE, READY, ...) are ``Unrecognised``.

Reactions, poll votes and presence carry no id of their own; their provider_event_id is built
from what they are about (message, user, emoji, add/remove) plus the dispatch's sequence
number ``s`` when present, so that a re-delivered dispatch keeps its id while a reaction taken
back and given again is a new event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jetsource._gen.omni.v1 import events_pb2 as pb
from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.domains.omni.normalize.common import (
    Context,
    Node,
    digest,
    id_part,
    iso_time,
    provider_kind,
)
from jetsource.domains.omni.normalize.errors import Malformed, Unrecognised, quoted

FORMAT = "discord_gateway"

# Message types a person (or a bot acting as one) sends; every other type is a system notice
# (member joined, pinned, boost, thread created, poll result, ...).
_USER_TYPES = {0, 19, 20, 23}
_PRESENCE = {
    "online": pb.PRESENCE_STATUS_ONLINE,
    "idle": pb.PRESENCE_STATUS_IDLE,
    "dnd": pb.PRESENCE_STATUS_DO_NOT_DISTURB,
    "offline": pb.PRESENCE_STATUS_OFFLINE,
    "invisible": pb.PRESENCE_STATUS_OFFLINE,
}
_STICKER_FORMATS = {1: "png", 2: "apng", 3: "lottie", 4: "gif"}


def matches(body: Mapping[str, Any]) -> bool:
    return isinstance(body.get("t"), str) and isinstance(body.get("d"), Mapping)


class _Dispatch:
    def __init__(self, ctx: Context, root: Node) -> None:
        self.ctx = ctx
        self.kind = root.req_str("t")
        self.d = root.obj("d")
        seq = root.raw.get("s")
        self.seq = ""
        if isinstance(seq, int) and not isinstance(seq, bool):
            if not 0 <= seq < 2**63:
                raise Malformed(root.at("s"), f"must be an integer from 0 to {2**63 - 1}")
            self.seq = f":s{seq}"
        self.bot = root.opt_handle("bot_user_id")

    def event(self, provider_event_id: str) -> NormalizedEvent:
        ev = self.ctx.event(FORMAT, provider_event_id)
        ev.channel_id = ev.conversation_id = self.d.opt_str("channel_id")
        ev.guild_id = self.d.opt_str("guild_id")
        return ev

    def direction(self, user_id: str) -> pb.Direction.ValueType:
        return pb.DIRECTION_OUTBOUND if self.bot and user_id == self.bot else pb.DIRECTION_INBOUND


def normalize(ctx: Context, body: Mapping[str, Any]) -> list[NormalizedEvent]:
    op = body.get("op")
    if op is not None and (isinstance(op, bool) or op != 0):
        # Only a dispatch (op 0) carries an event; a heartbeat, hello, resume, ... a
        # forwarder sent on is none, whatever its t and d say.
        raise Unrecognised(f"Discord gateway op {str(op)[:20]} is not a dispatch (op 0)")
    dispatch = _Dispatch(ctx, Node(body))
    handler = _HANDLERS.get(dispatch.kind)
    if handler is None:
        raise Unrecognised(f"Discord dispatch {quoted(dispatch.kind)} is not normalized")
    return handler(dispatch)


def _display_name(user: Node | None) -> str:
    if user is None:
        return ""
    return user.opt_str("global_name") or user.opt_str("username")


def _message_create(dp: _Dispatch) -> list[NormalizedEvent]:
    d = dp.d
    msg_id = d.req_str("id")
    d.req_str("channel_id")
    author = d.obj("author")
    ev = dp.event(msg_id)
    ev.provider_timestamp.CopyFrom(iso_time(d.req("timestamp"), d.at("timestamp")))
    ev.sender_handle = author.req_handle("id")
    ev.sender_name = _display_name(author)
    mtype = d.opt_int("type")
    md = ev.metadata
    md.extra["message_type"] = str(mtype)
    if mtype in _USER_TYPES:
        ev.event_type = pb.EVENT_TYPE_MESSAGE
        ev.direction = dp.direction(ev.sender_handle)
    else:
        ev.event_type = pb.EVENT_TYPE_SYSTEM
        ev.direction = pb.DIRECTION_SYSTEM
    if not ev.guild_id and ev.direction == pb.DIRECTION_INBOUND:
        ev.recipient_handle = dp.bot  # a DM to the bot
    _content(ev, d)
    md.mentions.extend(u.req_str("id") for u in d.objs("mentions"))
    ref = d.opt_obj("message_reference")
    if ref is not None:
        if ref.opt_int("type") == 1:  # a forward
            md.forwarded = True
            _forward(ev, d, ref)
        elif ref.has("message_id"):
            md.quoted.message_id = ref.req_str("message_id")
            quoted = d.opt_obj("referenced_message")
            if quoted is not None:
                qa = quoted.opt_obj("author")
                md.quoted.sender_handle = qa.opt_str("id") if qa is not None else ""
                md.quoted.text = quoted.opt_str("content")
    thread = d.opt_obj("thread")
    if thread is not None:  # this message started a thread
        md.thread.thread_id = thread.req_str("id")
        md.thread.name = thread.opt_str("name")
        md.thread.parent_message_id = msg_id
    if d.has("position"):  # only messages inside a thread carry a position
        ev.thread_id = ev.channel_id
        md.thread.thread_id = ev.channel_id
    return [ev]


def _forward(ev: NormalizedEvent, d: Node, ref: Node) -> None:
    """A forwarded message: the forward itself carries no content of its own, only the
    reference to the original and ``message_snapshots``, the original's content as it was
    (text, attachments, stickers, embeds). That content is the event's (it was dropped:
    a forward was stored as an empty message of no content type)."""
    md = ev.metadata
    for key in ("message_id", "channel_id", "guild_id"):
        if ref.has(key):
            md.extra[f"forwarded_{key}"] = ref.req_str(key)
    snapshots = list(d.objs("message_snapshots"))
    if snapshots and not ev.content_type:
        _content(ev, snapshots[0].obj("message"))


def _content(ev: NormalizedEvent, d: Node) -> None:
    md = ev.metadata
    text = d.opt_str("content")
    parts = [text] if text else []
    for a in d.objs("attachments"):
        mime = a.opt_str("content_type")
        m = md.media.add(
            media_id=a.req_str("id"),
            mime_type=mime,
            file_name=a.opt_str("filename"),
            caption=a.opt_str("description"),
            size_bytes=a.opt_count("size", 64),
            width=a.opt_count("width"),
            height=a.opt_count("height"),
            duration_seconds=_seconds(a, "duration_secs"),
            voice=a.has("waveform"),
            url=a.opt_str("url"),
        )
        if not ev.content_media_url:
            ev.content_media_url = m.url
        parts.append(m.file_name)
    for s in d.objs("sticker_items"):
        sticker = md.stickers.add(
            sticker_id=s.req_str("id"),
            name=s.opt_str("name"),
            format=_STICKER_FORMATS.get(s.opt_int("format_type"), ""),
        )
        sticker.animated = sticker.format in ("apng", "lottie", "gif")
        md.sticker_ids.append(sticker.sticker_id)
        parts.append(sticker.name)
    poll = d.opt_obj("poll")
    if poll is not None:
        p = md.poll
        p.question = poll.obj("question").opt_str("text")
        for answer in poll.objs("answers", required=True):
            media = answer.obj("poll_media")
            p.options.add(option_id=str(answer.opt_int("answer_id")), name=media.opt_str("text"))
        p.allow_multiselect = poll.opt_bool("allow_multiselect")
        p.selectable_count = 0 if p.allow_multiselect else 1
        if poll.has("expiry"):
            p.expires_at.CopyFrom(iso_time(poll.raw["expiry"], poll.at("expiry")))
        parts.extend([p.question, *(o.name for o in p.options)])
        ev.content_type = pb.CONTENT_TYPE_POLL
    elif md.stickers:
        ev.content_type = pb.CONTENT_TYPE_STICKER
    elif md.media:
        mime = md.media[0].mime_type
        ev.content_type = (
            pb.CONTENT_TYPE_IMAGE
            if mime.startswith("image/")
            else pb.CONTENT_TYPE_AUDIO
            if mime.startswith("audio/")
            else pb.CONTENT_TYPE_VIDEO
            if mime.startswith("video/")
            else pb.CONTENT_TYPE_DOCUMENT
        )
    elif text:
        ev.content_type = pb.CONTENT_TYPE_TEXT
    elif d.raw.get("embeds") or d.raw.get("components"):
        ev.content_type = pb.CONTENT_TYPE_OTHER
    if not any(parts):
        # A message of embeds only (a bot's or a webhook's, often): their words are its text
        # (it was stored with none). Beside content, an embed is mostly a link's preview.
        for e in d.objs("embeds"):
            parts.extend((e.opt_str("title"), e.opt_str("description")))
            for f in e.objs("fields"):
                parts.extend((f.opt_str("name"), f.opt_str("value")))
    ev.content_text = " ".join(p for p in parts if p)


def _seconds(node: Node, key: str) -> int:
    value = node.opt_float(key) or 0.0
    if not 0 <= value < 1 << 32:
        raise Malformed(node.at(key), "must be a number of seconds from 0")
    return int(value)


def _message_update(dp: _Dispatch) -> list[NormalizedEvent]:
    d = dp.d
    msg_id = d.req_str("id")
    d.req_str("channel_id")
    author = d.opt_obj("author")
    edited_at = d.raw.get("edited_timestamp")
    if edited_at is None:
        # Not an edit by a person: Discord resolved embeds or flags on the message.
        ev = dp.event(f"{msg_id}:update:{digest(d.raw)}")
        ev.event_type = pb.EVENT_TYPE_PROTOCOL
        ev.direction = pb.DIRECTION_SYSTEM
        ev.metadata.protocol.kind = "message_update"
        ev.metadata.protocol.detail = "no edited_timestamp (embeds or flags changed)"
        ev.metadata.extra["target_message_id"] = msg_id
        return [ev]
    when = iso_time(edited_at, d.at("edited_timestamp"))
    ev = dp.event(f"{msg_id}:edit:{edited_at}")
    ev.event_type = pb.EVENT_TYPE_EDIT
    if author is not None:
        ev.sender_handle = author.req_handle("id")
        ev.sender_name = _display_name(author)
    ev.direction = dp.direction(ev.sender_handle)
    ev.provider_timestamp.CopyFrom(when)
    _content(ev, d)
    ev.metadata.edit.target_message_id = msg_id
    ev.metadata.edit.new_text = d.opt_str("content")
    ev.metadata.edit.edited_at.CopyFrom(when)
    return [ev]


def _deleted(dp: _Dispatch, msg_id: str) -> NormalizedEvent:
    ev = dp.event(f"{msg_id}:delete")
    ev.event_type = pb.EVENT_TYPE_DELETE
    # Discord does not say who deleted a message (its author or a moderator): a notice.
    ev.direction = pb.DIRECTION_SYSTEM
    ev.metadata.deletion.target_message_id = msg_id
    ev.metadata.deletion.for_everyone = True
    return ev


def _message_delete(dp: _Dispatch) -> list[NormalizedEvent]:
    dp.d.req_str("channel_id")
    return [_deleted(dp, dp.d.req_str("id"))]


def _message_delete_bulk(dp: _Dispatch) -> list[NormalizedEvent]:
    dp.d.req_str("channel_id")
    if not dp.d.has("ids"):
        raise Malformed(dp.d.at("ids"), "required field is missing")
    ids = dp.d.str_list("ids")
    if not ids:
        raise Malformed(dp.d.at("ids"), "must list at least one message id")
    for i, msg_id in enumerate(ids):
        if not msg_id:
            # It was stored as the delete of message "" (provider event id ":delete").
            raise Malformed(f"{dp.d.at('ids')}[{i}]", "must not be empty")
    return [_deleted(dp, i) for i in ids]


def _reaction(removed: bool) -> Callable[[_Dispatch], list[NormalizedEvent]]:
    def handle(dp: _Dispatch) -> list[NormalizedEvent]:
        d = dp.d
        msg_id, user = d.req_str("message_id"), d.req_handle("user_id")
        d.req_str("channel_id")
        emoji = d.obj("emoji")
        emoji_id = emoji.opt_str("id")
        name = emoji.opt_str("name")
        if not (emoji_id or name):
            raise Malformed(emoji.at("name"), "required field is missing")
        action = "remove" if removed else "add"
        ev = dp.event(f"{msg_id}:reaction:{user}:{emoji_id or name}:{action}{dp.seq}")
        ev.event_type = pb.EVENT_TYPE_REACTION
        ev.content_type = pb.CONTENT_TYPE_REACTION
        ev.content_text = name
        ev.sender_handle = user
        ev.direction = dp.direction(user)
        ev.recipient_handle = d.opt_handle("message_author_id")
        member = d.opt_obj("member")
        ev.sender_name = _display_name(member.opt_obj("user")) if member is not None else ""
        ev.metadata.reactions.add(
            target_message_id=msg_id,
            emoji=name,
            emoji_id=emoji_id,
            reactor_handle=user,
            removed=removed,
        )
        if d.opt_bool("burst"):
            ev.metadata.extra["burst"] = "true"
        return [ev]

    return handle


def _poll_vote(removed: bool) -> Callable[[_Dispatch], list[NormalizedEvent]]:
    def handle(dp: _Dispatch) -> list[NormalizedEvent]:
        d = dp.d
        msg_id, user = d.req_str("message_id"), d.req_handle("user_id")
        d.req_str("channel_id")
        answer = str(d.opt_int("answer_id")) if d.has("answer_id") else ""
        if not answer:
            raise Malformed(d.at("answer_id"), "required field is missing")
        action = "remove" if removed else "add"
        ev = dp.event(f"{msg_id}:vote:{user}:{answer}:{action}{dp.seq}")
        ev.event_type = pb.EVENT_TYPE_MESSAGE
        ev.content_type = pb.CONTENT_TYPE_POLL_VOTE
        ev.sender_handle = user
        ev.direction = dp.direction(user)
        vote = ev.metadata.poll_vote
        vote.poll_message_id = msg_id
        vote.selected_option_ids.append(answer)
        vote.removed = removed
        return [ev]

    return handle


def _presence(dp: _Dispatch) -> list[NormalizedEvent]:
    d = dp.d
    user = d.obj("user").req_handle("id")
    # A status this normalizer does not know (Discord adds them): presence UNSPECIFIED,
    # the value kept in extra["presence_status"]; it was 422 naming the field.
    status = provider_kind(d.req_str("status"), d.at("status"), "presence status")
    ev = dp.event(
        f"presence:{user}:{d.opt_str('guild_id')}:{id_part(status)}{dp.seq or ':' + digest(d.raw)}"
    )
    ev.event_type = pb.EVENT_TYPE_PRESENCE
    ev.direction = dp.direction(user)
    ev.sender_handle = user
    ev.sender_name = _display_name(d.opt_obj("user"))
    p = ev.metadata.presence
    p.status = _PRESENCE.get(status, pb.PRESENCE_STATUS_UNSPECIFIED)
    if status not in _PRESENCE:
        ev.metadata.extra["presence_status"] = status
    client = d.opt_obj("client_status")
    if client is not None:
        for k in sorted(client.raw):
            p.client_status[k] = client.req_str(k)
    p.activities.extend(a.opt_str("name") for a in d.objs("activities"))
    return [ev]


def _typing(dp: _Dispatch) -> list[NormalizedEvent]:
    d = dp.d
    user = d.req_handle("user_id")
    d.req_str("channel_id")
    ev = dp.event(f"typing:{d.req_str('channel_id')}:{user}:{d.opt_int('timestamp')}")
    ev.event_type = pb.EVENT_TYPE_PRESENCE
    ev.direction = dp.direction(user)
    ev.sender_handle = user
    ev.provider_timestamp.CopyFrom(d.unix_seconds("timestamp"))
    member = d.opt_obj("member")
    ev.sender_name = _display_name(member.opt_obj("user")) if member is not None else ""
    ev.metadata.presence.status = pb.PRESENCE_STATUS_TYPING
    return [ev]


_HANDLERS: dict[str, Callable[[_Dispatch], list[NormalizedEvent]]] = {
    "MESSAGE_CREATE": _message_create,
    "MESSAGE_UPDATE": _message_update,
    "MESSAGE_DELETE": _message_delete,
    "MESSAGE_DELETE_BULK": _message_delete_bulk,
    "MESSAGE_REACTION_ADD": _reaction(removed=False),
    "MESSAGE_REACTION_REMOVE": _reaction(removed=True),
    "MESSAGE_POLL_VOTE_ADD": _poll_vote(removed=False),
    "MESSAGE_POLL_VOTE_REMOVE": _poll_vote(removed=True),
    "PRESENCE_UPDATE": _presence,
    "TYPING_START": _typing,
}
