"""What the raw archive keeps of a body holding credentials (redact.py): their values
replaced, every other byte as received; a look-alike inside a string value left alone."""

from __future__ import annotations

import json
import time
import tracemalloc

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


def _timed(raw: bytes) -> tuple[bytes, list[str], float]:
    start = time.perf_counter()
    kept, paths = redact.body(raw)
    return kept, paths, time.perf_counter() - start


@pytest.mark.parametrize(("depth", "values"), [(1000, 10000), (5000, 20000), (500, 20000)])
def test_many_values_deep_down_are_redacted_in_linear_time(depth: int, values: int) -> None:
    """Each redacted value's path was built by walking the whole nesting (json.loads of
    every key on the way), before any signature check: 1000 levels and 10,000 values
    (126 KB) took 21.7 s, 5000 levels did not end. Paths are built for the first LISTED
    values only, and a body nested past MAX_DEPTH is read flat (keys alone)."""
    sent = b'{"a":' * depth + b"[" + b'{"token":0},' * values + b"0]" + b"}" * depth
    kept, paths, took = _timed(sent)
    assert took < 2, took  # 0.05-0.3 s here
    assert kept == sent.replace(b'"token":0', b'"token":"[redacted]"')
    assert len(paths) == values
    listed = redact.listed(paths)
    assert listed[-1] == f"... and {values - redact.LISTED} more"
    if depth > redact.MAX_DEPTH:
        assert listed[0] == "token"  # read flat: the key alone
    else:
        assert listed[0].startswith("a.a.a.") and len(listed[0]) == redact.LISTED_CHARS + 3


def test_a_value_past_the_depth_bound_is_redacted_whatever_it_is() -> None:
    deep = b"[" * (redact.MAX_DEPTH + 5)
    sent = deep + b'{"x": 1, "clientSecret": {"a": ["s", "}"]}, "y": "token"}' + b"]" * 600
    kept, paths = redact.body(sent)
    assert kept == deep + b'{"x": 1, "clientSecret": "[redacted]", "y": "token"}' + b"]" * 600
    assert paths == ["clientSecret"]


@pytest.mark.parametrize(
    "tail",
    [
        b'"' + b"a" * (4 << 20) + b'"}',  # a long string
        b'"' + b"\\\\" * (2 << 20) + b'"}',  # backslashes
        b'"' + b'\\"' * (1 << 20) + b'"}',  # escaped quotes
        b"[" * (4 << 20) + b"}",  # brackets
        b'"' + b"\\" * (4 << 20),  # cut short in a run of backslashes
    ],
)
def test_a_large_body_is_read_in_bounded_memory(tail: bytes) -> None:
    """The string token's regex kept ~100 bytes of state per byte of a string (4 MiB:
    +455 MB) and a stack entry per bracket (4 MiB of '[': 405 MB). Now a body's peak is
    about two copies of it."""
    sent = b'{"apikey":"k","text":' + tail
    tracemalloc.start()
    try:
        kept, paths = redact.body(sent)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert paths == ["apikey"] and kept == sent.replace(b'"k"', b'"[redacted]"', 1)
    assert peak < 3 * len(sent), peak


@pytest.mark.parametrize(
    "key", ["api__key", "x-auth--token", "access_ _token", "API-KEY", "Client..Secret"]
)
def test_every_name_the_rule_takes_is_found_in_a_body(key: str) -> None:
    """The body's pre-check allowed one separator between letters where secret_name
    takes any run of them: {"api__key": "S"} was archived as it came."""
    assert redact.secret_name(key)
    sent = json.dumps({key: "S", "n": 1}).encode()
    assert redact.body(sent) == (sent.replace(b'"S"', b'"[redacted]"'), [key])


def test_only_ascii_is_folded() -> None:
    """str.lower folds U+212A KELVIN SIGN to k, which the body's pre-check (ASCII) did
    not: secret_name took "api\u212aey" yet its body was archived as it came. Names
    are compared folding ASCII only, as the pre-check does."""
    sent = '{"api\u212aey": "S"}'.encode()
    assert not redact.secret_name("api\u212aey")
    assert redact.body(sent) == (sent, [])
    assert redact.secret_name("APIKEY") and redact.secret_name("Api-Key")
