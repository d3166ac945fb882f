"""Service logs: structured lines from stdlib logging calls, and repeats rate-limited."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from jetsource.core.logging import RepeatFilter, setup_logging
from jetsource.core.settings import JetsourceSettings


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stdlib_calls_come_out_as_json_lines_with_every_field(restore_logging: None) -> None:
    out = io.StringIO()  # not a terminal: JSON by default
    setup_logging("projector", "INFO", stream=out)
    log = logging.getLogger("jetsource.projector")
    log.info("%s v%s: started", "context", 2, extra={"model": "context", "version": 2})
    log.debug("below the level")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("seq %d dead-lettered", 17, extra={"aggregate": "s1", "seq": 17})
    structlog.get_logger("jetsource.native").warning("native call", story="s2")

    first, second, third = lines(out)
    assert list(first)[:5] == ["timestamp", "level", "service", "logger", "message"]
    assert first["timestamp"].endswith("Z")
    assert first["level"] == "info" and first["service"] == "projector"
    assert first["logger"] == "jetsource.projector"
    assert first["message"] == "context v2: started"  # %-formatting applied
    assert (first["model"], first["version"]) == ("context", 2)
    assert second["level"] == "error" and second["message"] == "seq 17 dead-lettered"
    assert (second["aggregate"], second["seq"]) == ("s1", 17)
    assert "ValueError: boom" in second["exception"]
    assert third["logger"] == "jetsource.native" and third["story"] == "s2"
    assert third["service"] == "projector"


def test_a_terminal_gets_plain_key_value_text(restore_logging: None) -> None:
    out = Tty()
    setup_logging("query", "DEBUG", stream=out)
    logging.getLogger("jetsource.query").debug("watch %s", "s1", extra={"aggregate": "s1"})
    text = out.getvalue()
    assert "\x1b[" not in text  # no colour codes
    assert "watch s1" in text and "aggregate=s1" in text and "service=query" in text
    assert "[debug" in text and "[jetsource.query]" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_json_can_be_forced_on_a_terminal_and_the_setting_is_read(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JETSOURCE_LOG_JSON", "true")
    monkeypatch.setenv("JETSOURCE_LOG_LEVEL", "warning")
    settings = JetsourceSettings.load()
    assert settings.log_json is True
    out = Tty()
    setup_logging("publisher", settings.log_level, json=settings.log_json, stream=out)
    logging.getLogger("jetsource.publisher").info("left out")
    logging.getLogger("jetsource.publisher").warning("kept")
    assert [line["message"] for line in lines(out)] == ["kept"]
    monkeypatch.delenv("JETSOURCE_LOG_JSON")
    assert JetsourceSettings().log_json is None  # unset: chosen by the terminal


def test_a_second_setup_replaces_the_first_handler(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("a", stream=first)
    setup_logging("b", stream=second)
    logging.getLogger("jetsource.x").warning("once")
    assert first.getvalue() == ""
    assert [line["service"] for line in lines(second)] == ["b"]


def test_repeated_warnings_are_suppressed_and_counted(restore_logging: None) -> None:
    out = io.StringIO()
    handler = setup_logging("projector", stream=out, repeat_window_s=5.0)
    clock = Clock()
    limiter = next(f for f in handler.filters if isinstance(f, RepeatFilter))
    limiter.clock = clock
    log = logging.getLogger("jetsource.projector")

    def redelivering(error: str) -> None:
        # The worker's call: the error text varies, the rate key does not.
        log.warning(
            "context v1: %s; redelivering",
            error,
            extra={"model": "context", "rate_key": "redelivering context v1"},
        )

    for i in range(256):  # a 32 s outage, one redelivery every 125 ms
        redelivering(f"valkey: connection refused ({i})")
        log.info("info lines are never suppressed")
        clock.now += 0.125
    written = [line for line in lines(out) if line["level"] == "warning"]
    # One line per 5 s window (at 0, 5, ... 30 s), each after the first counting the
    # 39 left out since the one before.
    assert len(written) == 7
    assert "repeats_suppressed" not in written[0]
    assert [line["repeats_suppressed"] for line in written[1:]] == [39] * 6
    assert all("rate_key" not in line for line in written)
    assert sum(1 for line in lines(out) if line["level"] == "info") == 256

    # Another key (another model) is not held back by this one's window.
    log.warning("timeline v1: down; redelivering", extra={"rate_key": "redelivering timeline"})
    # Without a rate key, identical text is the key; different text is not suppressed.
    log.warning("same text")
    log.warning("same text")
    log.warning("other text")
    tail = [line["message"] for line in lines(out)[-3:]]
    assert tail == ["timeline v1: down; redelivering", "same text", "other text"]


def test_the_limiter_counts_until_the_next_line_and_forgets_old_keys() -> None:
    clock = Clock()
    limiter = RepeatFilter(10.0, clock=clock, max_keys=3)

    def record(msg: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("jetsource.t", level, __file__, 1, msg, (), None)

    assert limiter.filter(record("a"))
    assert not limiter.filter(record("a"))
    assert not limiter.filter(record("a"))
    assert limiter.filter(record("a", logging.INFO))  # below WARNING: always
    clock.now += 10
    again = record("a")
    assert limiter.filter(again)
    assert again.__dict__["repeats_suppressed"] == 2
    for name in "bcdef":
        assert limiter.filter(record(name))
    assert len(limiter._seen) <= 3
    assert RepeatFilter(0).filter(record("a")) and RepeatFilter(0).filter(record("a"))
