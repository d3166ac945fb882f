"""Discord's HTTP interactions (the ``interactions`` instance format): the normalizer's
output against hand-reviewed golden files, the fields a malformed interaction names, the
interaction responses, the Ed25519 signature check and the instance settings."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from jetsource.domains.omni import signatures
from jetsource.domains.omni.normalize import Malformed, Unrecognised, normalize
from jetsource.domains.omni.normalize import discord_interactions as di
from jetsource.domains.omni.settings import InstanceConfig
from jetsource.ingest.settings import IngestOptions
from tests.fixtures.omni import RECEIVED_AT
from tests.fixtures.omni_interactions import (
    GOLDEN,
    INSTANCE,
    MALFORMED,
    NORMALIZED,
    UNKNOWN,
    body,
    golden_text,
)
from tests.unit.omni.test_fuzz_fields import WRONG, _paths

# A fixed key: parameters built from it must be the same in every xdist worker.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
CONFIG = InstanceConfig(provider="discord", format="interactions", public_key=PUBLIC)


def signed(payload: bytes, stamp: str | None = None) -> dict[str, str]:
    ts = stamp or str(int(time.time()))
    return {
        "x-signature-ed25519": KEY.sign(ts.encode() + payload).hex(),
        "x-signature-timestamp": ts,
    }


@pytest.mark.parametrize("name", list(NORMALIZED))
def test_each_interaction_equals_its_golden_output(name: str) -> None:
    assert (GOLDEN / name).read_text() == golden_text(name)


def test_commands_components_and_modals_are_one_inbound_event_each() -> None:
    seen = set()
    for name, answer in NORMALIZED.items():
        events = normalize("discord", INSTANCE, body(name), RECEIVED_AT, "r", "interactions")
        if answer in (1, 8):  # PING and autocomplete store nothing
            assert events == [], name
            continue
        (ev,) = events
        assert ev.provider_event_id == body(name)["id"]
        assert ev.sender_handle and ev.conversation_id, name
        assert ev.content_text, name
        seen.add(ev.id)
    assert len(seen) == len(NORMALIZED) - 2  # distinct ids


def test_sender_is_the_member_in_a_guild_and_the_user_in_a_dm() -> None:
    (guild,) = normalize(
        "discord", INSTANCE, body("slash_command.json"), RECEIVED_AT, "r", "interactions"
    )
    assert guild.sender_handle == "80351110224678912"
    assert guild.guild_id == "1002" and not guild.recipient_handle
    assert guild.content_text.startswith("/ticket open topic:Billing question priority:2")
    assert json.loads(guild.metadata.extra["options"])[0]["options"][1]["value"] == 2
    (dm,) = normalize(
        "discord", INSTANCE, body("slash_command_dm.json"), RECEIVED_AT, "r", "interactions"
    )
    assert dm.sender_handle == "53908232506183680" and not dm.guild_id
    assert dm.recipient_handle == "1309958214380990464"  # the application's bot
    (menu,) = normalize(
        "discord", INSTANCE, body("select_menu.json"), RECEIVED_AT, "r", "interactions"
    )
    assert menu.content_text == "pick_team: billing, sales"
    assert json.loads(menu.metadata.extra["values"]) == ["billing", "sales"]
    # The interaction id is a snowflake: its time is the event's.
    assert guild.provider_timestamp.ToDatetime().year == 2024


@pytest.mark.parametrize(("name", "field"), list(MALFORMED.items()))
def test_a_malformed_interaction_names_its_field(name: str, field: str) -> None:
    with pytest.raises(Malformed) as caught:
        normalize("discord", INSTANCE, body(name), RECEIVED_AT, "r", "interactions")
    assert caught.value.field == field


@pytest.mark.parametrize("name", UNKNOWN)
def test_an_unknown_type_is_unrecognised(name: str) -> None:
    with pytest.raises(Unrecognised, match="interaction type 9"):
        normalize("discord", INSTANCE, body(name), RECEIVED_AT, "r", "interactions")


@pytest.mark.parametrize("name", [n for n in NORMALIZED if n not in ("ping.json",)])
def test_every_field_removed_or_mistyped_is_malformed_or_unrecognised(name: str) -> None:
    original = body(name)
    for path in _paths(original):
        for replacement in [None, *WRONG]:
            mutant: Any = copy.deepcopy(original)
            parent = mutant
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = replacement
            try:
                for ev in normalize("discord", INSTANCE, mutant, RECEIVED_AT, "r", "interactions"):
                    ev.SerializeToString()
            except (Malformed, Unrecognised):
                pass


def test_responses_in_both_modes() -> None:
    assert di.response(1, "message", "x") == {"type": 1}
    assert di.response(4, "deferred", "x") == {"type": 8, "data": {"choices": []}}
    assert di.response(2, "message", "Got it") == {
        "type": 4,
        "data": {"content": "Got it", "flags": 64},
    }
    assert di.response(2, "deferred", "x") == {"type": 5, "data": {"flags": 64}}
    assert di.response(5, "deferred", "x") == {"type": 5, "data": {"flags": 64}}
    assert di.response(3, "deferred", "x") == {"type": 6, "data": {"flags": 64}}


def test_the_ed25519_signature_is_checked_and_each_refusal_names_its_header() -> None:
    payload = b'{"type":1}'
    good = signed(payload)
    assert signatures.problem(CONFIG, good, payload) is None
    sig, ts = "x-signature-ed25519", "x-signature-timestamp"
    other = Ed25519PrivateKey.generate()
    cases: list[tuple[dict[str, str], bytes, str]] = [
        ({}, payload, sig),
        ({sig: good[sig]}, payload, ts),
        ({ts: good[ts]}, payload, sig),
        ({**good, sig: "zz" * 64}, payload, sig),  # not hex
        ({**good, sig: "ab" * 10}, payload, sig),  # too short
        ({**good, sig: "é" * 128}, payload, sig),  # not ASCII
        ({**good, sig: f"{good[sig]}, {good[sig]}"}, payload, sig),  # sent twice
        ({**good, ts: "yesterday"}, payload, ts),
        (good, payload + b" ", sig),  # the body changed
        ({**good, ts: str(int(good[ts]) + 1)}, payload, sig),  # the timestamp changed
        (
            {sig: other.sign(good[ts].encode() + payload).hex(), ts: good[ts]},
            payload,
            sig,
        ),  # another key
    ]
    for headers, sent, field in cases:
        found = signatures.problem(CONFIG, headers, sent)
        assert found is not None and found[0] == field, (headers, found)


def test_a_stale_timestamp_is_refused_within_the_documented_window() -> None:
    payload = b'{"type":1}'
    now = time.time()
    old = signed(payload, str(int(now) - 301))
    found = signatures.problem(CONFIG, old, payload, now)
    assert found is not None and found[0] == "x-signature-timestamp"
    assert signatures.problem(CONFIG, signed(payload, str(int(now) - 299)), payload, now) is None
    assert signatures.problem(CONFIG, signed(payload, str(int(now) + 299)), payload, now) is None
    lax = CONFIG.model_copy(update={"timestamp_tolerance_s": 0})
    assert signatures.problem(lax, old, payload, now) is None


@pytest.mark.parametrize(
    "key",
    ["", "abc", "zz" * 32, PUBLIC + "00", " " * 64, "g" * 64],
)
def test_a_public_key_that_is_no_ed25519_key_is_refused_naming_the_setting(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        IngestOptions.model_validate(
            {
                "instances": {
                    "app": {"provider": "discord", "format": "interactions", "public_key": key}
                }
            }
        )
    text = str(caught.value)
    assert "public_key" in text and "instances.app" in text


def test_an_interactions_instance_needs_a_public_key_and_is_discord_only() -> None:
    with pytest.raises(ValidationError, match="needs public_key"):
        InstanceConfig(provider="discord", format="interactions")
    with pytest.raises(ValidationError, match="has no format 'interactions'"):
        InstanceConfig(provider="whatsapp", format="interactions", public_key=PUBLIC)
    upper = InstanceConfig(provider="discord", format="interactions", public_key=PUBLIC.upper())
    assert upper.public_key == PUBLIC
    with pytest.raises(ValidationError, match="interaction_response"):
        InstanceConfig(
            provider="discord", format="interactions", public_key=PUBLIC, interaction_response="x"
        )


@pytest.mark.parametrize(
    ("at", "field"),
    [
        (("application_id",), "application_id"),
        (("user", "id"), "user.id"),
    ],
)
def test_a_handle_over_256_characters_is_malformed_naming_it(
    at: tuple[str, ...], field: str
) -> None:
    """The application (a DM's recipient) and the user are handles: the identity
    service's bound is checked where they are read."""
    dm = body("slash_command_dm.json")
    parent: Any = dm
    for step in at[:-1]:
        parent = parent[step]
    parent[at[-1]] = "1" * 257
    with pytest.raises(Malformed) as caught:
        normalize("discord", INSTANCE, dm, RECEIVED_AT, "r", "interactions")
    assert caught.value.field == field
