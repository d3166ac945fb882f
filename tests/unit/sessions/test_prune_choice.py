"""Which sessions the pruner takes: ended ones by age and by count, never active or
interrupted ones."""

from __future__ import annotations

from jetsource.core.clock import NS
from jetsource.domains.sessions.record import SessionRecord, session_status
from jetsource.domains.sessions.service import choose_prunable

DAY = 86_400 * NS
NOW = 1_000 * DAY


def rec(sid: str, status: str, ended_days_ago: float) -> SessionRecord:
    end = NOW - int(ended_days_ago * DAY)
    return SessionRecord(sid, "cmd", {}, end - NS, end if status != "active" else 0, status,
                         2, 2, end)  # fmt: skip


RECORDS = [
    rec("old-done", "completed", 40),
    rec("old-failed", "failed", 35),
    rec("old-active", "active", 50),
    rec("old-interrupted", "interrupted", 60),
    rec("new-1", "completed", 3),
    rec("new-2", "completed", 2),
    rec("new-3", "completed", 1),
]


def test_by_age_takes_only_ended_sessions_past_the_limit() -> None:
    chosen = choose_prunable(RECORDS, NOW, older_than_s=30 * 86_400, keep=0)
    assert [r.session_id for r in chosen] == ["old-done", "old-failed"]


def test_by_count_keeps_the_newest_ended_ones() -> None:
    chosen = choose_prunable(RECORDS, NOW, older_than_s=0, keep=2)
    assert [r.session_id for r in chosen] == ["old-done", "old-failed", "new-1"]


def test_nothing_when_no_rule_applies() -> None:
    assert choose_prunable(RECORDS, NOW, 0, 0) == []
    assert choose_prunable(RECORDS, NOW, 365 * 86_400, 100) == []


def test_a_quiet_session_without_an_end_is_interrupted() -> None:
    assert session_status("active", NOW - 5 * NS, NOW, quiet_s=60) == "active"
    assert session_status("active", NOW - 61 * NS, NOW, quiet_s=60) == "interrupted"
    assert session_status("completed", NOW - DAY, NOW, quiet_s=60) == "completed"
    assert session_status("cancelled", NOW, NOW, quiet_s=60) == "interrupted"


def test_an_end_said_later_than_it_was_recorded_counts_as_recorded() -> None:
    # An emitter whose clock ran a year ahead (or said 2099) ended these sessions 40
    # days ago by the stream's clock: they were kept past --older-than until that
    # future time, and ranked newest they held --keep's places from real newer ones.
    ahead = [
        SessionRecord(sid, "cmd", {}, said - NS, said, "completed", 2, 2, NOW - 40 * DAY)
        for sid, said in (("ahead-a-year", NOW + 325 * DAY), ("says-2099", 47_000 * DAY))
    ]
    records = [*RECORDS, *ahead]
    by_age = choose_prunable(records, NOW, older_than_s=30 * 86_400, keep=0)
    assert {r.session_id for r in by_age} == {
        "old-done",
        "old-failed",
        *(a.session_id for a in ahead),
    }
    by_count = choose_prunable(records, NOW, older_than_s=0, keep=3)
    assert {r.session_id for r in by_count} == {
        "old-done",
        "old-failed",
        *(a.session_id for a in ahead),
    }
