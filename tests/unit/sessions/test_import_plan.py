"""The import's plan per session: (session, seq) is the identity of an event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from jetsource.domains.sessions.format import SessionEvent
from jetsource.domains.sessions.importing import (
    ImportConflictError,
    Line,
    plan_import,
    plan_session,
)

T = 1_700_000_000_000_000_000


def ev(
    seq: int, kind: str = "step", data: dict[str, Any] | None = None, sid: str = "s"
) -> SessionEvent:
    if seq == 1 and kind == "step":
        kind, data = "session_started", {"command": "c"}
    return SessionEvent(
        T + seq * 1_000_000, sid, seq, kind, data if data is not None else {"n": seq}
    )


def lines(*events: SessionEvent) -> list[Line]:
    return [Line(i, e) for i, e in enumerate(events, 1)]


def recorded(*seqs: int) -> dict[int, SessionEvent | None]:
    return {s: ev(s) for s in seqs}


def test_a_fresh_session_appends_every_line() -> None:
    plan = plan_session("s", lines(ev(1), ev(2), ev(3)), 0, {})
    assert ([x.event.seq for x in plan.new], plan.known, plan.last) == ([1, 2, 3], 0, 0)


def test_lines_the_ledger_holds_are_known_and_the_rest_appended() -> None:
    plan = plan_session("s", lines(ev(1), ev(2), ev(3), ev(4)), 2, recorded(1, 2))
    assert ([x.event.seq for x in plan.new], plan.known) == ([3, 4], 2)


def test_numbers_compare_as_the_ledger_keeps_them_but_true_is_not_one() -> None:
    at = {1: ev(1), 2: ev(2, data={"x": 3, "y": [1.0]})}
    assert plan_session("s", lines(ev(1), ev(2, data={"x": 3.0, "y": [1]})), 2, at).known == 2
    with pytest.raises(ImportConflictError, match=r"^line 2: .*differs in data"):
        plan_session("s", lines(ev(1), ev(2, data={"x": True, "y": [1]})), 2, at)


@pytest.mark.parametrize(
    ("changed", "fields"),
    [
        (ev(2, "other"), "type"),
        (SessionEvent(T, "s", 2, "step", {"n": 2}), "ts"),
        (ev(2, data={"n": 9}), "data"),
    ],
)
def test_a_line_that_contradicts_the_ledger_is_refused_naming_it(
    changed: SessionEvent, fields: str
) -> None:
    with pytest.raises(ImportConflictError) as refused:
        plan_session("s", lines(ev(1), changed, ev(3)), 3, recorded(1, 2, 3))
    assert refused.value.line == 2
    assert str(refused.value).startswith("line 2: session s seq 2 is recorded already as step")
    assert f"differs in {fields})" in str(refused.value)


def test_a_voided_place_is_already_recorded() -> None:
    plan = plan_session("s", lines(ev(1), ev(2), ev(3)), 3, {1: ev(1), 2: None, 3: ev(3)})
    assert (plan.new, plan.known) == ([], 3)


@pytest.mark.parametrize(
    ("events", "last", "line", "words"),
    [
        ((ev(3),), 0, 1, "seq 3 leaves a gap: the session is not recorded yet, so seq 1"),
        ((ev(1), ev(2), ev(4)), 2, 3, "recorded up to seq 2, so seq 3 must come first"),
        ((ev(3), ev(5)), 2, 2, "recorded up to seq 2, the file up to seq 3, so seq 4"),
        ((ev(2), ev(1)), 0, 1, "so seq 1 must come first"),
    ],
)
def test_a_gap_is_refused_naming_the_line(
    events: tuple[SessionEvent, ...], last: int, line: int, words: str
) -> None:
    with pytest.raises(ImportConflictError) as refused:
        plan_session("s", lines(*events), last, recorded(*range(1, last + 1)))
    assert refused.value.line == line
    assert words in str(refused.value)


def test_a_line_repeated_in_the_file_is_known_a_changed_repeat_refused() -> None:
    plan = plan_session("s", lines(ev(1), ev(2), ev(1), ev(2), ev(3)), 0, {})
    assert ([x.event.seq for x in plan.new], plan.known) == ([1, 2, 3], 2)
    with pytest.raises(ImportConflictError, match=r"^line 3: session s seq 2 is on line 2 as"):
        plan_session("s", lines(ev(1), ev(2), ev(2, data={"n": 0})), 0, {})


async def test_one_read_per_session_from_its_lowest_seq() -> None:
    reads: list[tuple[str, int]] = []

    async def read(sid: str, from_seq: int) -> tuple[int, Mapping[int, SessionEvent | None]]:
        reads.append((sid, from_seq))
        return (2, {2: ev(2, sid="a")}) if sid == "a" else (0, {})

    plans = await plan_import(
        lines(ev(2, sid="a"), ev(1, sid="b"), ev(3, sid="a"), ev(2, sid="b")), read
    )
    assert reads == [("a", 2), ("b", 1)]
    assert [(p.session, p.last, [x.number for x in p.new], p.known) for p in plans] == [
        ("a", 2, [3], 1),
        ("b", 0, [2, 4], 0),
    ]
