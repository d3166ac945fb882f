"""``jetsource erase SUBJECT``'s check of the subject (projection/erasure.py): only a
subject no write path records is refused, naming ``subject``: "" and what the one-line
rule of a context command's actor refuses (core.printable.not_one_line_at). A subject
that shows nothing ("\\u3164", "\\u200b", " ") is one a context command records as its
actor, sealed under its key: it must stay erasable."""

from __future__ import annotations

import pytest

from jetsource.core.errors import ValidationError
from jetsource.domains.context import model as m
from jetsource.projection.erasure import check_subject


def test_an_empty_subject_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError) as refused:
        check_subject("")
    assert refused.value.field == "subject"
    assert "the subject to erase is empty" in str(refused.value)


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("\x00", "a control character (U+0000 at position 0)"),
        ("ana\x1b[2J", "a control character (U+001B at position 3)"),
        ("\t\n", "a control character (U+0009 at position 0)"),
        ("a\u2028b", "a line separator (U+2028 at position 1)"),
    ],
)
def test_a_subject_no_write_path_records_is_refused_naming_it(subject: str, shown: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_subject(subject)
    assert refused.value.field == "subject"
    assert shown in str(refused.value)
    with pytest.raises(ValidationError):  # the context commands' actor rule refuses it too
        m.one_line(subject, "options.actor")


@pytest.mark.parametrize(
    "subject",
    [
        *("\u3164", "\u200b", "\ufeff", "\u115f", "\u2060", " ", "  ", " \u200b\u00a0"),
        *("alice", "a\u200bb", "\u05e9\u05e8\u05d4", " bob "),
    ],
)
def test_a_subject_a_context_command_records_is_taken(subject: str) -> None:
    """1875b42's blank rule refused "\\u3164" or " ", and the old strip() " ": actors a
    context command takes (its one-line rule) and seals; that person could not be
    erased."""
    m.one_line(subject, "options.actor")  # the write path records it
    check_subject(subject)
