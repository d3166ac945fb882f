"""What each kind of provider event means, checked field by field (independently of the golden
files, which could have been regenerated from a mistake)."""

from __future__ import annotations

from datetime import UTC, datetime

from jetsource._gen.omni.v1 import events_pb2 as pb
from tests.fixtures.omni import FIXTURES

BY_PATH = {f.path: f for f in FIXTURES}


def one(path: str) -> pb.NormalizedEvent:
    events = BY_PATH[path].normalize()
    assert len(events) == 1, events
    return events[0]


# --- WhatsApp Cloud API ---------------------------------------------------------------------

CLOUD = "whatsapp/cloud/"
BUSINESS, SHEENA = "15550783881", "16505551234"


def test_cloud_text_is_an_inbound_message_from_the_user_to_the_business() -> None:
    e = one(CLOUD + "text.json")
    assert (e.event_type, e.direction) == (pb.EVENT_TYPE_MESSAGE, pb.DIRECTION_INBOUND)
    assert (e.sender_handle, e.recipient_handle, e.conversation_id) == (SHEENA, BUSINESS, SHEENA)
    assert e.sender_name == "Sheena Nelson"
    assert e.content_type == pb.CONTENT_TYPE_TEXT
    assert e.content_text == "Does it come in another color?"
    assert e.provider_timestamp.ToDatetime(UTC) == datetime(2026, 11, 30, 14, 0, tzinfo=UTC)


def test_cloud_media_keep_their_ids_and_captions() -> None:
    kinds = {
        "image.json": pb.CONTENT_TYPE_IMAGE,
        "audio_voice.json": pb.CONTENT_TYPE_AUDIO,
        "video.json": pb.CONTENT_TYPE_VIDEO,
        "document.json": pb.CONTENT_TYPE_DOCUMENT,
        "sticker.json": pb.CONTENT_TYPE_STICKER,
    }
    for name, kind in kinds.items():
        e = one(CLOUD + name)
        assert e.content_type == kind, name
        assert e.metadata.media[0].media_id.isdigit(), name
    assert one(CLOUD + "audio_voice.json").metadata.media[0].voice
    doc = one(CLOUD + "document.json")
    assert doc.metadata.media[0].file_name == "invoice-2026-113.pdf"
    assert "my invoice" in doc.content_text and "invoice-2026-113.pdf" in doc.content_text
    sticker = one(CLOUD + "sticker.json")
    assert list(sticker.metadata.sticker_ids) == ["1228475095224738"]


def test_cloud_location_and_contacts() -> None:
    loc = one(CLOUD + "location.json")
    assert (loc.metadata.location.latitude, loc.metadata.location.longitude) == (
        37.483872,
        -122.148358,
    )
    assert "Philz Coffee" in loc.content_text
    c = one(CLOUD + "contacts.json").metadata.contacts[0]
    assert c.formatted_name == "Barbara J. Johnson"
    assert (c.phones[0].wa_id, c.emails[0], c.organization) == (
        "19405551234",
        "bjohnson@example.com",
        "Lucky Shrub",
    )


def test_cloud_reaction_and_its_removal() -> None:
    added = one(CLOUD + "reaction.json")
    removed = one(CLOUD + "reaction_removed.json")
    for e in (added, removed):
        assert e.event_type == pb.EVENT_TYPE_REACTION
        assert e.metadata.reactions[0].target_message_id.startswith("wamid.")
        assert e.metadata.reactions[0].reactor_handle == SHEENA
    assert (added.metadata.reactions[0].emoji, added.metadata.reactions[0].removed) == ("👍", False)
    assert (removed.metadata.reactions[0].emoji, removed.metadata.reactions[0].removed) == (
        "",
        True,
    )
    assert added.provider_event_id != removed.provider_event_id


def test_cloud_reply_edit_and_revoke_point_at_their_messages() -> None:
    text_id = one(CLOUD + "text.json").provider_event_id
    reply = one(CLOUD + "reply.json")
    assert reply.metadata.quoted.message_id.startswith("wamid.")
    assert reply.metadata.quoted.sender_handle == BUSINESS
    edit = one(CLOUD + "edit.json")
    assert edit.event_type == pb.EVENT_TYPE_EDIT
    assert edit.metadata.edit.target_message_id == text_id
    assert edit.content_text == edit.metadata.edit.new_text
    assert "blue" in edit.content_text
    revoke = one(CLOUD + "revoke.json")
    assert revoke.event_type == pb.EVENT_TYPE_DELETE
    assert revoke.metadata.deletion.target_message_id == reply.provider_event_id
    assert revoke.metadata.deletion.for_everyone


def test_cloud_receipts_sent_delivered_read_failed() -> None:
    states = {
        "status_sent.json": pb.RECEIPT_STATUS_SENT,
        "status_delivered.json": pb.RECEIPT_STATUS_DELIVERED,
        "status_read.json": pb.RECEIPT_STATUS_READ,
        "status_failed.json": pb.RECEIPT_STATUS_FAILED,
    }
    ids = set()
    for name, state in states.items():
        e = one(CLOUD + name)
        assert e.event_type == pb.EVENT_TYPE_STATUS and e.direction == pb.DIRECTION_OUTBOUND
        assert e.metadata.receipt.status == state
        assert e.sender_handle == BUSINESS
        assert e.provider_event_id == f"{e.metadata.receipt.target_message_id}:{name[7:-5]}"
        ids.add(e.provider_event_id)
    assert len(ids) == 4  # one wamid, four receipts: four events
    failed = one(CLOUD + "status_failed.json").metadata.receipt.errors[0]
    assert failed.code == "131047" and "24 hours" in failed.message


def test_cloud_batch_keeps_every_item_in_order() -> None:
    events = BY_PATH[CLOUD + "batch.json"].normalize()
    assert [e.event_type for e in events] == [
        pb.EVENT_TYPE_MESSAGE,
        pb.EVENT_TYPE_MESSAGE,
        pb.EVENT_TYPE_STATUS,
    ]
    assert [e.content_text for e in events[:2]] == [
        "Hi, is the store open on Sunday?",
        "And do you have parking?",
    ]


def test_cloud_echo_is_outbound_and_system_notices_are_system() -> None:
    echo = one(CLOUD + "message_echo.json")
    assert echo.direction == pb.DIRECTION_OUTBOUND
    assert (echo.sender_handle, echo.recipient_handle) == (BUSINESS, SHEENA)
    system = one(CLOUD + "system_changed_number.json")
    assert (system.event_type, system.direction) == (pb.EVENT_TYPE_SYSTEM, pb.DIRECTION_SYSTEM)
    assert system.metadata.extra["system_new_wa_id"] == "16505550000"
    unsupported = one(CLOUD + "unsupported.json")
    assert unsupported.content_type == pb.CONTENT_TYPE_OTHER
    assert "131051" in unsupported.metadata.extra["error_0"]


def test_cloud_interactive_replies_carry_the_chosen_title() -> None:
    button = one(CLOUD + "interactive_button_reply.json")
    assert (button.content_type, button.content_text) == (
        pb.CONTENT_TYPE_INTERACTIVE,
        "Yes, confirm",
    )
    assert button.metadata.extra["reply_id"] == "confirm-order-113"
    listed = one(CLOUD + "interactive_list_reply.json")
    assert listed.content_text == "Tuesday 10:00 In store, Palo Alto"
    assert one(CLOUD + "button.json").metadata.extra["button_payload"] == "STOP_PROMOTIONS"


# --- Evolution API --------------------------------------------------------------------------

EVO = "whatsapp/evolution/"
OWN, MARIA, JOAO = "5511987650000", "5511912345678", "5521998887777"
GROUP = "120363041967849074@g.us"


def test_evolution_jids_become_phone_handles_that_meet_cloud_wa_ids() -> None:
    e = one(EVO + "text.json")
    assert (e.sender_handle, e.recipient_handle, e.conversation_id) == (MARIA, OWN, MARIA)
    assert (e.direction, e.sender_name) == (pb.DIRECTION_INBOUND, "Maria Souza")
    assert e.content_text == "Oi! Vocês entregam em Campinas?"


def test_evolution_group_message_names_the_participant_and_the_quote() -> None:
    e = one(EVO + "reply_mention.json")
    assert (e.sender_handle, e.conversation_id) == (JOAO, GROUP)
    assert e.metadata.quoted.message_id == "3EB0B8D7E1A2C3F4A5B6"
    assert e.metadata.quoted.text == "Qual dia fica melhor para a entrega?"
    assert list(e.metadata.mentions) == [OWN]


def test_evolution_media_prefers_the_stored_copy_and_keeps_voice_notes() -> None:
    image = one(EVO + "image.json")
    assert image.content_media_url.startswith("https://s3.example.com/")
    assert image.metadata.media[0].size_bytes == 58231
    audio = one(EVO + "audio_ptt.json")
    assert audio.content_type == pb.CONTENT_TYPE_AUDIO
    assert audio.metadata.media[0].voice and audio.metadata.media[0].duration_seconds == 9
    assert one(EVO + "document.json").metadata.media[0].file_name == "comprovante.pdf"
    sticker = one(EVO + "sticker.json")
    assert sticker.metadata.stickers[0].animated and sticker.metadata.sticker_ids


def test_evolution_contacts_are_read_from_their_vcards() -> None:
    c = one(EVO + "contact.json").metadata.contacts[0]
    assert (c.formatted_name, c.first_name, c.last_name) == ("Carla Souza", "Carla", "Souza")
    assert c.phones[0].wa_id == "5511955554444" and c.organization == "Padaria Estrela"
    many = one(EVO + "contacts_array.json")
    assert [x.formatted_name for x in many.metadata.contacts] == ["Carla Souza", "Pedro Alves"]
    assert many.metadata.contacts[1].phones[0].type == "CELL"


def test_evolution_poll_and_one_vote_event_per_voter() -> None:
    poll = one(EVO + "poll_create.json")
    assert poll.content_type == pb.CONTENT_TYPE_POLL
    assert [o.name for o in poll.metadata.poll.options] == ["Manhã", "Tarde", "Noite"]
    assert poll.metadata.poll.selectable_count == 1 and poll.direction == pb.DIRECTION_OUTBOUND
    votes = BY_PATH[EVO + "poll_votes.json"].normalize()
    assert {(v.sender_handle, tuple(v.metadata.poll_vote.selected_options)) for v in votes} == {
        (JOAO, ("Manhã",)),
        (MARIA, ("Tarde",)),
    }
    assert all(v.metadata.poll_vote.poll_message_id == poll.provider_event_id for v in votes)


def test_evolution_reactions_edits_revokes_and_deletes() -> None:
    added, removed = one(EVO + "reaction.json"), one(EVO + "reaction_removed.json")
    assert added.metadata.reactions[0].emoji == "❤️" and not added.metadata.reactions[0].removed
    assert removed.metadata.reactions[0].removed
    edit = one(EVO + "edit.json")
    assert edit.event_type == pb.EVENT_TYPE_EDIT
    assert edit.metadata.edit.target_message_id == one(EVO + "text.json").provider_event_id
    assert edit.content_text == "Oi! Vocês entregam em Campinas e Valinhos?"
    revoke, delete = one(EVO + "revoke.json"), one(EVO + "delete.json")
    for e in (revoke, delete):
        assert e.event_type == pb.EVENT_TYPE_DELETE
        assert e.provider_event_id == e.metadata.deletion.target_message_id + ":delete"
    protocol = one(EVO + "protocol_ephemeral.json")
    assert protocol.event_type == pb.EVENT_TYPE_PROTOCOL
    assert protocol.metadata.protocol.kind == "ephemeral_setting"


def test_evolution_receipts_map_baileys_statuses() -> None:
    states = {
        "status_server_ack.json": pb.RECEIPT_STATUS_SENT,
        "status_delivery_ack.json": pb.RECEIPT_STATUS_DELIVERED,
        "status_read.json": pb.RECEIPT_STATUS_READ,
        "status_played.json": pb.RECEIPT_STATUS_PLAYED,
        "status_error.json": pb.RECEIPT_STATUS_FAILED,
    }
    for name, state in states.items():
        e = one(EVO + name)
        assert e.event_type == pb.EVENT_TYPE_STATUS and e.metadata.receipt.status == state
        assert e.direction == pb.DIRECTION_OUTBOUND and e.sender_handle == OWN


def test_evolution_presence_and_outbound_and_upper_case_event_names() -> None:
    typing = one(EVO + "presence_composing.json")
    assert typing.event_type == pb.EVENT_TYPE_PRESENCE
    assert typing.metadata.presence.status == pb.PRESENCE_STATUS_TYPING
    online = one(EVO + "presence_available.json")
    assert online.metadata.presence.status == pb.PRESENCE_STATUS_ONLINE
    assert online.metadata.presence.HasField("last_seen")
    sent = one(EVO + "send_message.json")
    assert (sent.direction, sent.sender_handle, sent.recipient_handle) == (
        pb.DIRECTION_OUTBOUND,
        OWN,
        MARIA,
    )
    assert one(EVO + "upsert_uppercase_event.json").content_text.startswith("Obrigado!")


# --- Discord --------------------------------------------------------------------------------

DC = "discord/"
NELLY, KAZ, BOT = "80351110224678912", "1033283617364955136", "1100000000000000001"


def test_discord_message_reply_and_mentions() -> None:
    text = one(DC + "text.json")
    assert (text.sender_handle, text.sender_name, text.guild_id) == (
        NELLY,
        "Nelly",
        "197038439483310086",
    )
    assert text.conversation_id == text.channel_id == "1049876543210987654"
    reply = one(DC + "reply.json")
    assert reply.metadata.quoted.message_id == text.provider_event_id
    assert reply.metadata.quoted.sender_handle == NELLY
    assert list(reply.metadata.mentions) == [NELLY]


def test_discord_attachments_by_content_type() -> None:
    kinds = {
        "image.json": pb.CONTENT_TYPE_IMAGE,
        "voice_message.json": pb.CONTENT_TYPE_AUDIO,
        "video.json": pb.CONTENT_TYPE_VIDEO,
        "document.json": pb.CONTENT_TYPE_DOCUMENT,
        "sticker.json": pb.CONTENT_TYPE_STICKER,
        "poll.json": pb.CONTENT_TYPE_POLL,
    }
    for name, kind in kinds.items():
        assert one(DC + name).content_type == kind, name
    voice = one(DC + "voice_message.json").metadata.media[0]
    assert voice.voice and voice.duration_seconds == 7
    assert one(DC + "image.json").content_media_url.startswith("https://cdn.discordapp.com/")
    assert one(DC + "sticker.json").metadata.stickers[0].format == "lottie"


def test_discord_poll_and_votes_added_and_removed() -> None:
    poll = one(DC + "poll.json").metadata.poll
    assert [(o.option_id, o.name) for o in poll.options] == [
        ("1", "Sage"),
        ("2", "Sand"),
        ("3", "Night"),
    ]
    added, removed = one(DC + "poll_vote_add.json"), one(DC + "poll_vote_remove.json")
    assert list(added.metadata.poll_vote.selected_option_ids) == ["2"]
    assert removed.metadata.poll_vote.removed and not added.metadata.poll_vote.removed
    assert added.provider_event_id != removed.provider_event_id


def test_discord_reactions_including_custom_emoji() -> None:
    added, removed = one(DC + "reaction_add.json"), one(DC + "reaction_remove.json")
    assert added.metadata.reactions[0].emoji == "🔥" and added.recipient_handle == NELLY
    assert removed.metadata.reactions[0].removed
    custom = one(DC + "reaction_custom_emoji.json").metadata.reactions[0]
    assert (custom.emoji, custom.emoji_id) == ("acme_heart", "1049877000000000001")


def test_discord_edit_update_and_deletes() -> None:
    edit = one(DC + "edit.json")
    assert edit.event_type == pb.EVENT_TYPE_EDIT
    assert edit.metadata.edit.target_message_id == one(DC + "text.json").provider_event_id
    assert edit.metadata.edit.new_text.endswith("(the sage one)")
    assert one(DC + "embed_update.json").event_type == pb.EVENT_TYPE_PROTOCOL
    bulk = BY_PATH[DC + "delete_bulk.json"].normalize()
    assert [e.metadata.deletion.target_message_id for e in bulk] == [
        "1313000000000000006",
        "1313000000000000007",
    ]
    assert one(DC + "delete.json").event_type == pb.EVENT_TYPE_DELETE


def test_discord_presence_typing_system_dm_outbound_threads() -> None:
    presence = one(DC + "presence.json")
    assert presence.metadata.presence.status == pb.PRESENCE_STATUS_IDLE
    assert list(presence.metadata.presence.activities) == ["Stardew Valley"]
    assert one(DC + "typing.json").metadata.presence.status == pb.PRESENCE_STATUS_TYPING
    join = one(DC + "system_member_join.json")
    assert (join.event_type, join.direction) == (pb.EVENT_TYPE_SYSTEM, pb.DIRECTION_SYSTEM)
    dm = one(DC + "dm_text.json")
    assert (dm.direction, dm.recipient_handle, dm.guild_id) == (pb.DIRECTION_INBOUND, BOT, "")
    out = one(DC + "bot_outbound.json")
    assert (out.direction, out.sender_handle) == (pb.DIRECTION_OUTBOUND, BOT)
    in_thread = one(DC + "thread_message.json")
    assert in_thread.thread_id == in_thread.channel_id == "1312345678901234567"
    started = one(DC + "thread_started.json").metadata.thread
    assert (started.thread_id, started.name) == ("1312345678901234567", "Sizing questions")


def test_evolution_lid_addressed_people_keep_their_phone_handle() -> None:
    """WhatsApp may address a person by LID (a privacy id); Evolution gives the phone JID
    beside it, and the handle stays the phone number the person has everywhere else."""
    direct = one(EVO + "lid_text.json")
    assert (direct.sender_handle, direct.conversation_id) == (JOAO, JOAO)
    assert direct.metadata.extra["remoteJid_lid"] == "208916402933123@lid"
    group = one(EVO + "lid_group_text.json")
    assert (group.sender_handle, group.conversation_id) == (MARIA, GROUP)
    assert group.metadata.extra["participant_lid"] == "73521984001234@lid"


def test_cloud_group_messages_and_receipts_are_keyed_by_the_group() -> None:
    group = "Y2FwaV9ncm91cDoxNTU1MDc4Mzg4MToxMjAzNjMwNDE5Njc4NDk="
    msg = one(CLOUD + "group_text.json")
    assert (msg.sender_handle, msg.conversation_id) == ("16505559876", group)
    read = one(CLOUD + "group_status_read.json")
    assert (read.recipient_handle, read.conversation_id) == ("16505559876", group)
    assert read.metadata.receipt.status == pb.RECEIPT_STATUS_READ
