"""What the raw archive keeps of a body holding credentials (redact.py): their values
replaced, every other byte as received; a look-alike inside a string value left alone."""

from __future__ import annotations

import json

import pytest

from jetsource.domains.omni import redact, signatures


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
            b'{"text": "say \\"apikey\\": \\"no\\"", "n": 7}',
            b'{"text": "say \\"apikey\\": \\"no\\"", "n": 7}',
            [],
        ),
        # Any value under a secret key goes, not only a string (a number, a list, an
        # object, null were archived as they came).
        (
            b'{"token": 7, "secret": {"a": [1, "]"]}, "authorization": ["Bearer S"], "x": 1}',
            b'{"token": "[redacted]", "secret": "[redacted]", "authorization": "[redacted]", '
            b'"x": 1}',
            ["token", "secret", "authorization"],
        ),
        # One rule of names, without case or separators: camelCase and prefixed ones too.
        (
            b'{"accessToken": "S1", "clientSecret": "S2", "x-auth-token": "S3", '
            b'"X_Webhook_Secret": "S4", "bearer": "kept"}',
            b'{"accessToken": "[redacted]", "clientSecret": "[redacted]", '
            b'"x-auth-token": "[redacted]", "X_Webhook_Secret": "[redacted]", "bearer": "kept"}',
            ["accessToken", "clientSecret", "x-auth-token", "X_Webhook_Secret"],
        ),
        # A form-encoded body: its fields as a query's.
        (
            b"a=1&apikey=S&api%5Fkey=S2",
            b"a=1&apikey=[redacted]&api%5Fkey=[redacted]",
            ["apikey", "api_key"],
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


def test_a_key_spelt_with_escapes_is_found_and_the_rest_kept_byte_for_byte() -> None:
    """The body was written again whole: 1e400 became Infinity, a long fraction was
    rounded, of a key sent twice one was lost."""
    sent = b'{"api\\u006bey": "SECRET", "n": 1e400, "f": 0.1000000000000000055, "d": 1, "d": 2}'
    kept, paths = redact.body(sent)
    assert paths == ["apikey"]
    assert kept == sent.replace(b'"SECRET"', b'"[redacted]"')
    assert json.loads(kept)["apikey"] == "[redacted]"


def test_headers_go_by_the_same_rule() -> None:
    headers = {"token": "S1", "x-webhook-secret": "S2", "x-auth-token": "S3", "apikey": "S4"}
    kept = {"x-signature-ed25519": "ab", "x-hub-signature-256": "sha256=ab", "accept": "*/*"}
    assert signatures.redacted({**headers, **kept}) == {
        **dict.fromkeys(headers, "[redacted]"),
        **kept,
    }


def test_query_parameters_and_the_listed_bound() -> None:
    assert redact.query("a=1&ApiKey=x&hub.verify_token=y&b") == (
        "a=1&ApiKey=[redacted]&hub.verify_token=[redacted]&b",
        ["?ApiKey", "?hub.verify_token"],
    )
    assert redact.query("a=1") == ("a=1", [])
    many = redact.listed([f"x{i}.{'k' * 300}" for i in range(150)])
    assert len(many) == 101 and many[-1] == "... and 50 more"
    assert all(len(p) <= redact.LISTED_CHARS + 3 for p in many)
