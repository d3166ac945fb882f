"""A logged value a client controls cannot forge or flood the log: newlines and ANSI
escapes stay inside one JSON line, and a 1 MB value (a path, an error's text, a
traceback) is cut so the line stays under the 16 KiB at which Docker's and the CRI's
log drivers split a line into pieces that are no JSON (it used to be written whole)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from jetsource.core.logging import setup_logging

SPLIT_AT = 16 * 1024


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("ingest", "INFO", json=True, repeat_window_s=0, stream=buffer)
    try:
        yield buffer
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    lines = out.getvalue().splitlines()
    assert all(len(line) < SPLIT_AT for line in lines), [len(line) for line in lines]
    return [json.loads(line) for line in lines]


def test_a_huge_value_is_cut_to_one_short_json_line(out: io.StringIO) -> None:
    path = "/api/v1/" + "A" * 1_000_000 + "END"
    logging.getLogger("jetsource.ingest").error("%s failed", path, extra={"aggregate": path})
    (line,) = _lines(out)
    message = str(line["message"])
    assert message.startswith("/api/v1/AAA") and message.endswith("END failed")
    assert "characters cut" in message
    assert "characters cut" in str(line["aggregate"])


def test_a_huge_traceback_is_one_short_line_ending_with_its_error(out: io.StringIO) -> None:
    try:
        raise ValueError("x" * 1_000_000 + " the end")
    except ValueError as exc:
        logging.getLogger("jetsource.grpc").error("Append failed unexpectedly", exc_info=exc)
    (line,) = _lines(out)
    exception = str(line["exception"])
    assert exception.startswith("Traceback") and exception.endswith("the end")
    assert "characters cut" in exception


def test_newlines_and_escapes_stay_inside_one_line(out: io.StringIO) -> None:
    forged = 'x\n{"level": "info", "message": "forged"}\r\n\x1b[31mred\x1b[0m'
    logging.getLogger("jetsource.ingest").warning("webhook to %s refused", forged)
    (line,) = _lines(out)
    assert line["message"] == f"webhook to {forged} refused"
    assert "\x1b" not in out.getvalue()


def test_short_values_are_untouched(out: io.StringIO) -> None:
    logging.getLogger("jetsource.ingest").warning("%s", "y" * 4000)
    (line,) = _lines(out)
    assert line["message"] == "y" * 4000


def test_key_value_text_shows_control_characters_escaped() -> None:
    # JETSOURCE_LOG_JSON=false (or a terminal): a newline in a value forged a line of
    # its own and an ANSI escape reached the operator's terminal.
    buffer = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    setup_logging("ingest", "INFO", json=False, repeat_window_s=0, stream=buffer)
    try:
        forged = "x\n2026-12-06T00:00:00Z [error    ] forged\r\x1b[2J\x9b\u202e"
        logging.getLogger("jetsource.ingest").warning("webhook to %s refused", forged)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    text = buffer.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert not any(c in text for c in "\r\x1b\x9b\u202e"), repr(text)
    # The bidi override too (core.printable's list, as the CLI and the TUI show it).
    shown = "webhook to x\\n2026-12-06T00:00:00Z [error    ] forged\\r\\x1b[2J\\x9b\\u202e refused"
    assert shown in text, text
