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
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli import stream_admin
from jetsource.cli.app import _Root, app
from tests.cli_env import clean_environ

STOPPED = "stopped (Ctrl-C) before it was done"


def said(result: Any, as_json: bool) -> tuple[str, str]:
    """(code, message) of the one line a cancelled command wrote on stderr."""
    lines = result.stderr.strip().splitlines()
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
        (lambda: abort_after(EOFError()), "no answer at the prompt (end of input)"),
        (lambda: RuntimeError("Error calling __set_name__"), STOPPED),
    ],
    ids=["abort-on-ctrl-c", "abort-on-eof", "wrapped-ctrl-c"],
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


def prompted(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """``jetsource ARGV`` with a terminal for stdin, once it asks (its prompt on stdout)."""
    master, slave = pty.openpty()
    env = clean_environ() | {"JETSOURCE_NATS__URL": "nats://127.0.0.1:1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "jetsource", *argv],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + 20
    while b"[y/N]" not in seen:
        assert proc.poll() is None and time.monotonic() < deadline, seen
        seen += proc.stdout.read() or b""
        time.sleep(0.02)
    return proc, master


DISCARD = ["projector", "dlq", "discard", "--seq", "1"]


def test_ctrl_c_at_a_confirmation_prompt_is_cancelled_exit_130() -> None:
    proc, master = prompted(DISCARD)
    try:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(master)
    assert proc.returncode == 130, err  # was 1, "Aborted!"
    assert err.decode().strip().splitlines() == [f"cancelled: {STOPPED}"]


def test_a_confirmation_answered_no_is_cancelled_saying_nothing_was_done() -> None:
    proc, master = prompted(DISCARD)
    try:
        os.write(master, b"n\n")
        _, err = proc.communicate(timeout=20)
    finally:
        os.close(master)
    assert proc.returncode == 130, err  # was 1, "Aborted!"
    assert err.decode().strip().splitlines() == ["cancelled: not confirmed: nothing was done"]
