"""Values no provider sends but anyone can, at every field of every fixture: numbers that
are no 64-bit integer or no finite float, digits that are not ASCII, overlong handles.
The normalizer raises Malformed (naming a field) or Unrecognised, or returns events that
can be stored as they are (they serialize, and every handle is one the identity service
takes); never another exception, which the ingress would answer 500.

Also the pieces of the ingress's checks that are pure: integer parsing, lone surrogates
found by path, signature headers of any characters, processing steps and handles with
lone surrogates."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from jetsource.core.errors import ValidationError
from jetsource.domains.omni import identity, processing, signatures
from jetsource.domains.omni.normalize import Malformed, Unrecognised, normalize
from jetsource.domains.omni.normalize.common import (
    MAX_HANDLE,
    Node,
    as_int,
    surrogate_path,
)
from jetsource.domains.omni.normalize.evolution import handle
from jetsource.domains.omni.settings import InstanceConfig
from tests.fixtures.omni import FIXTURES, RECEIVED_AT, Fixture

HOSTILE: list[Any] = [
    10**400,  # json reads a 401-digit literal; float() of it overflows
    -(10**400),
    2**64,
    -(2**63) - 1,
    "1796047200\u00b2",  # a superscript two: str.isdigit() says yes, int() no
    "\uff11\uff17\uff19\uff16",  # fullwidth digits, which int() reads
    "1" * 5000,  # past int()'s own digit limit
    "9" * 21,
    "1" * (MAX_HANDLE + 1),
    "1" * 300 + "@s.whatsapp.net",
    {"low": 1, "high": "x"},
    {"low": 1, "high": 2**40},
    {"low": True},
    "0001-01-01T00:00:00+01:00",  # valid ISO 8601, before year 1 in UTC
    "9999-12-31T23:59:59-01:00",
]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


@pytest.mark.parametrize(
    "fixture", [f for f in FIXTURES if f.outcome == "normalized"], ids=lambda f: f.path
)
def test_hostile_values_at_every_field_fail_cleanly_or_normalize_storably(
    fixture: Fixture,
) -> None:
    body = fixture.body()
    for path in _leaves(body):
        for value in HOSTILE:
            mutant = copy.deepcopy(body)
            parent: Any = mutant
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
            label = f"{fixture.path} {path}={str(value)[:20]!r}"
            try:
                events = normalize(fixture.provider, fixture.instance, mutant, RECEIVED_AT, "r")
            except Malformed as exc:
                assert exc.field, label
                continue
            except Unrecognised:
                continue
            except Exception as exc:  # pragma: no cover - the failure this test exists for
                pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
            for ev in events:
                ev.SerializeToString()
                for h in (ev.sender_handle, ev.recipient_handle):
                    if h:
                        identity.check_handle(ev.provider, h)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        ("1796047200", 1796047200),
        (2**64 - 1, 2**64 - 1),
        ("9" * 20, None),  # 20 digits, over 2**64
        ({"low": 5, "high": 1}, (1 << 32) | 5),
        ({"low": -1, "high": -1}, -1),
        ({"low": -1, "high": -1, "unsigned": True}, 2**64 - 1),
        ({"low": 7}, 7),
        ("1796047200\u00b2", None),
        ("\uff11\uff12", None),
        ("\u0661", None),
        ("1" * 5000, None),
        ("", None),
        ("-5", None),
        (True, None),
        (1.5, None),
        (2**64, None),
        (-(2**63) - 1, None),
        ({"low": 1, "high": "x"}, None),
        ({"low": "1"}, None),
        ({"low": 2**32}, None),
    ],
)
def test_integers_are_ascii_digits_within_64_bits(value: Any, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(Malformed) as caught:
            as_int(value, "f")
        assert caught.value.field.startswith("f")
    else:
        assert as_int(value, "f") == expected


@pytest.mark.parametrize("value", [10**400, -(10**400), float("inf")])
def test_a_float_field_refuses_what_is_no_finite_number(value: Any) -> None:
    with pytest.raises(Malformed, match="finite number"):
        Node({"x": value}).opt_float("x")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"a": [{"b": "x\\ud800"}]}', "a[0].b"),
        ('{"a": {"k\\udc00": 1}}', "a.k\\udc00"),
        ('{"a": ["ok", "\\udfff"]}', "a[1]"),
        ('{"a": "\\ud83d\\ude00"}', None),  # a pair: one character
        ('{"a": "\\\\ud800"}', None),  # an escaped backslash and the letters
        ('{"a": "plain"}', None),
    ],
)
def test_a_lone_surrogate_is_found_by_its_path(text: str, path: str | None) -> None:
    assert surrogate_path(json.loads(text), text) == path


@pytest.mark.parametrize(
    "given", ["sha256=\xe9", "sha256=" + "\xe9" * 64, "sha256=" + "\u0661" * 64, "\ud800"]
)
def test_a_signature_of_any_characters_is_a_reason_not_an_exception(given: str) -> None:
    cloud = InstanceConfig(provider="whatsapp", format="cloud", app_secret=SecretStr("s"))
    bot = InstanceConfig(provider="discord", format="forwarder", shared_secret=SecretStr("s"))
    evo = InstanceConfig(provider="whatsapp", format="evolution", api_key=SecretStr("k"))
    for config in (cloud, bot, evo):
        header = signatures.SIGNATURE_HEADERS[config.format]
        problem = signatures.problem(config, {header: given}, b"{}")
        assert problem is not None and problem[0] == header, (config.format, problem)
        assert header in problem[1], (config.format, problem)


def test_a_signature_still_matches_as_before() -> None:
    cloud = InstanceConfig(provider="whatsapp", format="cloud", app_secret=SecretStr("s"))
    good = signatures.sign("s", b"{}")
    for given in (good, good.upper().replace("SHA256=", "sha256="), f"  {good} "):
        assert signatures.problem(cloud, {"x-hub-signature-256": given}, b"{}") is None, given
    assert signatures.problem(cloud, {"x-hub-signature-256": good[:-1]}, b"{}") is not None


@pytest.mark.parametrize(
    ("field", "worker", "reason"), [("worker", "w\ud800", ""), ("reason", "w", "x\udfff")]
)
def test_a_processing_step_with_a_lone_surrogate_is_refused_naming_the_field(
    field: str, worker: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        processing.check_step("ev-1", "failed", worker, 1, reason)
    assert caught.value.field == field


def test_a_handle_with_a_lone_surrogate_or_too_long_is_refused_by_the_identities() -> None:
    assert identity.MAX_EXTERNAL_ID == MAX_HANDLE
    for bad in ("a\udc80", "1" * (MAX_HANDLE + 1)):
        with pytest.raises(ValidationError) as caught:
            identity.check_handle("whatsapp", bad)
        assert caught.value.field == "external_id"
    with pytest.raises(ValidationError) as caught:
        identity.check_text("Ana\udcff", "name", identity.MAX_NAME)
    assert caught.value.field == "name"


def test_a_jid_server_is_compared_without_case() -> None:
    assert handle("5511999990000@S.WHATSAPP.NET") == "5511999990000"
    assert handle("5511999990000@C.us") == "5511999990000"
    assert handle("120363000000000000@g.us") == "120363000000000000@g.us"
    # JIDs kept whole (LIDs, groups) too: 1@LID was a handle, and an identity, apart
    # from 1@lid, and a LID in upper case beside the phone JID was not taken for one.
    assert handle("208916402933123@LID") == "208916402933123@lid"
    assert handle("120363000000000000@G.US") == "120363000000000000@g.us"
    assert handle("") == ""


@pytest.mark.parametrize("lid", ["208916402933123@lid", "208916402933123@LID"])
@pytest.mark.parametrize("alt", [True, False])
def test_a_lid_is_one_handle_whatever_the_case_of_its_server(lid: str, alt: bool) -> None:
    f = next(f for f in FIXTURES if f.path == "whatsapp/evolution/lid_text.json")
    body = f.body()
    body["data"]["key"]["remoteJid"] = lid
    if not alt:
        del body["data"]["key"]["remoteJidAlt"]
    (ev,) = normalize(f.provider, f.instance, body, RECEIVED_AT, "r")
    want = "5521998887777" if alt else "208916402933123@lid"
    assert (ev.sender_handle, ev.conversation_id) == (want, want)
    group = next(f for f in FIXTURES if f.path == "whatsapp/evolution/lid_group_text.json")
    gbody = group.body()
    gbody["data"]["key"]["remoteJid"] = gbody["data"]["key"]["remoteJid"].upper()
    (gev,) = normalize(group.provider, group.instance, gbody, RECEIVED_AT, "r")
    (plain,) = normalize(group.provider, group.instance, group.body(), RECEIVED_AT, "r")
    assert gev.conversation_id == plain.conversation_id


@pytest.mark.parametrize("op", [1, 7, 10, 11, "0", True])
def test_a_discord_op_other_than_a_dispatch_is_unrecognised(op: Any) -> None:
    f = next(f for f in FIXTURES if f.path == "discord/text.json")
    body = {**f.body(), "op": op}
    with pytest.raises(Unrecognised, match="not a dispatch"):
        normalize(f.provider, f.instance, body, RECEIVED_AT, "r")
