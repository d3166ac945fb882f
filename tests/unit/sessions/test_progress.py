"""The progress fold the TUI draws and replay rebuilds."""

from __future__ import annotations

from typing import Any

from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.progress import (
    COMPLETE,
    FAILED,
    RUNNING,
    WAITING,
    SessionState,
    evolve,
    fold,
)


def events(*items: tuple[str, dict[str, Any]]) -> list[SessionEvent]:
    return [SessionEvent(1_000_000 * i, "s1", i + 1, t, d) for i, (t, d) in enumerate(items)]


RUN = events(
    ("session_started", {"command": "context generate"}),
    ("level_started", {"level": 0, "nodes": 2, "node_ids": ["a", "b"]}),
    ("provider_request_sent", {"request_id": "r1", "provider": "p", "node_id": "a"}),
    ("provider_response_received", {"request_id": "r1", "provider": "p"}),
    ("node_generation_failed", {"node_id": "b", "level": 0, "error": "model refused"}),
    ("level_completed", {"level": 0}),
    ("queue_stats", {"pending": 0, "in_flight": 1}),
    ("scan_progress", {"files_scanned": 10, "files_total": 20}),
    ("unknown_future_type", {"x": 1}),
    ("session_ended", {"status": "failed", "error": "1 node failed"}),
)


def test_provider_sent_then_received_moves_a_node_waiting_running_complete() -> None:
    s = fold(RUN[:2])
    assert s.node("a") is not None and s.node("a").status == WAITING  # type: ignore[union-attr]
    s = evolve(s, RUN[2])
    assert s.node("a").status == RUNNING  # type: ignore[union-attr]
    s = evolve(s, RUN[3])  # names only its request: found through it
    assert s.node("a").status == COMPLETE  # type: ignore[union-attr]


def test_a_failed_node_keeps_its_message_and_the_level_counts_it() -> None:
    s = fold(RUN)
    b = s.node("b")
    assert b is not None and (b.status, b.error) == (FAILED, "model refused")
    assert [f.error for f in s.failures] == ["model refused"]
    level = s.level(0)
    assert level is not None and (level.total, level.completed, level.failed) == (2, 1, 1)
    assert level.status == COMPLETE


def test_the_snapshot_and_status_follow_the_events() -> None:
    s = fold(RUN)
    assert (s.status, s.error, s.count, s.seq) == ("failed", "1 node failed", 10, 10)
    snap = s.snapshot()
    assert snap["nodes"] == {"complete": 1, "failed": 1}
    assert snap["queue"] == {"pending": 0, "in_flight": 1}
    assert snap["scan"]["files_scanned"] == 10


def test_fold_in_pieces_equals_fold_at_once() -> None:
    whole = fold(RUN)
    for cut in range(len(RUN) + 1):
        assert fold(RUN[cut:], fold(RUN[:cut])) == whole
    assert fold([]) == SessionState()
