"""`sessions show ID` of a process that is not a session (a task's id from `process
list`) answered as if it were an active session: no command, status active. It is
now the unknown session's answer (SessionNotFoundError: the CLI's NOT_FOUND, exit 1),
saying the process's kind; `export` the same. A session still shows."""

from __future__ import annotations

import pytest

from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.ledger import Recorded
from jetsource.domains.sessions.service import SessionNotFoundError, Sessions


class Reader:
    def __init__(self, recorded: dict[str, list[Recorded]]) -> None:
        self.recorded = recorded

    async def events(self, session_id: str, after_seq: int = 0) -> list[Recorded]:
        return [r for r in self.recorded.get(session_id, []) if r.event.seq > after_seq]

    async def first(self, session_id: str) -> Recorded | None:
        return next(iter(self.recorded.get(session_id, [])), None)

    async def tail(self, session_id: str) -> tuple[int, int]:
        got = self.recorded.get(session_id, [])
        return (got[-1].event.seq, got[-1].recorded_ns) if got else (0, 0)


def rec(pid: str, seq: int, kind: str, data: dict[str, object]) -> Recorded:
    return Recorded(SessionEvent(1_000_000, pid, seq, kind, data), 1_000_000, seq)


READER = Reader(
    {
        "task1": [
            rec("task1", 1, "process_started", {"kind": "task", "name": "build"}),
            rec("task1", 2, "step", {}),
        ],
        "s1": [rec("s1", 1, "session_started", {"command": "deploy"})],
    }
)


async def test_show_of_another_kinds_process_is_not_found_naming_the_kind() -> None:
    sessions = Sessions(READER)  # type: ignore[arg-type]
    with pytest.raises(SessionNotFoundError) as caught:
        await sessions.show("task1")
    assert str(caught.value) == (
        "session 'task1' not found: it is a process of kind task, not a session"
    )
    with pytest.raises(SessionNotFoundError, match="kind task"):
        await sessions.export("task1")
    with pytest.raises(SessionNotFoundError, match=r"^session 'nope' not found$"):
        await sessions.show("nope")
    record, _, _ = await sessions.show("s1")
    assert record.command == "deploy"
    assert [e.seq for e in await sessions.export("s1", after_seq=0)] == [1]
    # export --after printed the task's events as a session's ([2])
    with pytest.raises(SessionNotFoundError, match=r"kind task, not a session$"):
        await sessions.export("task1", after_seq=1)
    assert await sessions.export("s1", after_seq=1) == []
