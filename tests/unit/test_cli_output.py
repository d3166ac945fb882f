"""The CLI's output layer and the checks it makes before sending anything (no servers)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import grpc
import pytest
import typer
from typer.testing import CliRunner

from jetsource._gen.context.v1 import commands_pb2, query_pb2
from jetsource.cli import output
from jetsource.cli.app import app
from jetsource.core.clock import to_timestamp


@pytest.fixture(autouse=True)
def _reset_mode() -> None:
    output.set_mode(None)


def test_natural_order_of_ids() -> None:
    ids = ["d10", "d2", "t1", "d1", "d", "d02x", "a10b2", "a10b10", "a9"]
    assert sorted(ids, key=output.natural_key) == [
        "a9", "a10b2", "a10b10", "d", "d1", "d2", "d02x", "d10", "t1",
    ]  # fmt: skip


def test_data_keeps_numbers_enums_times_maps_and_defaults() -> None:
    result = commands_pb2.CommandResult(context_id="s", version=2**40, stream_sequences=[7])
    assert output.data(result) == {
        "context_id": "s",
        "version": 2**40,  # a number, not the string protobuf's JSON mapping makes of it
        "stream_sequences": [7],
        "event_ids": [],
        "duplicate": False,
    }
    event = query_pb2.EventView(version=3, metadata={"actor": "ana"})
    event.recorded_at.CopyFrom(to_timestamp(1_700_000_000_123_456_789))
    event.event.decision_added.decision_id = "d1"
    d = output.data(event)
    assert d["recorded_at"] == "2023-11-14T22:13:20.123456789Z"
    assert d["occurred_at"] is None and d["metadata"] == {"actor": "ana"}
    assert list(d["event"]) == ["decision_added"]  # only the oneof member that is set
    assert d["event"]["decision_added"]["decision_id"] == "d1"
    view = query_pb2.ContextView(status=query_pb2.CONTEXT_STATUS_CLOSED)
    assert output.data(view)["status"] == "CONTEXT_STATUS_CLOSED"


def test_plain_tables_are_tab_separated_literal_and_unwrapped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    output.set_mode("plain")
    long = "x" * 300
    output.table("decisions", ("id", "title"), [("d1", "[bold]a\tb\nc[/bold]"), ("d2", long)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["# decisions", "id\ttitle", "d1\t[bold]a\\tb\\nc[/bold]", f"d2\t{long}"]


def test_table_mode_never_reads_markup(capsys: pytest.CaptureFixture[str]) -> None:
    output.set_mode("table")
    output.table("", ("title",), [("Fix [urgent] bug",)])
    output.line("story [closed]")
    output.fields([("tags", ["[red]x", "y"])])
    printed = capsys.readouterr().out
    for literal in ("Fix [urgent] bug", "story [closed]", "tags: [red]x, y"):
        assert literal in printed


@pytest.mark.parametrize("mode", ["plain", "table"])
def test_control_characters_in_stored_text_never_reach_the_terminal_raw(
    mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A title like ``a<ESC>[31mred`` (the publisher stored it) would colour or rewrite
    the user's terminal; every C0, DEL and C1 character but tab and newline is shown as
    \\xNN, in tables, fields, lines and error messages alike."""
    output.set_mode(mode)
    hostile = "a\x1b[31mred\x00b\rX\x7f\x9b\x85\u202egnp.exe"
    output.table("t", ("title",), [(hostile,)])
    output.fields([("title", hostile)])
    output.line(f"header {hostile}")
    with pytest.raises(typer.Exit):
        output.fail(1, "INVALID_ARGUMENT", f"bad {hostile}")
    printed = capsys.readouterr()
    for stream in (printed.out, printed.err):
        assert not any(
            0x80 <= ord(c) <= 0x9F or (ord(c) < 0x20 and c not in "\t\n") for c in stream
        )
        assert "\x7f" not in stream and "\u202e" not in stream
    assert "a\\x1b[31mred\\x00b\\x0dX\\x7f\\x9b\\x85\\u202egnp.exe" in printed.out
    assert "\\x1b" in printed.err


def test_the_default_mode_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert output.mode() == output.Mode.plain
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert output.mode() == output.Mode.table
    output.set_mode("json")
    assert output.mode() == output.Mode.json and output.mode("plain") == output.Mode.plain


def test_errors_go_to_stderr_with_an_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as raised:
        output.fail(1, "NOT_FOUND", "no context [x]", hint="idempotency key: k")
    assert raised.value.exit_code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "NOT_FOUND: no context [x]\nidempotency key: k\n"
    output.set_mode("json")
    with pytest.raises(typer.Exit):
        output.fail(3, "UNAVAILABLE", "gone", idempotency_key="k", target=None)
    error = json.loads(capsys.readouterr().err)["error"]
    assert error == {
        "code": "UNAVAILABLE",
        "message": "gone",
        "exit_code": 3,
        "idempotency_key": "k",
    }


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.ABORTED, 1),
        (grpc.StatusCode.NOT_FOUND, 1),
        (grpc.StatusCode.OUT_OF_RANGE, 1),
        (grpc.StatusCode.DATA_LOSS, 1),
        (grpc.StatusCode.UNAUTHENTICATED, 1),
        (grpc.StatusCode.UNAVAILABLE, 3),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 3),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 3),
    ],
)
def test_exit_codes_by_status(code: grpc.StatusCode, exit_code: int) -> None:
    assert output.exit_code(code) == exit_code


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_message_over_the_size_limit_is_refused_not_retried() -> None:
    """RESOURCE_EXHAUSTED is a busy server (exit 3: retry), except a message over gRPC's
    size limit: it stays over it however often it is sent (exit 1)."""
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert output.exit_code(exhausted, "too many calls in flight") == output.UNAVAILABLE
    over = "Sent message larger than max (4602127 vs. 4194304)"
    assert output.exit_code(exhausted, over) == output.REFUSED


def test_usage_errors_exit_2_before_anything_is_sent() -> None:
    runner = CliRunner()
    nobody = f"127.0.0.1:{closed_port()}"
    for args in (
        ["ctx", "show", "s", "--at", "soon", "--query", nobody],
        ["ctx", "subtask", "s", "t1", "--status", "finished", "--publisher", nobody],
        ["ctx", "list", "--status", "half", "--query", nobody],
        ["--output", "yaml", "ctx", "list"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)


def test_a_refused_connection_exits_3_at_once_naming_the_setting() -> None:
    runner = CliRunner()
    nobody = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    r = runner.invoke(
        app, ["ctx", "create", "s", "--title", "t"], env={"JETSOURCE_CLIENT__PUBLISHER": nobody}
    )
    assert time.monotonic() - started < 2.0
    assert r.exit_code == 3, r.output
    assert f"publisher at {nobody} is not reachable" in r.output
    assert "JETSOURCE_CLIENT__PUBLISHER" in r.output and "idempotency key" in r.output


def test_version() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("jetsource ")


def jetsource(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real entry point (``main``: CliRunner skips it), in a process of its own."""
    return subprocess.run(
        [sys.executable, "-c", "from jetsource.cli.app import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "JETSOURCE_OUTPUT": "", **env},
    )


@pytest.mark.parametrize(
    ("args", "message", "field"),
    [
        (["process", "list", "--page-size", "-1", "-o", "json"], "--page-size", "--page-size"),
        (["-o", "json", "process", "list", "--nope"], "No such option: --nope", "--nope"),
        (["--output=json", "ctx", "show"], "Missing argument", "context_id"),
        (["omni", "raw", "show", "--json", "--nope"], "No such option", "--nope"),
    ],
)
def test_a_usage_error_asked_for_json_is_a_json_error(
    args: list[str], message: str, field: str | None
) -> None:
    """Scripts that ask for JSON get JSON for a bad option too, not Click's usage box."""
    run = jetsource(*args)
    assert run.returncode == 2 and run.stdout == "", run
    error = json.loads(run.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["exit_code"] == 2
    assert message in error["message"]
    assert error.get("field") == field
    # Without JSON asked for: Click's usage message, as before.
    plain = [a for a in args if a not in ("-o", "json", "--output=json", "--json")]
    run = jetsource(*plain)
    assert run.returncode == 2 and "Usage:" in run.stderr


def test_nats_away_is_one_json_line_naming_it() -> None:
    """The NATS client's own retry reports went to stderr before the command's error,
    and the error's reason was empty (a TimeoutError says nothing)."""
    url = f"nats://127.0.0.1:{closed_port()}"
    run = jetsource(
        "-o",
        "json",
        "sessions",
        "list",
        JETSOURCE_NATS__URL=url,
        JETSOURCE_NATS__CONNECT_TIMEOUT_S="1",
    )
    assert run.returncode == 3, run
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    error = json.loads(lines[0])["error"]
    assert error["code"] == "UNAVAILABLE"
    # Since 529eab9 the message also says why no connection was made; since fix10c,
    # said at once, not as a wait ("did not answer: no connection within 2 s: ...").
    assert error["message"].startswith(f"NATS at {url} is not reachable ("), error
    assert "refused" in error["message"], error


@pytest.mark.parametrize(
    ("args", "line", "field"),
    [
        # omni printed `error: <message>` (and `(field: x)`), unlike every other group
        (
            ["omni", "identity", "merge", "a", "b"],
            "INVALID_ARGUMENT: a merge is not undone: add --yes to confirm",
            None,
        ),
        (["projector", "dlq", "show"], "INVALID_ARGUMENT: name the dead letter: --seq N", "--seq"),
        (
            ["projector", "dlq", "show", "5", "--seq", "6"],
            "INVALID_ARGUMENT: two sequences named: 5 and --seq 6",
            "--seq",
        ),
        # repair void, projector, streams, archive, erase said "usage" for a refused
        # argument where every other command says INVALID_ARGUMENT
        (
            ["repair", "void", "--seq", "1", "--reason", "x"],
            "INVALID_ARGUMENT: voiding stream sequence 1 cannot be undone: add --yes to confirm",
            "--yes",
        ),
    ],
)
def test_every_group_prints_errors_as_code_colon_message(
    args: list[str], line: str, field: str | None
) -> None:
    """One format for every group: ``CODE: message`` on stderr, or with ``-o json`` one
    JSON error document (the field at fault in it); nothing on stdout."""
    run = jetsource(*args)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", line + "\n")
    run = jetsource("-o", "json", *args)
    assert run.returncode == 2 and run.stdout == "", run
    error = json.loads(run.stderr)["error"]
    assert f"{error['code']}: {error['message']}" == line
    assert (error["exit_code"], error.get("field")) == (2, field)


def test_dlq_show_takes_seq_as_retry_and_discard_do() -> None:
    """`dlq show --seq N` (the positional still works): both reach NATS (away: exit 3);
    a sequence out of range is a usage error naming --seq."""
    away = {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{closed_port()}",
        "JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "1",
    }
    for args in (["--seq", "5"], ["5"], ["5", "--seq", "5"]):
        run = jetsource("-o", "json", "projector", "dlq", "show", *args, **away)
        assert run.returncode == 3, (args, run)
        assert json.loads(run.stderr)["error"]["code"] == "unavailable"
    run = jetsource("-o", "json", "projector", "dlq", "show", "--seq", "0")
    assert run.returncode == 2 and json.loads(run.stderr)["error"]["field"] == "--seq", run


def test_a_missing_stream_is_exit_1_naming_it_and_what_creates_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One answer in every group: exit 1 (retrying does not create it), the name, the
    command that creates it; in JSON the names as ``missing``."""
    with pytest.raises(typer.Exit) as raised:
        output.missing("FAILED_PRECONDITION", "PROCESS_EVENTS")
    assert raised.value.exit_code == output.REFUSED == 1
    assert capsys.readouterr().err == (
        "FAILED_PRECONDITION: stream PROCESS_EVENTS does not exist\n"
        "create the streams: jetsource streams ensure\n"
    )
    output.set_mode(output.Mode.json)
    with pytest.raises(typer.Exit):
        output.missing("refused", ["A", "B"])
    assert json.loads(capsys.readouterr().err) == {
        "error": {
            "code": "refused",
            "message": "streams A, B do not exist",
            "exit_code": 1,
            "hint": output.ENSURE_HINT,
            "missing": ["A", "B"],
        }
    }


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("stream CONTEXT_EVENTS not found", "CONTEXT_EVENTS"),
        ("stream CE_1 does not exist: create it with `jetsource streams ensure`", "CE_1"),
        ("CONTEXT_DLQ", "CONTEXT_DLQ"),  # a NoRespondersError: the bare name
        ("", None),
    ],
)
def test_the_stream_an_error_names(text: str, name: str | None) -> None:
    assert output.stream_named(text) == name


def test_warnings_while_a_command_works_are_json_lines_with_json_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A retried store's warnings ("...; again in 0.4s") were Python's last-resort text
    lines among the JSON ones on stderr."""
    handler = output.Warnings()
    record = logging.LogRecord("jetsource.projector", logging.WARNING, "", 0, "a: %s", ("b",), None)
    handler.emit(record)
    assert capsys.readouterr().err == "a: b\n"
    output.set_mode(output.Mode.json)
    handler.emit(record)
    assert json.loads(capsys.readouterr().err) == {"warning": "a: b"}


def test_a_mapping_in_a_field_or_cell_is_json_not_python_repr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`sessions show` printed its snapshot as `snapshot: {'nodes': {'waiting': 3}}`
    (Python's repr: single quotes, True, None), which no script reads; a mapping is
    JSON in every mode but json, as event data is in the timelines."""
    output.set_mode("plain")
    output.fields([("snapshot", {"nodes": {"waiting": 3}, "done": True, "error": None})])
    output.table("t", ["data"], [[{"a": "b"}]])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == 'snapshot: {"nodes": {"waiting": 3}, "done": true, "error": null}'
    assert printed[-1] == '{"a": "b"}'


def test_every_json_document_of_the_cli_escapes_bidi_del_and_c1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README: the CLI writes U+202E, DEL and C1 as escapes in ``-o json``. omni's
    ``--json`` documents (webhook bodies, headers, handles: anyone who reaches the
    webhooks chose them), the ``{"warning": ...}`` lines of every group and the usage
    error wrote them raw (json.dumps with ensure_ascii=False)."""
    from jetsource.cli import archive, omni, stream_admin
    from jetsource.cli.app import _error

    hostile = "a\u202eb\x7f\x9bc\u2067"
    output.set_mode(output.Mode.json)
    omni._emit(True, {"handle": hostile}, "")
    record = logging.LogRecord("x", logging.WARNING, "", 0, "%s", (hostile,), None)
    output.Warnings().emit(record)
    stream_admin._note(hostile)
    archive._warn(hostile)
    with pytest.raises(SystemExit):
        _error(True, {"code": "INVALID_ARGUMENT", "message": hostile, "exit_code": 2})
    printed = capsys.readouterr()
    for stream, count in ((printed.out, 1), (printed.err, 4)):
        lines = stream.splitlines()
        assert len(lines) == count
        for line in lines:
            assert not any(c in line for c in "\u202e\x7f\x9b\u2067"), line
            assert hostile in json.dumps(json.loads(line), ensure_ascii=False)
