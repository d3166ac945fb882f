"""`jetsource` with a standard stream closed when it starts (``>&-``, ``2>&-``, ``<&-``:
a service manager's, a cron job's) and the JSON usage errors' ``field``.

A closed stream was None in Python and the first write an AttributeError: ``--version
>&-`` a traceback (on the closed stdout's neighbour, stderr) and exit 1; a usage error
with stderr closed exit 1, not 2; a confirmation with stdin closed ``INTERNAL:
unexpected AttributeError: 'NoneType' object has no attribute 'isatty'``, exit 1, where
with no input left it is ``add --yes to confirm``, exit 2. Now each is /dev/null: output
with no reader is dropped, as for a reader that left, and the exit code is the
command's. An unknown option (or one without its value) in JSON named itself only in
the message: ``field`` names it, as for a bad value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.cli_env import clean_environ


def closing(fd: int) -> Callable[[], None]:
    def close() -> None:
        os.close(fd)

    return close


def jetsource(argv: list[str], closed: int) -> subprocess.CompletedProcess[str]:
    """``python -m jetsource ARGV`` with the standard stream ``closed`` (0, 1, 2) closed;
    the others captured (stdin: no input)."""
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *argv],
        env=clean_environ() | {"JETSOURCE_NATS__URL": "nats://127.0.0.1:1"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=closing(closed),
    )


@pytest.mark.parametrize(
    "argv", [["--version"], ["sessions", "catalog"]], ids=["version", "catalog"]
)
def test_stdout_closed_is_no_traceback(argv: list[str]) -> None:
    run = jetsource(argv, closed=1)
    assert (run.returncode, run.stderr) == (0, ""), run.stderr  # was 1 and a traceback


def test_stderr_closed_keeps_the_exit_code() -> None:
    run = jetsource(["-o", "json", "no-such-command"], closed=2)
    assert run.returncode == 2, run.stdout  # was 1


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_stdin_closed_at_a_confirmation_is_not_confirmed(as_json: bool) -> None:
    argv = [*(["-o", "json"] if as_json else []), "projector", "dlq", "discard", "--seq", "1"]
    run = jetsource(argv, closed=0)
    assert run.returncode == 2, run.stderr  # was 1: INTERNAL, unexpected AttributeError
    line = run.stderr.strip()
    if as_json:
        error = json.loads(line)["error"]
        assert (error["code"], error["field"]) == ("INVALID_ARGUMENT", "--yes"), error
    else:
        assert line.startswith("INVALID_ARGUMENT: ") and "--yes" in line, line


@pytest.mark.parametrize(
    ("argv", "field", "message"),
    [
        (["streams", "ensure", "--bogus"], "--bogus", "No such option: --bogus"),
        (["--bogus", "streams", "ensure"], "--bogus", "No such option: --bogus"),
        (["streams", "ensure", "--timeout"], "--timeout", "Option '--timeout' requires"),
    ],
    ids=["command", "root", "no-value"],
)
def test_an_unknown_option_in_json_is_named_in_field(
    argv: list[str], field: str, message: str
) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "jetsource", "-o", "json", *argv],
        env=clean_environ() | {"JETSOURCE_NATS__URL": "nats://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    error = json.loads(run.stderr.strip())["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["message"].startswith(message), error
    assert error.get("field") == field, error  # it had none


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_usage_error_whose_stderr_reader_left_is_still_exit_2(as_json: bool) -> None:
    # Click and Rich took stderr's broken pipe for stdout's reader leaving: exit 0 (text),
    # 1 (JSON).
    read, write = os.pipe()
    os.close(read)  # stderr's reader is gone before the error is written
    try:
        run = subprocess.run(
            [sys.executable, "-m", "jetsource", *(["-o", "json"] * as_json), "no-such"],
            env=clean_environ(),
            stdout=subprocess.PIPE,
            stderr=write,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (run.returncode, run.stdout) == (2, b"")


def test_stderr_closed_escapes_what_it_cannot_encode_as_python_does() -> None:
    # The stand-in for the closed stderr was strict where Python's own stderr escapes:
    # a word of bytes not UTF-8 (b'\xff' of a file name, '\udcff' in Python) written
    # there was a UnicodeEncodeError, exit 1.
    code = (
        "import sys; from jetsource.cli import _closed_streams_to_devnull as f; f(); "
        "print('no-such-\\udcff', file=sys.stderr); sys.stderr.flush()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=closing(2),
    )
    assert run.returncode == 0, run.stdout
