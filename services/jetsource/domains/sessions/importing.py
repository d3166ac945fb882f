"""Importing session events (``jetsource sessions import``): (session, seq) is an
event's identity, whatever recorded it first (the live emitter, an earlier import,
the observer).

Per session, the ledger is read once: its last seq and the events at the seqs the
file names at or below it. A line at a recorded seq is *already recorded* when it says
what the ledger holds there (type, ts and data) and refused, naming the line, when it
does not; a line at a seq an operator voided is already recorded (the void stands). A
line at ``last + 1`` (the ledger's, or the file's own for lines before it) is new and
appended, exactly there; a line further on, with the seqs before it missing, is
refused (a gap the ledger cannot hold: its seqs are contiguous from 1), and so is a new
session whose seq 1 is not ``session_started``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jetsource.domains.sessions.format import SESSION_STARTED, SessionEvent, restore_ints


class ImportConflictError(ValueError):
    """A line that contradicts the ledger (or an earlier line of the file) at its
    (session, seq), or leaves a gap before it; the message names the line."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}")


@dataclass(frozen=True)
class Line:
    number: int  # in the file, from 1
    event: SessionEvent


@dataclass
class SessionImport:
    """What importing one session's lines does: ``new`` are appended after ``last``
    (the seq recorded before), ``known`` lines are recorded already."""

    session: str
    last: int
    new: list[Line] = field(default_factory=list)
    known: int = 0


# (last seq, {seq: event or None when voided}) of a session, for seqs from a given one
ReadLedger = Callable[[str, int], Awaitable[tuple[int, Mapping[int, SessionEvent | None]]]]


def _canonical_data(data: dict[str, Any]) -> str:
    # What the ledger keeps (a Struct: numbers are doubles) and gives back (integral
    # ones as ints), compared as JSON so that true and 1 differ.
    return json.dumps(restore_ints(data), sort_keys=True, separators=(",", ":"))


def differences(recorded: SessionEvent, line: SessionEvent) -> list[str]:
    """The fields where ``line`` says something else than ``recorded``."""
    out = []
    if recorded.type != line.type:
        out.append("type")
    if recorded.ts_ns != line.ts_ns:
        out.append("ts")
    if _canonical_data(recorded.data) != _canonical_data(line.data):
        out.append("data")
    return out


def _conflict(number: int, recorded: SessionEvent, line: SessionEvent, where: str) -> str:
    fields = ", ".join(differences(recorded, line))
    return (
        f"session {line.session} seq {line.seq} is {where} as {recorded.type} at "
        f"{recorded.ts}; this line says {line.type} at {line.ts} (differs in {fields})"
    )


def plan_session(
    session: str,
    lines: Sequence[Line],
    last: int,
    recorded: Mapping[int, SessionEvent | None],
) -> SessionImport:
    """The plan for one session's ``lines`` (in file order) against a ledger at
    ``last`` holding ``recorded`` (at least every seq of the lines at or below
    ``last``; None: voided). Raises ImportConflictError naming the first bad line."""
    plan = SessionImport(session, last)
    seen: dict[int, Line] = {}  # new lines of the file, by seq
    for line in lines:
        e = line.event
        top = last + len(plan.new)
        if e.seq <= last:
            at = recorded.get(e.seq)
            if at is not None and differences(at, e):
                raise ImportConflictError(
                    line.number, _conflict(line.number, at, e, "recorded already")
                )
            plan.known += 1
        elif e.seq <= top:
            first = seen[e.seq]
            if differences(first.event, e):
                raise ImportConflictError(
                    line.number, _conflict(line.number, first.event, e, f"on line {first.number}")
                )
            plan.known += 1
        elif e.seq == top + 1:
            if e.seq == 1 and e.type != SESSION_STARTED:
                # The ledger would hold a process that is no session: no list shows
                # it and no prune ever removes it, while show and export read it.
                raise ImportConflictError(
                    line.number,
                    f"session {session} seq 1 is {e.type}: a session begins with "
                    f"{SESSION_STARTED} at seq 1",
                )
            plan.new.append(line)
            seen[e.seq] = line
        else:
            where = f"recorded up to seq {last}" if last else "not recorded yet"
            if plan.new:
                where += f", the file up to seq {top}"
            raise ImportConflictError(
                line.number,
                f"session {session} seq {e.seq} leaves a gap: the session is {where}, "
                f"so seq {top + 1} must come first",
            )
    return plan


async def plan_import(lines: Sequence[Line], read: ReadLedger) -> list[SessionImport]:
    """Every session's plan, in the order sessions first appear; ``read(session,
    from_seq)`` is called once per session with the lowest seq the file names."""
    by_session: dict[str, list[Line]] = {}
    for line in lines:
        by_session.setdefault(line.event.session, []).append(line)
    plans = []
    for session, mine in by_session.items():
        last, recorded = await read(session, min(line.event.seq for line in mine))
        plans.append(plan_session(session, mine, last, recorded))
    return plans
