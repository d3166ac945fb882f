"""The omni reads' checks of what a read names (domains/omni/reads.py): a character no
stored record holds is refused naming the field and the character; answers show the
rest escaped."""

from __future__ import annotations

import pytest

from jetsource.core.errors import ValidationError
from jetsource.domains.omni.reads import instance_name, provider_name, read_text, shown


@pytest.mark.parametrize("ch", ["\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029"])
@pytest.mark.parametrize("ident", [False, True])
def test_a_control_character_is_refused_naming_the_field_and_the_character(
    ch: str, ident: bool
) -> None:
    with pytest.raises(ValidationError) as caught:
        read_text(f"ab{ch}c", "conversation_id", ident=ident)
    message = str(caught.value)
    assert caught.value.field == "conversation_id"
    assert message.startswith("conversation_id holds ")
    assert f"U+{ord(ch):04X} at position 2" in message
    assert ch not in message


@pytest.mark.parametrize("ch", ["\u202a", "\u202e", "\u2066", "\u2069"])
def test_a_bidi_control_is_refused_in_an_id_of_ours_and_kept_in_the_providers_text(
    ch: str,
) -> None:
    assert read_text(f"55{ch}1", "external_id") == f"55{ch}1"
    with pytest.raises(ValidationError) as caught:
        read_text(f"ev{ch}", "event_id", ident=True)
    assert f"a bidi control (U+{ord(ch):04X} at position 2)" in str(caught.value)
    assert ch not in str(caught.value)


def test_plain_and_right_to_left_text_is_taken() -> None:
    for value in ("", "5511999", "120363@g.us", "\u05e9\u05dc\u05d5\u05dd", "a\u200fb"):
        assert read_text(value, "external_id") == value
        assert read_text(value, "event_id", ident=True) == value


def test_filters_refuse_a_control_character_before_their_own_rule() -> None:
    with pytest.raises(ValidationError, match=r"provider holds a control character \(U\+0000"):
        provider_name("whatsapp\x00")
    with pytest.raises(ValidationError, match=r"instance holds a bidi control \(U\+202E"):
        instance_name("acme\u202e")
    assert provider_name("") == "" and instance_name("acme-cloud") == "acme-cloud"


def test_shown_escapes_what_a_terminal_must_not_get_raw() -> None:
    assert shown("55\u202e1") == "55\\u202e1"
    assert shown("a\x1b[2J") == "a\\x1b[2J"
    assert shown("5511999") == "5511999"


def test_shown_escapes_the_line_separators_too() -> None:
    assert shown("a\u2028b\u2029") == "a\\u2028b\\u2029"
