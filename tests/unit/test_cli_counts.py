"""Counts before a noun said "1 stories", "1 events", "1 dead letters" in the CLI's
text output; one is singular now (``output.count``). JSON output keeps its keys and
numbers."""

from __future__ import annotations

from jetsource.cli.output import count, plural


def test_one_is_singular_and_the_rest_plural() -> None:
    assert count(1, "story") == "1 story"
    assert count(2, "story") == "2 stories"
    assert count(0, "event") == "0 events"
    assert count(1, "process") == "1 process"
    assert count(3, "process") == "3 processes"
    assert count(1, "dead letter") == "1 dead letter"
    assert count(2, "dead letter") == "2 dead letters"
    assert count(5, "identity") == "5 identities"
    assert count(2, "key") == "2 keys"  # a vowel before the y
    assert count(2, "datum", "data") == "2 data"
    assert [plural(w) for w in ("segment", "message", "session", "model")] == [
        "segments",
        "messages",
        "sessions",
        "models",
    ]
