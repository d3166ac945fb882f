"""`jetsource sessions import` names the place of bad input, before anything connects.

- A byte that is not UTF-8 was said to be on line 1 when it was on line 7 (the file
  was read as text, decoded ahead in chunks); now its line (blank lines counted) and
  its byte, with ``field``/``line`` in JSON, from a file and from stdin.
- ``--observer`` that is no host:port: empty was gRPC's UNKNOWN (exit 1, C-core log
  lines before the JSON error), port 99999 was dialled as 34463 (the refusal named
  that port), a URL or a host without a port went to DNS or port 443 (UNAVAILABLE,
  exit 3). Now INVALID_ARGUMENT naming --observer, exit 2, and so `tui --query/--omni`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.sessions import app, tui

# Nothing listens there: a command that connected would fail otherwise.
ENV = {"JETSOURCE_NATS__URL": "nats://127.0.0.1:1", "JETSOURCE_CLIENT__TIMEOUT_S": "1"}
TS = "2026-12-07T03:00:00.000Z"
SID = "01a25272-da87-7000-9a67-3aa68ce96011"


def _run(args: Sequence[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner(env=ENV).invoke(app, list(args), input=stdin, catch_exceptions=False)
    out.set_mode(None)
    return result.exit_code, result.stdout, result.stderr


def _file_with_a_bad_byte_on_line_7() -> bytes:
    lines = [
        json.dumps({"ts": TS, "session": SID, "seq": i, "type": "note", "data": {}}).encode()
        for i in range(2, 7)
    ]
    lines.insert(2, b"")  # a blank line is a line
    bad = b'{"ts": "%s", "session": "%s", "seq": 7, "type": "note", "data": {"t": "\xff"}}'
    lines.append(bad % (TS.encode(), SID.encode()))
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("from_stdin", [False, True])
def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path: Path, from_stdin: bool) -> None:
    data = _file_with_a_bad_byte_on_line_7()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    args = ["import", "-" if from_stdin else str(path)]
    code, _, stderr = _run([*args, "-o", "json"], data if from_stdin else None)
    assert code == 2, stderr
    error = json.loads(stderr)["error"]
    assert (error["code"], error["line"], error["field"]) == ("INVALID_ARGUMENT", 7, "line 7")
    assert "line 7 is not UTF-8 text (byte 128 of the line)" in error["message"], error
    code, _, stderr = _run(args, data if from_stdin else None)
    assert code == 2 and "line 7 is not UTF-8 text" in stderr, stderr


def test_lines_end_at_newline_only(tmp_path: Path) -> None:
    """'\\r\\n' is one line break, not two (an editor counts it so): a CRLF file's bad
    line is named as the editor shows it."""
    good = json.dumps({"ts": TS, "session": SID, "seq": 1, "type": "session_started",
                       "data": {"command": "x"}})  # fmt: skip
    bad = json.dumps({"ts": TS, "session": SID, "seq": 2, "type": "Bad", "data": {}})
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(f"{good}\r\n\r\n{bad}\r\n".encode())
    code, _, stderr = _run(["import", str(path), "-o", "json"])
    assert code == 2, stderr
    error = json.loads(stderr)["error"]
    assert error["line"] == 3 and error["message"].startswith("line 3: type: "), error


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("127.0.0.1:99999", "the port '99999' is not 1 to 65535"),
        ("127.0.0.1:0", "the port '0' is not 1 to 65535"),
        ("localhost", "names no port"),
        (":50053", "names no port"),
        ("http://localhost:50053", "without a scheme"),
        ("a b:1", "holds a space"),
        ("observer:abc", "the port 'abc' is not 1 to 65535"),  # no scheme gRPC knows
        ("observer:50053x", "the port '50053x' is not 1 to 65535"),
    ],
)
def test_an_observer_that_is_no_host_port_is_refused_naming_the_option(
    tmp_path: Path, target: str, said: str
) -> None:
    path = tmp_path / "ok.jsonl"
    line = {"ts": TS, "session": SID, "seq": 1, "type": "session_started",
            "data": {"command": "x"}}  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    code, _, stderr = _run(["import", str(path), "--observer", target, "-o", "json"])
    assert code == 2, stderr
    (doc,) = [json.loads(x) for x in stderr.splitlines()]  # nothing but the JSON error
    error = doc["error"]
    assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", "--observer"), error
    assert said in error["message"], error


@pytest.mark.parametrize("flag", ["--query", "--omni"])
def test_the_tui_refuses_a_port_past_65535(flag: str) -> None:
    import typer

    one = typer.Typer()
    one.command()(tui)
    result = CliRunner(env=ENV).invoke(one, [flag, "127.0.0.1:99999"], catch_exceptions=False)
    out.set_mode(None)
    assert result.exit_code == 2, result.output
    assert "not 1 to 65535" in result.output, result.output


@pytest.mark.parametrize(
    "target",
    [
        "dns:///127.0.0.1:1",
        "dns:127.0.0.1:1",
        "unix:/tmp/nothing-here.sock",
        "unix:///tmp/nothing-here.sock",
        "ipv6:[::1]:1",
        "[::1]:1",
    ],
)
def test_a_grpc_target_with_a_scheme_passes_the_check(tmp_path: Path, target: str) -> None:
    """gRPC's own targets (a scheme, then what it resolves) were refused as 'no host:port'
    (unix:/path named the port '/path', dns:///host:port 'without a scheme'): taken as
    every other client's --target is, the import goes on (to NATS here, which is away)."""
    path = tmp_path / "ok.jsonl"
    line = {"ts": TS, "session": SID, "seq": 1, "type": "session_started",
            "data": {"command": "x"}}  # fmt: skip
    path.write_text(json.dumps(line) + "\n")
    code, _, stderr = _run(["import", str(path), "--observer", target, "-o", "json"])
    assert "--observer" not in stderr, stderr
    assert code != 2, stderr


@pytest.mark.parametrize("flag", ["--query", "--omni"])
def test_the_tui_takes_a_grpc_target_with_a_scheme(flag: str) -> None:
    import typer

    one = typer.Typer()
    one.command()(tui)
    for target in ("unix:///tmp/q.sock", "dns:///localhost:50051"):
        result = CliRunner(env=ENV).invoke(one, [flag, target], catch_exceptions=False)
        out.set_mode(None)
        # Past the check: refused only for want of a terminal (the test has none).
        assert "needs a terminal" in result.output, (target, result.output)


@pytest.mark.parametrize("from_stdin", [False, True])
def test_lone_carriage_returns_end_lines_as_before(tmp_path: Path, from_stdin: bool) -> None:
    """Lines ending at a lone '\\r' (and mixed with '\\r\\n' and '\\n') were lines when the
    file was read as text (universal newlines); read as bytes split at '\\n' only, a
    lone-CR file was one line, refused as line 1. Each is a line again, numbered so."""
    good = json.dumps({"ts": TS, "session": SID, "seq": 1, "type": "session_started",
                       "data": {"command": "x"}})  # fmt: skip
    note = json.dumps({"ts": TS, "session": SID, "seq": 2, "type": "note", "data": {}})
    bad = json.dumps({"ts": TS, "session": SID, "seq": 3, "type": "Bad", "data": {}})
    for data, line in (
        (f"{good}\r\r{note}\r{bad}\r".encode(), 4),  # lone CR only (a blank line 2)
        (f"{good}\r\n{note}\r{bad}\n".encode(), 3),  # mixed
        (f"{good}\r{note}\r\n\r\n{bad}".encode(), 4),  # no end after the last
    ):
        path = tmp_path / "cr.jsonl"
        path.write_bytes(data)
        args = ["import", "-" if from_stdin else str(path), "-o", "json"]
        code, _, stderr = _run(args, data if from_stdin else None)
        assert code == 2, stderr
        error = json.loads(stderr)["error"]
        assert error["line"] == line, (data, error)
        assert error["message"].startswith(f"line {line}: type: "), error
