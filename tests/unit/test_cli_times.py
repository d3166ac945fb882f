"""Every CLI option that takes a time reads one grammar (``core.clock.parse_time_ns``):
RFC 3339 with ``Z`` or any offset (the same instant in UTC), with or without up to 9
fractional digits. Anything else is a usage error (exit 2) naming the option and
showing an accepted time, in text and as one JSON error line; never a traceback.
Durations (``sessions prune --older-than/--every``) read one grammar too."""

from __future__ import annotations

import json
import socket

import pytest
import typer
from typer.testing import CliRunner

from jetsource.cli import output
from jetsource.cli.app import app
from jetsource.cli.sessions import parse_duration
from jetsource.core import clock

NS = 10**9
T0 = 1_796_551_200 * NS  # 2026-12-06T10:00:00Z


@pytest.fixture(autouse=True)
def _reset_mode() -> None:
    output.set_mode(None)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2026-12-06T10:00:00Z", T0),
        ("2026-12-06T10:00:00z", T0),
        ("2026-12-06t10:00:00Z", T0),
        ("2026-12-06 10:00:00Z", T0),
        ("2026-12-06T11:00:00+01:00", T0),
        ("2026-12-06T04:30:00-05:30", T0),
        ("2026-12-06T10:00:00+00:00", T0),
        ("2026-12-06T10:00:00-00:00", T0),
        ("2026-12-06T10:00:00.5Z", T0 + NS // 2),
        ("2026-12-06T11:00:00.123456789+01:00", T0 + 123_456_789),
        ("2026-12-06T10:00:00.000000001Z", T0 + 1),
        ("  2026-12-06T10:00:00Z  ", T0),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.5Z", -NS // 2),
        ("0001-01-01T00:00:00Z", clock.MIN_RFC3339_NS),
        ("0001-01-01T00:00:00-01:00", clock.MIN_RFC3339_NS + 3600 * NS),
        ("9999-12-31T23:59:59.999999999Z", clock.MAX_RFC3339_NS),
        ("9999-12-31T23:59:59+01:00", clock.MAX_RFC3339_NS + 1 - 3601 * NS),
    ],
)
def test_accepted_times_are_the_same_instant_in_utc(text: str, ns: int) -> None:
    assert clock.parse_time_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "RFC 3339"),
        ("soon", "RFC 3339"),
        ("2026-12-06", "RFC 3339"),
        ("2026-12-06T10:00Z", "RFC 3339"),
        ("20261206T100000Z", "RFC 3339"),
        ("2026-12-06T10:00:00.Z", "RFC 3339"),
        ("2026-12-06T10:00:00.1234567891Z", "RFC 3339"),
        ("2026-12-06T10:00:00+0100", "RFC 3339"),
        ("2026-12-06T10:00:00+01", "RFC 3339"),
        ("2026-13-45T10:00:00Z", "not a valid time"),
        ("2026-02-30T10:00:00Z", "not a valid time"),
        ("2026-12-06T24:00:00Z", "not a valid time"),
        ("2026-12-06T23:59:60Z", "not a valid time"),
        ("2026-12-06T10:00:00+24:00", "not a valid time"),
        ("0000-12-31T23:59:59Z", "not a valid time"),
        ("0001-01-01T00:00:00+05:00", "years 1..9999"),
        ("9999-12-31T23:59:59-00:01", "years 1..9999"),
        ("١٢٣٤-12-06T10:00:00Z", "RFC 3339"),  # non-ASCII digits
    ],
)
def test_refused_times_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace(".", r"\.")):
        clock.parse_time_ns(text)


def test_int64_nanoseconds_bound_where_asked() -> None:
    assert clock.parse_time_ns("2262-04-11T23:47:16.854775807Z", int64=True) == 2**63 - 1
    assert clock.parse_time_ns("1677-09-21T00:12:43.145224192Z", int64=True) == -(2**63)
    for text in ("2262-04-11T23:47:16.854775808Z", "1677-09-21T00:12:43.145224191Z"):
        clock.parse_time_ns(text)  # a protobuf Timestamp holds it
        with pytest.raises(ValueError, match="int64"):
            clock.parse_time_ns(text, int64=True)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86_400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2w") == 14 * 86_400
    assert parse_duration("45") == 45
    for bad in ("", "yesterday", "-1d", "1y", "1e9", "inf", "nan"):
        with pytest.raises(typer.BadParameter, match=r"e\.g\. 30d"):
            parse_duration(bad)
    with pytest.raises(typer.BadParameter, match="292 years"):
        parse_duration("100000w")


# -- every time option of every command ------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


NOBODY = f"127.0.0.1:{_closed_port()}"
# (the command up to the option, the option, anything after the value)
TIME_OPTIONS = [
    (["ctx", "show", "c1", "--query", NOBODY], "--at"),
    (["process", "list", "--process-query", NOBODY], "--started-from"),
    (["process", "list", "--process-query", NOBODY], "--started-to"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--occurred-from"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--occurred-to"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--recorded-from"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--recorded-to"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--known-at"),
    (["process", "timeline", "p1", "--process-query", NOBODY], "--as-of"),
    (["projector", "replay", "context"], "--from-time"),
    (["projector", "replay", "context"], "--to-time"),
]
ENV = {
    "JETSOURCE_NATS__URL": f"nats://{NOBODY}",
    "JETSOURCE_NATS__CONNECT_TIMEOUT_S": "1",
    "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "1",  # projector replay: else 10 s per row
    "JETSOURCE_OUTPUT": "",
}
BAD = [
    "2026-13-45T10:00:00Z",
    "tomorrow",
    "0001-01-01T00:00:00+05:00",  # year 0 in UTC
    "10000-01-01T00:00:00Z",
]


def _invoke(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(app, args, env=ENV)
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), (
        args,
        r.exception,
    )
    return r.exit_code, r.output


@pytest.mark.parametrize(("command", "flag"), TIME_OPTIONS)
@pytest.mark.parametrize("value", BAD)
def test_a_bad_time_is_a_usage_error_naming_the_option(
    command: list[str], flag: str, value: str
) -> None:
    code, said = _invoke([*command, flag, value])
    assert code == 2, said
    assert flag in said and "2026-12-06T10:00:00Z" in said, said
    assert "Traceback" not in said and "INTERNAL" not in said
    output.set_mode(None)
    code, said = _invoke(["-o", "json", *command, flag, value])
    assert code == 2, said
    error = json.loads(said.strip().splitlines()[-1])["error"]
    assert error["exit_code"] == 2 and error["field"] == flag, error
    assert "2026-12-06T10:00:00Z" in error["message"], error


@pytest.mark.parametrize(("command", "flag"), TIME_OPTIONS)
@pytest.mark.parametrize(
    "value",
    [
        "2026-12-06T11:00:00+01:00",
        "2026-12-06T10:00:00.123456789Z",
        "2026-12-06T10:00:00Z",
        "2026-12-06T10:00:00",  # no offset: UTC
    ],
)
def test_an_rfc3339_time_with_any_offset_is_taken(
    command: list[str], flag: str, value: str
) -> None:
    """Taken: the command goes on to its server (nobody there: exit 3), not exit 2."""
    code, said = _invoke([*command, flag, value])
    assert code == 3, said


@pytest.mark.parametrize("value", ["0", "-3", "99999999999999999999", "1" * 5000])
def test_at_a_version_out_of_range_is_a_usage_error(value: str) -> None:
    code, said = _invoke(["ctx", "show", "c1", "--query", NOBODY, "--at", value])
    assert code == 2 and "--at" in said and "version" in said, said


def test_projector_replay_refuses_a_time_beyond_int64_nanoseconds() -> None:
    code, said = _invoke(["projector", "replay", "context", "--from-time", "2300-01-01T00:00:00Z"])
    assert code == 2 and "--from-time" in said and "int64" in said, said


@pytest.mark.parametrize("flag", ["--older-than", "--every"])
def test_a_bad_duration_is_a_usage_error_naming_the_option(flag: str) -> None:
    for value in ("yesterday", "100000w"):
        code, said = _invoke(["-o", "json", "sessions", "prune", flag, value, "--dry-run"])
        assert code == 2, said
        error = json.loads(said.strip().splitlines()[-1])["error"]
        assert error["field"] == flag and "e.g. 30d" in error["message"], error
        output.set_mode(None)


def test_a_time_without_an_offset_is_utc() -> None:
    """As ``ctx show --at`` always read one (the process options refused it): nothing
    that was taken before is refused now."""
    assert clock.parse_time_ns("2026-12-06T10:00:00") == clock.parse_time_ns("2026-12-06T10:00:00Z")
    assert clock.parse_time_ns("2026-12-06T10:00:00.5") == clock.parse_time_ns(
        "2026-12-06T11:00:00.5+01:00"
    )
