"""Ctrl-C wherever a `jetsource` command is when it comes ends it the one documented way
(README: exit codes): exit 130 and one ``cancelled`` line (``CANCELLED`` in the gRPC
groups; JSON with -o json), handled once, where the command line is run
(jetsource.cli.main, _Root.make_context and invoke), not by each command. It was:

- at a confirmation prompt (`projector dlq discard`), or any click.Abort before a
  command's run (`streams restore` checking its folder): Click's ``Aborted!``, exit 1
  ("refused by the server"); JSON ``ABORTED``, exit 1;
- while the command line loaded (half a second of imports) a traceback of the import it
  broke; while its options were read, exit 130 and nothing said;
- inside a class's creation (an import in a command): Python 3.11 wraps it in a
  RuntimeError, said as ``INTERNAL: unexpected RuntimeError``, exit 1.

SIGTERM is taken as Ctrl-C and named in the line. A confirmation prompt answered no or
with no input left is no Ctrl-C: the command run without --yes, exit 2 (INVALID_ARGUMENT,
"not confirmed: nothing was done"). An EOFError out of a command is no prompt's: an
unexpected error, exit 1, with or without -o json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli import output, stream_admin
from jetsource.cli.app import _caused_by_ctrl_c, _Root, app, main
from tests.cli_env import clean_environ

STOPPED = "stopped (Ctrl-C) before it was done"


def said(result: Any, as_json: bool) -> tuple[str, str]:
    """(code, message) of the one line a cancelled command wrote on stderr."""
    return said_on(result.stderr, as_json)


def said_on(stderr: str, as_json: bool) -> tuple[str, str]:
    """(code, message) of the one line a cancelled command wrote on ``stderr``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, lines
    if as_json:
        error = json.loads(lines[0])["error"]
        assert error["exit_code"] == 130, error
        return error["code"], error["message"]
    code, _, message = lines[0].partition(": ")
    return code, message


def abort_after(exc: BaseException) -> BaseException:
    """Click's Abort as a prompt raises it on ``exc`` (Ctrl-C or the end of input)."""
    from typer.exceptions import Abort

    try:
        raise exc
    except BaseException:
        try:
            raise Abort() from None
        except Abort as abort:
            return abort


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(
    ("raised", "message"),
    [
        (lambda: abort_after(KeyboardInterrupt()), STOPPED),
        (lambda: RuntimeError("Error calling __set_name__"), STOPPED),
    ],
    ids=["abort-on-ctrl-c", "wrapped-ctrl-c"],
)
def test_streams_restore_stopped_before_its_run_is_cancelled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, raised: Any, message: str, as_json: bool
) -> None:
    def plan(*args: Any) -> Any:
        exc = raised()
        if type(exc) is RuntimeError:  # (Typer's Abort is one too)
            raise exc from KeyboardInterrupt()
        raise exc

    monkeypatch.setattr(stream_admin, "restore_plan", plan)
    (tmp_path / "manifest.json").write_text("{}")
    argv = [*(["-o", "json"] if as_json else []), "streams", "restore", str(tmp_path)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 130, (result.exit_code, result.stderr)  # was 1
    code, text = said(result, as_json)
    assert code == "cancelled" and text.startswith(message), (code, text)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(
    ("argv", "code"),
    [(["streams", "ensure"], "cancelled"), (["ctx", "show", "c1"], "CANCELLED")],
    ids=["streams", "ctx"],
)
def test_ctrl_c_while_the_command_line_is_read_says_so(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], code: str, as_json: bool
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(_Root, "parse_args", interrupted)
    result = CliRunner().invoke(app, [*(["-o", "json"] if as_json else []), *argv])
    assert result.exit_code == 130, result.stderr
    assert said(result, as_json) == (code, STOPPED)  # nothing was said


# A Ctrl-C as the module is imported, wherever the command line is in loading it.
INTERRUPT_AT_IMPORT = """
import sys

AT = sys.argv[1]

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == AT:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, Interrupt())
sys.argv = ["jetsource", *sys.argv[2:]]
from jetsource.cli import main

main()
"""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("module", ["jetsource.cli.app", "importlib.metadata", "typer"])
def test_ctrl_c_while_the_command_loads_is_one_line(module: str, as_json: bool) -> None:
    argv = [*(["-o", "json"] if as_json else []), "ctx", "show", "c1"]
    run = subprocess.run(
        [sys.executable, "-c", INTERRUPT_AT_IMPORT, module, *argv],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 130, run.stderr  # was 1 and a traceback
    assert said(run, as_json) == ("CANCELLED", STOPPED)


@contextlib.contextmanager
def prompted(argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``jetsource ARGV`` with a terminal for stdin, once it asks (its prompt on stdout).
    The child and the terminal are let go however the test ends."""
    master, slave = pty.openpty()
    env = clean_environ() | {"JETSOURCE_NATS__URL": "nats://127.0.0.1:1"}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jetsource", *argv],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 20
        while b"[y/N]" not in seen:
            assert proc.poll() is None and time.monotonic() < deadline, seen
            seen += proc.stdout.read() or b""
            time.sleep(0.02)
        yield proc, master
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        os.close(master)


DISCARD = ["projector", "dlq", "discard", "--seq", "1"]


def answered(answer: bytes | None, argv: list[str] = DISCARD) -> tuple[int, list[str]]:
    """(exit code, stderr's lines) of ``jetsource ARGV`` at its prompt given ``answer``
    (None: SIGINT)."""
    with prompted(argv) as (proc, master):
        if answer is None:
            proc.send_signal(signal.SIGINT)
        else:
            os.write(master, answer)
        _, err = proc.communicate(timeout=20)
    return proc.returncode, err.decode().strip().splitlines()


def test_ctrl_c_at_a_confirmation_prompt_is_cancelled_exit_130() -> None:
    code, lines = answered(None)
    assert code == 130, lines  # was 1, "Aborted!"
    assert lines == [f"cancelled: {STOPPED}"]


NOT_CONFIRMED = "INVALID_ARGUMENT: not confirmed: nothing was done"


def test_a_confirmation_answered_no_is_not_confirmed_exit_2() -> None:
    # As the command run without --yes (exit 2); it was cancelled, exit 130, a Ctrl-C's.
    code, lines = answered(b"n\n")
    assert (code, lines) == (2, [NOT_CONFIRMED])


def test_no_answer_at_a_confirmation_prompt_is_not_confirmed_exit_2() -> None:
    code, lines = answered(b"\x04")  # Ctrl-D: the end of input
    assert code == 2, lines  # was 130
    assert lines == [
        "INVALID_ARGUMENT: no answer at the prompt (end of input): not confirmed, nothing was done"
    ]


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_prompt_without_input_left_is_not_confirmed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, as_json: bool
) -> None:
    def plan(*args: Any) -> Any:
        raise abort_after(EOFError())

    monkeypatch.setattr(stream_admin, "restore_plan", plan)
    (tmp_path / "manifest.json").write_text("{}")
    argv = [*(["-o", "json"] if as_json else []), "streams", "restore", str(tmp_path)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.exit_code, result.stderr)  # was 130
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    if as_json:
        error = json.loads(lines[0])["error"]
        assert (error["code"], error["exit_code"]) == ("INVALID_ARGUMENT", 2), error
        assert error["message"].startswith("no answer at the prompt"), error
    else:
        assert lines[0].startswith("INVALID_ARGUMENT: no answer at the prompt"), lines


# An EOFError out of a command (asyncio.IncompleteReadError is one) is no prompt's.
EOF_IN_COMMAND = """
import asyncio, sys
from jetsource.cli import stream_admin
def plan(*a, **k):
    raise asyncio.IncompleteReadError(b"partial", 10)
stream_admin.restore_plan = plan
sys.argv = ["jetsource", *sys.argv[2:], "streams", "restore", sys.argv[1]]
from jetsource.cli import main
main()
"""


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_eof_error_in_a_command_is_no_prompt_cancelled(tmp_path: Path, as_json: bool) -> None:
    # It was "Aborted." exit 1 in text; with -o json `cancelled`, "no answer at the
    # prompt (end of input): nothing was done", exit 130.
    (tmp_path / "manifest.json").write_text("{}")
    run = subprocess.run(
        [sys.executable, "-c", EOF_IN_COMMAND, str(tmp_path), *(["-o", "json"] * as_json)],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    name = asyncio.IncompleteReadError.__name__
    if as_json:
        error = json.loads(lines[0])["error"]
        assert error["code"] == "INTERNAL" and error["exit_code"] == 1, error
        assert error["message"].startswith(f"unexpected {name}: "), error
    else:
        assert lines[0].startswith(f"INTERNAL: unexpected {name}: "), lines


def test_cli_app_is_the_typer_app_after_its_module_loaded() -> None:
    # As before the command line was loaded lazily: the import system binds the
    # submodule jetsource.cli.app on jetsource.cli, which hid the Typer app.
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import jetsource.cli.app\nfrom jetsource.cli import app\nprint(type(app).__name__)",
        ],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.stdout.strip() == "Typer", run.stdout + run.stderr  # was 'module'


# A SIGTERM (to itself) as the module is imported: while the command line loads.
TERM_AT_IMPORT = INTERRUPT_AT_IMPORT.replace(
    "raise KeyboardInterrupt", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_sigterm_while_the_command_loads_is_one_line(as_json: bool) -> None:
    argv = [*(["-o", "json"] if as_json else []), "ctx", "show", "c1"]
    run = subprocess.run(
        [sys.executable, "-c", TERM_AT_IMPORT, "jetsource.cli.app", *argv],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 130, (run.returncode, run.stderr)  # was -15: killed, silent
    assert said(run, as_json) == ("CANCELLED", STOPPED.replace("Ctrl-C", "SIGTERM"))


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_sigterm_wrapped_by_python_names_sigterm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    # A KeyboardInterrupt Python wraps in a RuntimeError as the command line is read
    # reaches main's last resort (_unexpected): it said "(Ctrl-C)" after a SIGTERM.
    def term(*args: Any, **kwargs: Any) -> Any:
        output.signal_arrived("SIGTERM")
        raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()

    monkeypatch.setattr(output, "_stopped_by", [])
    monkeypatch.setattr(_Root, "parse_args", term)
    monkeypatch.setattr(
        sys, "argv", ["jetsource", *(["-o", "json"] * as_json), "streams", "ensure"]
    )
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            main()
    finally:
        signal.signal(signal.SIGTERM, handler)
        output.set_mode(None)
    assert stop.value.code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    message = json.loads(lines[0])["error"]["message"] if as_json else lines[0]
    assert "stopped (SIGTERM) before it was done" in message, message


def test_a_cycle_of_causes_is_no_ctrl_c() -> None:
    first, second = RuntimeError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    answer: list[bool] = []
    walk = threading.Thread(target=lambda: answer.append(_caused_by_ctrl_c(first)), daemon=True)
    walk.start()
    walk.join(2)
    assert answer == [False]  # it walked the cycle for good
