"""The session record: what ``jetsource sessions list/show`` and the TUI's list show.

Command and its metadata (``session_started``'s data), start and end, status
(active, completed, failed, interrupted), event count, and the latest status snapshot
(the progress fold's summary). A session without ``session_ended`` is active while its
emitter keeps talking and *interrupted* once nothing (no event, no heartbeat) has been
recorded for ``interrupted_after_s``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jetsource.core.clock import NS
from jetsource.domains.sessions.format import format_ts
from jetsource.domains.sessions.progress import SessionState

ACTIVE, COMPLETED, FAILED, INTERRUPTED = "active", "completed", "failed", "interrupted"
STATUSES = (ACTIVE, COMPLETED, FAILED, INTERRUPTED)


def session_status(ended_status: str, last_recorded_ns: int, now_ns: int, quiet_s: float) -> str:
    """``ended_status`` is what session_ended said ("active" when there is none)."""
    if ended_status in (COMPLETED, FAILED, INTERRUPTED):
        return ended_status
    if ended_status == "cancelled":
        return INTERRUPTED
    if last_recorded_ns and now_ns - last_recorded_ns > quiet_s * NS:
        return INTERRUPTED
    return ACTIVE


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    command: str
    metadata: dict[str, Any]
    started_ns: int
    ended_ns: int
    status: str
    event_count: int
    last_seq: int
    last_recorded_ns: int
    snapshot: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def duration_s(self) -> float | None:
        end = self.ended_ns or (self.last_recorded_ns if self.status != ACTIVE else 0)
        if not end or not self.started_ns:
            return None
        return max(0.0, (end - self.started_ns) / NS)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "command": self.command,
            "metadata": self.metadata,
            "started_at": format_ts(self.started_ns) if self.started_ns else None,
            "ended_at": format_ts(self.ended_ns) if self.ended_ns else None,
            "status": self.status,
            "duration_s": self.duration_s,
            "event_count": self.event_count,
            "last_seq": self.last_seq,
            "last_recorded_at": format_ts(self.last_recorded_ns) if self.last_recorded_ns else None,
            "snapshot": self.snapshot,
            "error": self.error or None,
        }


def record_of(
    state: SessionState, last_recorded_ns: int, now_ns: int, quiet_s: float
) -> SessionRecord:
    return SessionRecord(
        session_id=state.session,
        command=state.command,
        metadata=state.started,
        started_ns=state.started_ns,
        ended_ns=state.ended_ns,
        status=session_status(state.status, last_recorded_ns, now_ns, quiet_s),
        event_count=state.count,
        last_seq=state.seq,
        last_recorded_ns=last_recorded_ns,
        snapshot=state.snapshot(),
        error=state.error,
    )
