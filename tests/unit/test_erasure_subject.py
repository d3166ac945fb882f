"""``jetsource erase SUBJECT``'s check of the subject (projection/erasure.py): one that
shows nothing is refused naming ``subject``, as an empty one is."""

from __future__ import annotations

import pytest

from jetsource.core.errors import ValidationError
from jetsource.projection.erasure import check_subject


@pytest.mark.parametrize(
    "subject", ["", " ", "\t\n", "\u200b", "\ufeff", "\u3164", "\u2060", " \u200b\u00a0"]
)
def test_a_subject_that_shows_nothing_is_refused_naming_it(subject: str) -> None:
    """str.strip() took "\\u200b" (a zero-width space, a BOM, a Hangul filler) as a
    subject: an erasure of what nobody can see or type back."""
    with pytest.raises(ValidationError) as refused:
        check_subject(subject)
    assert refused.value.field == "subject"
    assert "the subject to erase is empty" in str(refused.value)


@pytest.mark.parametrize("subject", ["alice", "a\u200bb", "\u05e9\u05e8\u05d4", " bob "])
def test_a_subject_with_something_visible_is_taken(subject: str) -> None:
    check_subject(subject)
