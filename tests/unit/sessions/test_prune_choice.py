"""Which sessions the pruner takes: ended ones by age and by count (completed, failed,
interrupted by their ending, and those with no ending once quiet past the unended age),
never active ones."""

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
    assert [r.session_id for r in chosen] == ["old-interrupted", "old-done", "old-failed"]


def test_by_count_keeps_the_newest_ended_ones() -> None:
    chosen = choose_prunable(RECORDS, NOW, older_than_s=0, keep=2)
    assert [r.session_id for r in chosen] == [
        "old-interrupted",
        "old-done",
        "old-failed",
        "new-1",
    ]


def unended(sid: str, quiet_days: float) -> SessionRecord:
    """A session with no ending (its emitter gone), listed interrupted: nothing
    recorded for it for ``quiet_days``."""
    last = NOW - int(quiet_days * DAY)
    return SessionRecord(sid, "cmd", {}, last - NS, 0, "interrupted", 2, 2, last)


def test_an_interrupted_session_goes_by_the_same_rules_as_a_completed_one() -> None:
    """Interrupted by its ending (cancelled, Ctrl-C): they were never pruned, by age
    nor by count, and piled up for ever."""
    records = [rec("i-old", "interrupted", 40), rec("c-old", "completed", 35),
               rec("i-new", "interrupted", 1), rec("c-new", "completed", 2)]  # fmt: skip
    by_age = choose_prunable(records, NOW, older_than_s=30 * 86_400, keep=0)
    assert [r.session_id for r in by_age] == ["i-old", "c-old"]
    by_count = choose_prunable(records, NOW, older_than_s=0, keep=1)
    assert [r.session_id for r in by_count] == ["i-old", "c-old", "c-new"]


def test_a_session_with_no_ending_goes_once_quiet_past_the_unended_age() -> None:
    """Its end is its last event recorded; quiet less than ``unended_after_s`` it is
    neither chosen nor holds a place of keep (its emitter may be cut off a while)."""
    records = [unended("gone-40d", 40), unended("gone-2d", 2), unended("quiet-1h", 1 / 24),
               rec("c-3d", "completed", 3), rec("c-1d", "completed", 1)]  # fmt: skip
    day = 86_400
    by_age = choose_prunable(records, NOW, older_than_s=30 * day, keep=0, unended_after_s=day)
    assert [r.session_id for r in by_age] == ["gone-40d"]
    by_count = choose_prunable(records, NOW, older_than_s=0, keep=1, unended_after_s=day)
    assert [r.session_id for r in by_count] == ["gone-40d", "c-3d", "gone-2d"]
    # a longer unended age: the two-day-quiet one is not ended yet (and holds no place)
    longer = choose_prunable(records, NOW, older_than_s=0, keep=1, unended_after_s=7 * day)
    assert [r.session_id for r in longer] == ["gone-40d", "c-3d"]
    # the default: a day
    assert [r.session_id for r in choose_prunable(records, NOW, 0, 1)] == [
        "gone-40d",
        "c-3d",
        "gone-2d",
    ]


def test_an_active_session_is_never_chosen_however_old() -> None:
    records = [rec("live", "active", 400), rec("c", "completed", 400)]
    for unended_after in (1.0, 86_400.0):
        chosen = choose_prunable(records, NOW, 1, 0, unended_after_s=unended_after)
        assert [r.session_id for r in chosen] == ["c"]
        assert [r.session_id for r in choose_prunable(records, NOW, 0, 1, unended_after)] == []


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
        "old-interrupted",
        "old-done",
        "old-failed",
        *(a.session_id for a in ahead),
    }
    by_count = choose_prunable(records, NOW, older_than_s=0, keep=3)
    assert {r.session_id for r in by_count} == {
        "old-interrupted",
        "old-done",
        "old-failed",
        *(a.session_id for a in ahead),
    }
