"""Bad bodies: a missing or mistyped field is Malformed and names the field by its path; a
kind nobody normalizes is Unrecognised; nothing is ever half-normalized."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from jetsource.domains.omni.normalize import Malformed, Unrecognised, detect_format, normalize
from tests.fixtures.omni import FIXTURES, RECEIVED_AT

BY_PATH = {f.path: f for f in FIXTURES}
Body = dict[str, Any]


def _run(path: str, mutate: Callable[[Body], None]) -> list[Any]:
    f = BY_PATH[path]
    body = copy.deepcopy(f.body())
    mutate(body)
    return normalize(f.provider, f.instance, body, RECEIVED_AT, "r")


def _value(body: Body) -> Body:
    value: Body = body["entry"][0]["changes"][0]["value"]
    return value


MALFORMED: list[tuple[str, Callable[[Body], None], str]] = [
    # WhatsApp Cloud
    (
        "whatsapp/cloud/text.json",
        lambda b: _value(b)["messages"][0].pop("id"),
        "entry[0].changes[0].value.messages[0].id",
    ),
    (
        "whatsapp/cloud/text.json",
        lambda b: _value(b)["messages"][0].update(timestamp=None),
        "entry[0].changes[0].value.messages[0].timestamp",
    ),
    (
        "whatsapp/cloud/text.json",
        lambda b: _value(b)["messages"][0]["text"].update(body=7),
        "entry[0].changes[0].value.messages[0].text.body",
    ),
    (
        "whatsapp/cloud/image.json",
        lambda b: _value(b)["messages"][0].pop("image"),
        "entry[0].changes[0].value.messages[0].image",
    ),
    (
        "whatsapp/cloud/location.json",
        lambda b: _value(b)["messages"][0]["location"].update(latitude=91),
        "entry[0].changes[0].value.messages[0].location.latitude",
    ),
    (
        "whatsapp/cloud/status_read.json",
        lambda b: _value(b)["statuses"][0].update(status=7),
        "entry[0].changes[0].value.statuses[0].status",
    ),
    ("whatsapp/cloud/text.json", lambda b: b.update(entry={}), "entry"),
    (
        "whatsapp/cloud/text.json",
        lambda b: _value(b).pop("metadata"),
        "entry[0].changes[0].value.metadata",
    ),
    (
        "whatsapp/cloud/reaction.json",
        lambda b: _value(b)["messages"][0]["reaction"].pop("message_id"),
        "entry[0].changes[0].value.messages[0].reaction.message_id",
    ),
    # Evolution API
    ("whatsapp/evolution/text.json", lambda b: b["data"].pop("key"), "data.key"),
    (
        "whatsapp/evolution/text.json",
        lambda b: b["data"]["key"].update(remoteJid=["x"]),
        "data.key.remoteJid",
    ),
    (
        "whatsapp/evolution/text.json",
        lambda b: b["data"].update(messageTimestamp="noon"),
        "data.messageTimestamp",
    ),
    ("whatsapp/evolution/text.json", lambda b: b["data"].update(message={}), "data.message"),
    (
        "whatsapp/evolution/poll_create.json",
        lambda b: b["data"]["message"]["pollCreationMessageV3"]["options"][1].pop("optionName"),
        "data.message.pollCreationMessageV3.options[1].optionName",
    ),
    (
        "whatsapp/evolution/status_read.json",
        lambda b: b["data"].update(status=["SEEN"]),
        "data.status",
    ),
    (
        "whatsapp/evolution/presence_composing.json",
        lambda b: b["data"]["presences"]["5511912345678@s.whatsapp.net"].update(
            lastKnownPresence=""
        ),
        "data.presences.5511912345678@s.whatsapp.net.lastKnownPresence",
    ),
    ("whatsapp/evolution/edit.json", lambda b: b["data"]["key"].pop("id"), "data.key.id"),
    ("whatsapp/evolution/text.json", lambda b: b.update(date_time="yesterday"), "date_time"),
    # Discord
    ("discord/text.json", lambda b: b["d"].pop("author"), "d.author"),
    ("discord/text.json", lambda b: b["d"]["author"].update(id=80351110224678912), "d.author.id"),
    ("discord/text.json", lambda b: b["d"].update(timestamp="soon"), "d.timestamp"),
    (
        "discord/image.json",
        lambda b: b["d"]["attachments"][0].update(size=-5),
        "d.attachments[0].size",
    ),
    (
        "discord/reaction_add.json",
        lambda b: b["d"].update(emoji={"id": None, "name": None}),
        "d.emoji.name",
    ),
    ("discord/presence.json", lambda b: b["d"].update(status="x" * 65), "d.status"),
    ("discord/poll_vote_add.json", lambda b: b["d"].pop("answer_id"), "d.answer_id"),
    ("discord/delete_bulk.json", lambda b: b["d"].update(ids=[]), "d.ids"),
    # An empty id or voter in a list: stored as the delete of message "" (provider
    # event id ":delete") and as a vote of nobody.
    ("discord/delete_bulk.json", lambda b: b["d"]["ids"].append(""), "d.ids[2]"),
    (
        "whatsapp/evolution/poll_votes.json",
        lambda b: b["data"]["pollUpdates"][2]["voters"].append(""),
        "data.pollUpdates[2].voters[0]",
    ),
]


@pytest.mark.parametrize(
    ("path", "mutate", "field"), MALFORMED, ids=[f"{p}:{f}" for p, _, f in MALFORMED]
)
def test_malformed_names_the_field(path: str, mutate: Callable[[Body], None], field: str) -> None:
    with pytest.raises(Malformed) as exc:
        _run(path, mutate)
    assert exc.value.field == field
    assert str(exc.value).startswith(field + ": ")


UNRECOGNISED: list[tuple[str, Any]] = [
    ("whatsapp", {"object": "page", "entry": []}),
    ("whatsapp", {"event": "chats.upsert", "instance": "acme-evo", "data": []}),
    ("whatsapp", {"event": "QRCODE_UPDATED", "data": {"qrcode": {}}}),
    ("whatsapp", []),
    ("whatsapp", "text"),
    ("discord", {"op": 0, "t": "GUILD_CREATE", "s": 1, "d": {"id": "1"}}),
    ("discord", {"op": 11}),
    ("discord", {"t": "MESSAGE_CREATE", "d": "not an object"}),
    ("telegram", {"update_id": 1}),
]


@pytest.mark.parametrize(
    ("provider", "body"), UNRECOGNISED, ids=[repr(b)[:40] for _, b in UNRECOGNISED]
)
def test_unknown_kinds_are_unrecognised(provider: str, body: Any) -> None:
    with pytest.raises(Unrecognised) as exc:
        normalize(provider, "i", body, RECEIVED_AT, "r")
    assert exc.value.reason


def test_cloud_body_with_only_unknown_changes_is_unrecognised_but_known_ones_still_count() -> None:
    f = BY_PATH["whatsapp/cloud/text.json"]
    body = copy.deepcopy(f.body())
    body["entry"][0]["changes"][0]["field"] = "account_update"
    with pytest.raises(Unrecognised):
        normalize(f.provider, f.instance, body, RECEIVED_AT, "r")
    mixed = copy.deepcopy(f.body())
    mixed["entry"][0]["changes"].append({"field": "account_update", "value": {"event": "VERIFIED"}})
    assert [
        e.provider_event_id for e in normalize(f.provider, f.instance, mixed, RECEIVED_AT, "r")
    ] == [f.events[0][0]]


def test_one_bad_item_fails_the_whole_body() -> None:
    """A batch with one malformed message yields nothing (the ingress stores all or none)."""
    f = BY_PATH["whatsapp/cloud/batch.json"]
    body = copy.deepcopy(f.body())
    del body["entry"][0]["changes"][1]["value"]["statuses"][0]["recipient_id"]
    with pytest.raises(Malformed) as exc:
        normalize(f.provider, f.instance, body, RECEIVED_AT, "r")
    assert exc.value.field == "entry[0].changes[1].value.statuses[0].recipient_id"


def test_new_cloud_message_types_are_kept_as_other_not_rejected() -> None:
    """Meta adds message types; a message of a type this normalizer predates is still a
    message from someone (stored, content OTHER), not an error that makes Meta retry."""
    events = _run(
        "whatsapp/cloud/text.json", lambda b: _value(b)["messages"][0].update(type="hologram")
    )
    assert events[0].metadata.extra["type"] == "hologram"


def test_detect_format() -> None:
    formats = {
        f.path.split("/")[0] + "/" + f.format: detect_format(f.provider, f.body())
        for f in FIXTURES
        if f.outcome == "normalized"
    }
    assert formats == {
        "whatsapp/cloud": "whatsapp_cloud",
        "whatsapp/evolution": "evolution",
        "discord/forwarder": "discord_gateway",
    }


def test_evolution_revoke_reported_twice_is_one_event() -> None:
    """Evolution reports one revoke as messages.edited (type REVOKE) and as messages.delete;
    both give the same provider_event_id, so the ingress stores it once."""
    f = BY_PATH["whatsapp/evolution/revoke.json"]
    via_delete = {
        **f.body(),
        "event": "messages.delete",
        "data": {
            "remoteJid": "5511912345678@s.whatsapp.net",
            "fromMe": False,
            "id": "3EB0DD44EE55FF667788",
        },
    }
    a = f.normalize()[0]
    b = normalize(f.provider, f.instance, via_delete, RECEIVED_AT, "r")[0]
    assert (a.id, a.provider_event_id) == (b.id, b.provider_event_id)


def test_evolution_content_is_found_beside_sender_key_distribution() -> None:
    """Group messages often carry a senderKeyDistributionMessage first; without a
    messageType the content is still the text, not that key."""

    def mutate(b: Body) -> None:
        b["data"].pop("messageType")
        b["data"]["message"] = {
            "senderKeyDistributionMessage": {"groupId": "120363041967849074@g.us"},
            "conversation": "pode ser na quinta?",
        }

    events = _run("whatsapp/evolution/reply_mention.json", mutate)
    assert events[0].content_text == "pode ser na quinta?"
