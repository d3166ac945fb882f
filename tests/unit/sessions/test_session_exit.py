"""A session left by ``sys.exit()`` ends by its exit code, as a shell sees it:
``sys.exit()``/``sys.exit(0)`` completed, another code (or a message) failed, each with
``exit_code``; it was ``failed`` ("SystemExit: 0") even for a clean exit. Ctrl-C stays
``interrupted``, and the exception goes on unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf import json_format

from jetsource._gen.process.v1 import events_pb2
from jetsource.domains.sessions.emit import session


class Writer:
    def __init__(self) -> None:
        self.events: list[events_pb2.CanonicalEvent] = []

    async def record(
        self, events: Sequence[events_pb2.CanonicalEvent]
    ) -> list[events_pb2.Position]:
        self.events += events
        return [events_pb2.Position() for _ in events]


@pytest.mark.parametrize(
    ("exc", "event_type", "status", "extra"),
    [
        (SystemExit(), "process_completed", "completed", {"exit_code": 0}),
        (SystemExit(0), "process_completed", "completed", {"exit_code": 0}),
        (SystemExit(3), "process_failed", "failed", {"exit_code": 3, "error": "SystemExit: 3"}),
        (
            SystemExit("no config"),
            "process_failed",
            "failed",
            {"exit_code": 1, "error": "SystemExit: no config"},
        ),
        (KeyboardInterrupt(), "process_cancelled", "interrupted", {"error": "KeyboardInterrupt"}),
    ],
    ids=["exit()", "exit(0)", "exit(3)", "exit(msg)", "ctrl-c"],
)
async def test_a_session_left_by_sys_exit_ends_by_its_exit_code(
    exc: BaseException, event_type: str, status: str, extra: dict[str, Any]
) -> None:
    writer = Writer()
    with pytest.raises(type(exc)) as raised:
        async with session(writer, "tool run", heartbeat_s=60) as s:
            s.emit("step_done", {"n": 1})
            raise exc
    assert raised.value is exc
    last = writer.events[-1]
    assert last.event_type == event_type
    ended = json_format.MessageToDict(last.data)["session"]
    ended.pop("duration_ms")
    assert ended == {"status": status, **extra}
