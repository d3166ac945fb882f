"""What the raw archive keeps of a body holding credentials (redact.py): their values
replaced, every other byte as received; a look-alike inside a string value left alone."""

from __future__ import annotations

import json

import pytest

from jetsource.domains.omni import redact


@pytest.mark.parametrize(
    ("sent", "kept", "paths"),
    [
        # Spacing, escapes and numbers as written; any depth, any case of the key.
        (
            b'{"apikey" :\t"k\\"1",\n "data": [{"ToKeN":"t"}], "n": 1.50, "e": "\\u00e9"}',
            b'{"apikey" :\t"[redacted]",\n "data": [{"ToKeN":"[redacted]"}], "n": 1.50, '
            b'"e": "\\u00e9"}',
            ["apikey", "data[0].ToKeN"],
        ),
        # The key's words inside a string value are text, not a key.
        (
            b'{"text": "say \\"apikey\\": \\"no\\"", "token": 7, "secret": {"a": 1}}',
            b'{"text": "say \\"apikey\\": \\"no\\"", "token": 7, "secret": {"a": 1}}',
            [],
        ),
        # A string ending in an escaped backslash, then a real key.
        (
            b'{"a": "x\\\\", "password": "p"}',
            b'{"a": "x\\\\", "password": "[redacted]"}',
            ["password"],
        ),
        # No JSON (cut short inside the value): the value still goes; the key is named.
        (b'{"event": "x", "apikey": "ABCD', b'{"event": "x", "apikey": "[redacted]"', ["apikey"]),
        (b"not json at all", b"not json at all", []),
    ],
)
def test_values_go_and_everything_else_stays(sent: bytes, kept: bytes, paths: list[str]) -> None:
    assert redact.body(sent) == (kept, paths)


def test_a_key_spelt_with_escapes_is_found_and_the_body_written_again() -> None:
    sent = b'{"api\\u006bey": "SECRET", "n": [1, 2]}'
    kept, paths = redact.body(sent)
    assert b"SECRET" not in kept and paths == ["apikey"]
    assert json.loads(kept) == {"apikey": "[redacted]", "n": [1, 2]}


def test_query_parameters_and_the_listed_bound() -> None:
    assert redact.query("a=1&ApiKey=x&hub.verify_token=y&b") == (
        "a=1&ApiKey=[redacted]&hub.verify_token=[redacted]&b",
        ["?ApiKey", "?hub.verify_token"],
    )
    assert redact.query("a=1") == ("a=1", [])
    many = redact.listed([f"x{i}.{'k' * 300}" for i in range(150)])
    assert len(many) == 101 and many[-1] == "... and 50 more"
    assert all(len(p) <= redact.LISTED_CHARS + 3 for p in many)
