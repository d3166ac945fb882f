"""Every `jetsource` sub-command driven the way a careless or hostile operator would:
missing and malformed arguments, numbers out of every range, empty and non-UTF-8 text,
ids with spaces, slashes and wildcards, bad times, unreachable or wrong endpoints, files
that are not there, bad settings, a server stopped mid-way.

Each command must answer with one line naming what is wrong (with ``-o json``: one JSON
document on stderr and nothing on stdout), the README's exit code (1 refused, 2 usage,
3 unavailable), never a traceback, never a hang past its timeout, and a refused command
changes nothing. The table runs the real entry point (``jetsource.cli.app.main``) in
this process, for speed, against the real services of ``cli_stack``; what only a process
can show (an import-time setting, raw bytes in argv, a hang) runs the installed command.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest

from jetsource.cli import output
from jetsource.cli.app import main
from jetsource.devstack.servers import free_port
from tests.cli_env import clean_environ
from tests.e2e.cli_fixtures import JETSOURCE, CliStack, cli_stack

pytestmark = pytest.mark.e2e
__all__ = ["cli_stack"]  # the fixture

USAGE, REFUSED, UNAVAILABLE = 2, 1, 3
NOBODY = f"127.0.0.1:{free_port()}"  # a port nobody listens on
BIG = "x" * 100_000  # an argument near the kernel's limit for one (128 KiB)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hostile")
    good = folder / "events.jsonl"
    good.write_text('{"process_id": "p1", "event_type": "process_started", "data": {}}\n')
    return {"{ok}": str(good), "{dir}": str(folder), "{missing}": str(folder / "nope.jsonl")}


@pytest.fixture
def jetsource(
    cli_stack: CliStack, files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[object]:
    """``jetsource(*argv, env={...})``: the real entry point in this process, with the
    stack's environment (servers, streams, the services' addresses), stdout and stderr
    captured (not a terminal)."""
    for name in [n for n in os.environ if n.startswith("JETSOURCE_")]:
        monkeypatch.delenv(name)
    base = {k: v for k, v in cli_stack.services.env.items() if k.startswith("JETSOURCE_")}
    base.update({k: v for k, v in cli_stack.env.items() if k.startswith("JETSOURCE_")})
    base["JETSOURCE_ADMIN_CONNECT_TIMEOUT_S"] = "5"
    places = {
        **files,
        "{nobody}": NOBODY,
        "{nats}": base["JETSOURCE_NATS__URL"].removeprefix("nats://"),
        "{publisher}": cli_stack.services.address("publisher"),
    }

    def run(*argv: str, env: dict[str, str] | None = None) -> Result:
        for name, value in {**base, **(env or {})}.items():
            monkeypatch.setenv(name, value)
        args = []
        for arg in argv:
            for place, value in places.items():
                arg = arg.replace(place, value)
            args.append(arg)
        monkeypatch.setattr(sys, "argv", ["jetsource", *args])
        output.set_mode(None)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        return Result(code, out.getvalue(), err.getvalue())

    yield run
    output.set_mode(None)


# (argv, exit code, text the message must contain). JSON: also run with -o json.
ROWS: list[tuple[list[str], int, str]] = [
    # ctx: caught before anything is sent
    (["ctx", "create"], USAGE, "context_id"),
    (["ctx", "create", "c1"], USAGE, "--title"),
    (["ctx", "create", "c1", "--title", "T", "--expected-version", "-1"], USAGE, "--expected"),
    (["ctx", "create", "c1", "--title", "T", "--expected-version", str(2**64)], USAGE, "--exp"),
    (["ctx", "show", "c1", "--min-version", str(2**64)], USAGE, "--min-version"),
    (["ctx", "events", "c1", "--from-version", str(2**63)], USAGE, "--from-version"),
    (["ctx", "graph", "c1", "--depth", str(2**32)], USAGE, "--depth"),
    (["ctx", "watch", "c1", "--from-version", str(2**64)], USAGE, "--from-version"),
    (["ctx", "list", "--limit", "-1"], USAGE, "--limit"),
    (["ctx", "list", "--limit", str(10**12)], USAGE, "--limit"),
    (["ctx", "show", "c1", "--timeout", "0"], USAGE, "--timeout"),
    (["ctx", "show", "c1", "--timeout", "-5"], USAGE, "--timeout"),
    (["ctx", "show", "c1", "--timeout", "nan"], USAGE, "--timeout"),
    (["ctx", "show", "c1", "--timeout", "1e308"], USAGE, "--timeout"),
    (["ctx", "create", "c1", "--title", "T", "--timeout", "inf"], USAGE, "--timeout"),
    (["ctx", "watch", "c1", "--timeout", "nan"], USAGE, "--timeout"),
    (["ctx", "create", "c1", "--title", "T", "--publisher", ""], USAGE, "--publisher"),
    (["tui", "--omni", ""], USAGE, "--omni"),
    (["tui", "--omni", "a b:1"], USAGE, "--omni"),
    (["tui", "--query", ""], USAGE, "--query"),  # fell back to the default service
    (["tui", "--query", "a b:1"], USAGE, "--query"),
    (["ctx", "show", "c1", "--query", " "], USAGE, "--query"),
    (["ctx", "show", "c1", "--at", "2026-13-45"], USAGE, "--at"),
    (["ctx", "show", "c1", "--at", ""], USAGE, "--at"),
    (["ctx", "show", "c1", "--at", "99999999999999999999"], USAGE, "--at"),
    (["ctx", "show", "c1", "--at", "0"], USAGE, "--at"),
    (["ctx", "show", "c1", "--at", "1" * 5000], USAGE, "--at"),
    # options the chosen command does not take are refused, not dropped
    (["ctx", "subtask", "c1", "t9", "--title", "x", "--status", "done"], USAGE, "--status"),
    (["ctx", "subtask", "c1", "t9", "--title", "x", "--progress", "5"], USAGE, "--progress"),
    (["ctx", "subtask", "c1", "t1", "--status", "done", "--description", "d"], USAGE, "--desc"),
    (["ctx", "decide", "c1", "d1", "--superseded-by", "d2", "--body", "z"], USAGE, "--body"),
    (["ctx", "decide", "c1", "d1", "--superseded-by", "d2", "--revise"], USAGE, "--revise"),
    (["ctx", "decide", "c1", "d1", "--revise", "--affects", "d2"], USAGE, "--affects"),
    (["ctx", "decide", "c1", "d1", "--title", "T", "--reason", "r"], USAGE, "--reason"),
    (["ctx", "subtask", "c1", "t1", "--status", "finished"], USAGE, "--status"),
    (["ctx", "list", "--status", "half-open"], USAGE, "--status"),
    (["ctx", "create", "a\udcff", "--title", "T"], USAGE, "UTF-8"),
    (["ctx", "list", "--page-token", "\udcfe"], USAGE, "UTF-8"),
    (["ctx", "show", "c1", "--bogus"], USAGE, "--bogus"),
    # ctx: refused by the service (exit 1), naming the field
    (["ctx", "create", "a b", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", "a/b", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", "a.b", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", "*", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", ">", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", "a\nb", "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", BIG, "--title", "T"], REFUSED, "context_id"),
    (["ctx", "create", "c1", "--title", BIG], REFUSED, "title"),
    (["ctx", "create", "c1", "--title", "T", "-k", ""], REFUSED, "idempotency_key"),
    (["ctx", "list", "--page-token", "garbage"], REFUSED, "page_token"),
    (["ctx", "events", "c1", "--page-token", BIG], REFUSED, "page_token"),
    (["ctx", "show", "c1", "--at", "99999999999999"], REFUSED, "version"),
    # ctx: nobody there, or not a gRPC server (exit 3, naming the setting)
    (["ctx", "create", "c1", "--title", "T", "--publisher", "{nobody}"], UNAVAILABLE, "--publ"),
    (["ctx", "show", "c1", "--query", "{nats}"], UNAVAILABLE, "JETSOURCE_CLIENT__QUERY"),
    (["ctx", "watch", "c1", "--timeout", "2", "--query", "{nobody}"], UNAVAILABLE, "reachable"),
    # process (no process query service runs here)
    (["process", "list", "--started-from", "0001-01-01T00:00:00+05:00"], USAGE, "--started"),
    (["process", "timeline", "p", "--as-of", "0001-01-01T00:00:00+05:00"], USAGE, "--as-of"),
    (["process", "list", "--started-from", "2026-13-45"], USAGE, "--started-from"),
    (["process", "list", "--kind", "\udcfe"], USAGE, "UTF-8"),
    (["process", "list", "--timeout", "nan"], USAGE, "--timeout"),
    (["process", "watch", "p", "--timeout", "inf"], USAGE, "--timeout"),
    (["process", "show", "p", "--process-query", ""], USAGE, "--process-query"),
    (["process", "list", "--status", "weird"], USAGE, "--status"),
    (["process", "tree", "p", "--depth", str(2**32)], USAGE, "--depth"),
    (["process", "list", "--process-query", "{nobody}"], UNAVAILABLE, "--process-query"),
    (["process", "list", "--process-query", "{publisher}"], REFUSED, "UNIMPLEMENTED"),
    # projector and its dead letters
    (["projector", "replay", "nosuch"], USAGE, "nosuch"),
    (["projector", "replay", "context"], USAGE, "slice"),
    (["projector", "replay", "context", "--from-seq", "0"], USAGE, "--from-seq"),
    (["projector", "replay", "context", "--from-seq", "9", "--to-seq", "2"], USAGE, "inverted"),
    (["projector", "replay", "context", "--from-time", "2026-13-45"], USAGE, "--from-time"),
    (["projector", "replay", "context", "--aggregate", "a b"], USAGE, "aggregate"),
    (["projector", "replay", "context", "--type", "Nope"], USAGE, "Nope"),
    (["projector", "rebuild", "context", "--to-version", str(2**31)], USAGE, "--to-version"),
    (["projector", "drop", "context", "--version", str(2**70)], USAGE, "--version"),
    (["projector", "cutover", "context", "--to-version", "0"], USAGE, "--to-version"),
    (["projector", "wait", "context", "--version", "1", "--timeout", "nan"], USAGE, "--timeout"),
    (["projector", "reset", "context"], USAGE, "--yes"),
    (["projector", "dlq", "show", str(2**64)], USAGE, "dlq_seq"),
    (["projector", "dlq", "show", "abc"], USAGE, "dlq_seq"),
    (["projector", "dlq", "retry", "--seq", "-1"], USAGE, "--seq"),
    (["projector", "dlq", "discard", "--seq", "1"], USAGE, "--yes"),
    (["projector", "dlq", "list", "-m", "nosuch"], USAGE, "nosuch"),
    (["projector", "dlq", "show", "99999999"], REFUSED, "no dead letter"),
    # `dlq show` takes --seq as retry and discard do (the positional still works)
    (["projector", "dlq", "show", "--seq", "99999999"], REFUSED, "no dead letter"),
    (["projector", "dlq", "show", "--seq", "0"], USAGE, "--seq"),
    (["projector", "dlq", "show"], USAGE, "--seq"),
    (["projector", "dlq", "show", "5", "--seq", "6"], USAGE, "--seq"),
    (["projector", "rebuild", "context", "--to-version", "1"], REFUSED, "v1"),
    # streams, archive, repair, erase
    (["streams", "backup", "/dev/null"], USAGE, "/dev/null"),
    (["streams", "backup", "{ok}/sub"], USAGE, "{ok}"),
    (["streams", "restore", "{dir}"], USAGE, "manifest.json"),
    (["streams", "restore", "{missing}"], USAGE, "folder"),
    (["streams", "restore", "{dir}", "--rename", "x"], USAGE, "--rename"),
    (["streams", "ensure", "--timeout", "nan"], USAGE, "--timeout"),
    (["archive", "list", "--domain", ""], USAGE, "--domain"),
    (["archive", "export", "--from-seq", "5", "--to-seq", "1"], USAGE, "--from-seq"),
    (["archive", "export", "--from-seq", str(2**64)], USAGE, "--from-seq"),
    (["archive", "restore", "a b"], USAGE, "stream name"),
    (["archive", "restore", "X", "--retention", "bogus"], USAGE, "--retention"),
    (["archive", "restore", "X", "--subject-prefix", "x"], USAGE, "--subject-prefix"),
    (["archive", "list", "--domain", "nosuch"], USAGE, "nosuch"),  # before connecting
    (["repair", "void", "--seq", "5", "--reason", "x"], USAGE, "--yes"),
    (["repair", "void", "--seq", "5", "--reason", " ", "--yes"], USAGE, "--reason"),
    (["repair", "void", "--seq", str(2**64), "--reason", "x", "--yes"], USAGE, "--seq"),
    (["repair", "void", "--seq", "0", "--reason", "x", "--yes"], USAGE, "--seq"),
    (["erase", ""], USAGE, "empty"),
    (["erase", "\udcfe", "--yes"], USAGE, "UTF-8"),
    (["erase", "bob"], USAGE, "--yes"),
    # the process ledger's adapters and sessions
    (["observe", "import", "{missing}"], USAGE, "no such file"),
    (["observe", "import", "{dir}"], USAGE, "{dir}"),
    (["observe", "import", "{ok}", "--timeout", "inf"], USAGE, "--timeout"),
    (["observe", "import", "{ok}", "--give-up", "inf"], USAGE, "--give-up"),
    (["observe", "import", "{ok}", "--observer", ""], USAGE, "--observer"),
    (["observe", "import", "{ok}", "--state", "{dir}"], USAGE, "--state"),
    (["sessions", "prune", "--every", "0.001s", "--dry-run"], USAGE, "--every"),
    (["sessions", "prune", "--older-than", "yesterday"], USAGE, "--older-than"),
    (["sessions", "list", "--status", "weird"], USAGE, "--status"),
    (["sessions", "import", "{missing}"], USAGE, "{missing}"),
    (["sessions", "show", "a b"], REFUSED, "session_id"),
    (["omni", "identity", "merge", "a", "b"], USAGE, "--yes"),
    (["omni", "identity", "handles", "a.b"], REFUSED, "identity_id"),
    (["omni", "identity", "link", "a b", "whatsapp", "16505550100"], REFUSED, "identity_id"),
    # free text is bounded, naming the field, and nothing is written
    (["omni", "identity", "create", "--name", "n" * 201], REFUSED, "name is 201 characters"),
    (["omni", "identity", "create", "--actor", "a" * 101], REFUSED, "actor is 101 characters"),
    (["omni", "identity", "link", "a", "whatsapp", "1650", "--actor", "a" * 101], REFUSED, "actor"),
    (["omni", "identity", "merge", "a", "b", "--yes", "--reason", "r" * 10_001], REFUSED, "reason"),
    (
        ["projector", "replay", "context", "--from-seq", "1", "--run-id", "x" * 101],
        USAGE,
        "--run-id",
    ),
    (["projector", "replay", "context", "--from-seq", "1", "--run-id", "a b"], USAGE, "--run-id"),
    (["nosuchcmd"], USAGE, "nosuchcmd"),
]


# The codes an error line starts with: gRPC's names (the gRPC groups, omni, every
# refused argument: INVALID_ARGUMENT in every group since acbccee, where the admin
# groups said "usage") and the NATS admin groups' words (README: Projector, Exit codes).
CODES = "|".join(
    [c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK]
    + ["refused", "unavailable", "timeout", "access denied"]
)
# Every group prints `CODE: message` (omni printed `error: message (field: x)`), or
# Click's usage box for a malformed command line.
ERROR_LINE = re.compile(rf"^(?:(?:{CODES}): \S|Usage: )", re.MULTILINE)


def check(r: Result, code: int, text: str, as_json: bool) -> None:
    assert "Traceback" not in r.err, r.err
    assert r.code == code, r
    if code == 0:
        return
    assert r.out == "", r  # errors never go to stdout
    if as_json:
        lines = r.err.strip().splitlines()
        assert len(lines) == 1, r.err  # one JSON document, nothing else
        error = json.loads(lines[0])["error"]
        assert error["exit_code"] == code and error["message"], error
        assert text in json.dumps(error, ensure_ascii=False) or text in error["message"], error
        assert re.fullmatch(CODES, error.get("code", "")), error
    else:
        assert text in r.err, r.err
        assert ERROR_LINE.match(r.err), r.err


@pytest.mark.parametrize(
    ("argv", "code", "text"), ROWS, ids=[f"{r[0][0]}-{i}" for i, r in enumerate(ROWS)]
)
def test_hostile_input(
    jetsource: object, files: dict[str, str], argv: list[str], code: int, text: str
) -> None:
    run = jetsource
    for place, value in files.items():
        text = text.replace(place, value)
    check(run(*argv), code, text, as_json=False)  # type: ignore[operator]
    check(run("-o", "json", *argv), code, text, as_json=True)  # type: ignore[operator]


SETTINGS = [
    ({"JETSOURCE_PROJECTOR__BATCH_SIZE": "abc"}, ["projector", "status"]),
    ({"JETSOURCE_SESSIONS__PRUNE_KEEP": "abc"}, ["sessions", "list"]),
    ({"JETSOURCE_DEVSTACK__NATS_PORT": "abc"}, ["infra", "status"]),
    ({"JETSOURCE_CLIENT__TIMEOUT_S": "abc"}, ["ctx", "list"]),
    ({"JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "abc"}, ["projector", "status"]),
    ({"JETSOURCE_ADMIN_CONNECT_TIMEOUT_S": "-1"}, ["archive", "list"]),
    ({"JETSOURCE_PROGRESS_EVERY_S": "nan"}, ["projector", "dlq", "retry"]),
]


@pytest.mark.parametrize(("env", "argv"), SETTINGS, ids=[next(iter(e)) for e, _ in SETTINGS])
def test_a_bad_setting_is_a_usage_error_naming_the_variable(
    jetsource: object, env: dict[str, str], argv: list[str]
) -> None:
    """A setting that does not parse was a pydantic traceback (projector, sessions,
    infra, streams, archive...): now one line naming the variable, exit 2."""
    (name,) = env
    for as_json in (False, True):
        prefix = ["-o", "json"] if as_json else []
        check(jetsource(*prefix, *argv, env=env), USAGE, name, as_json)  # type: ignore[operator]


def test_a_group_without_a_command_asked_for_json_prints_only_json(jetsource: object) -> None:
    """`-o json ctx` printed the help on stdout and `{"error": {"message": ""}}`."""
    for group in (["ctx"], ["projector", "dlq"], ["omni", "identity"]):
        r = jetsource("-o", "json", *group)  # type: ignore[operator]
        check(r, USAGE, "Missing command", as_json=True)


def test_global_json_reaches_every_group(jetsource: object) -> None:
    """streams, archive, repair and omni ignored the global -o json: their errors were
    text (streams and archive on stdout)."""
    for argv in (
        ["repair", "void", "--seq", "5", "--reason", "x"],
        ["omni", "identity", "merge", "a", "b"],
        ["archive", "restore", "a b"],
        ["streams", "backup", "/dev/null"],
    ):
        check(jetsource("-o", "json", *argv), USAGE, "", as_json=True)  # type: ignore[operator]


async def _last_seq(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.last_seq)
    finally:
        await nc.close()


def test_refused_commands_append_nothing(jetsource: object, cli_stack: CliStack) -> None:
    """Whatever a write command refuses leaves the event stream as it was; a blank
    --reason no longer voids an event (`repair void --reason "" --yes` did)."""
    env = cli_stack.services.env
    url, stream = env["JETSOURCE_NATS__URL"], env["JETSOURCE_EVENTSTORE__STREAM"]
    r = jetsource("ctx", "create", "hostile-1", "--title", "T")  # type: ignore[operator]
    assert r.code == 0, r
    before = asyncio.run(_last_seq(url, stream))
    refused = [
        ["ctx", "decide", "hostile-1", "d1", "--title", "x", "--expected-version", "-1"],
        ["ctx", "decide", "hostile-1", "d\udcff", "--title", "x"],
        ["ctx", "decide", "hostile-1", "d 1", "--title", "x"],
        ["ctx", "decide", "hostile-1", "d1", "--title", "x", "--timeout", "inf"],
        ["ctx", "close", "hostile-1", "--reason", BIG],
        ["ctx", "create", "hostile-1", "--title", "again"],
        ["repair", "void", "--seq", str(before), "--reason", "", "--yes"],
    ]
    for argv in refused:
        r = jetsource(*argv)  # type: ignore[operator]
        assert r.code in (REFUSED, USAGE) and "Traceback" not in r.err, (argv, r)
    assert asyncio.run(_last_seq(url, stream)) == before
    shown = jetsource("-o", "json", "ctx", "events", "hostile-1")  # type: ignore[operator]
    assert [e["event_type"] for e in json.loads(shown.out)["events"]] == ["ContextCreated"]


def test_a_publisher_stopped_mid_way_is_unavailable_and_the_key_retries(
    jetsource: object, cli_stack: CliStack
) -> None:
    """A publisher that stops answering (SIGSTOP): exit 3 within the timeouts, the key
    printed; once it is back, a retry with the key applies the command once."""
    assert jetsource("ctx", "create", "hostile-2", "--title", "T").code == 0  # type: ignore[operator]
    proc = cli_stack.services.procs["publisher"]
    fast = {"JETSOURCE_CLIENT__CONNECT_TIMEOUT_S": "1"}
    argv = ["ctx", "decide", "hostile-2", "d1", "--title", "A", "--timeout", "1"]
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        r = jetsource("-o", "json", *argv, env=fast)  # type: ignore[operator]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    check(r, UNAVAILABLE, "", as_json=True)
    key = json.loads(r.err)["error"]["idempotency_key"]
    again = jetsource("-o", "json", *argv[:-2], "-k", key)  # type: ignore[operator]
    assert again.code == 0, again
    assert json.loads(again.out)["version"] == 2


def _cli(*args: str | bytes, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [JETSOURCE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _env(cli_stack: CliStack, **extra: str) -> dict[str, str]:
    env = clean_environ()
    env.update({k: v for k, v in cli_stack.services.env.items() if k.startswith("JETSOURCE_")})
    env.update(cli_stack.env)
    env.update(extra)
    return env


def test_processes_bad_admin_setting_raw_bytes_and_unreachable_nats(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    """As a process: JETSOURCE_ADMIN_CONNECT_TIMEOUT_S=abc broke every command at
    import (a traceback even for `ctx list`); non-UTF-8 bytes in argv were a traceback;
    with NATS away `repair void` waited for good and `archive list` an hour."""
    bad = _env(cli_stack, JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="abc")
    away = _env(
        cli_stack,
        JETSOURCE_NATS__URL=f"nats://{NOBODY}",
        JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="1",
    )
    runs = {
        "ctx list": (_cli("ctx", "list", env=bad), 0, ""),
        "projector status": (_cli("projector", "status", env=bad), USAGE, "CONNECT_TIMEOUT_S"),
        "raw bytes": (
            _cli("ctx", "create", os.fsencode("a\udcff"), "--title", "T", env=_env(cli_stack)),
            USAGE,
            "UTF-8",
        ),
        "repair": (
            _cli("repair", "void", "--seq", "1", "--reason", "x", "--yes", env=away),
            UNAVAILABLE,
            "NATS",
        ),
        "archive": (_cli("archive", "list", env=away), UNAVAILABLE, "NATS"),
        "backup": (_cli("streams", "backup", str(tmp_path / "b"), env=away), UNAVAILABLE, "NATS"),
    }
    started = time.monotonic()
    for name, (proc, code, text) in runs.items():
        try:
            out, err = proc.communicate(timeout=max(5.0, 90 - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for p, _, _ in runs.values():
                p.kill()
            raise AssertionError(f"{name}: still running after 90 s") from None
        stderr = err.decode(errors="replace")
        assert "Traceback" not in stderr, (name, stderr)
        assert proc.returncode == code, (name, proc.returncode, out, stderr)
        assert text in stderr, (name, stderr)
