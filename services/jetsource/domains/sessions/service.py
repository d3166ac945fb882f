"""What users do with sessions: list, show, export, follow, replay and prune.

Built on a ``SessionReader`` (the ledger) and, for pruning, a ``Purger``: the one
role that may remove history from the stream carrying sessions. Only whole *ended*
sessions are pruned, with every process nested under them: completed, failed or
interrupted by their ending, and those with no ending (their emitter gone) once
nothing has been recorded for them for ``prune_unended_after_s``. Active sessions
never are.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from jetsource.core.clock import NS, now_ns
from jetsource.core.errors import CorruptEventError
from jetsource.domains.sessions.format import PROCESS_STARTED, SESSION_KIND, SessionEvent
from jetsource.domains.sessions.ledger import (
    LedgerBehindError,
    LedgerReader,
    ProcessSummary,
    Recorded,
    SessionReader,
    StreamMark,
    fold_lifecycle,
    tail_over,
)
from jetsource.domains.sessions.progress import SessionState, evolve, fold
from jetsource.domains.sessions.record import (
    COMPLETED,
    FAILED,
    INTERRUPTED,
    SessionRecord,
    record_of,
    session_status,
)
from jetsource.domains.sessions.settings import PRUNE_UNENDED_AFTER_S as DAY_S
from jetsource.domains.sessions.settings import SessionsSettings


class SessionNotFoundError(LookupError):
    pass


def another_kind(session_id: str, kind: object) -> SessionNotFoundError:
    """The unknown session's answer for the id of a process of another kind: the one
    text of show, export (with or without ``after_seq``), follow and tree."""
    shown = kind if isinstance(kind, str) and kind else "(none)"
    return SessionNotFoundError(
        f"session {session_id!r} not found: it is a process of kind {shown}, not a session"
    )


def not_a_session(session_id: str, recorded: Sequence[Recorded]) -> None:
    """Raise SessionNotFoundError, as for an unknown id, when ``recorded`` are the
    events of a process of another kind (its first is a ``process_started`` that is not
    a session's): `sessions show` of a task's id answered as if it were a session,
    with no command and status active."""
    first = recorded[0].event if recorded else None
    if first is not None and first.seq <= 1 and first.type == PROCESS_STARTED:
        data = first.data if isinstance(first.data, dict) else {}
        raise another_kind(session_id, data.get("kind"))


class Purger(Protocol):
    """The pruner's steps on the ledger (``jetsource.domains.process.pruner``); each
    raises PermissionError when the stream or the NATS user refuses a purge."""

    async def check(self) -> None:
        """Refuse (PermissionError) before anything is written if purges are denied."""

    async def finish_pending(self) -> int:
        """Finish what a killed run tombstoned but did not purge."""

    async def prune_tree(self, root: str, ids: Sequence[str], reason: str = "") -> int:
        """Tombstone the tree (the read models forget it), then purge its events."""

    async def complete(self) -> None:
        """Mark everything tombstoned so far as purged."""


class PruneDeniedError(PermissionError):
    """The stream refuses purges (its policy keeps history forever for every role)."""


@dataclass
class PruneReport:
    dry_run: bool
    pruned: list[SessionRecord] = field(default_factory=list)
    processes: int = 0
    events: int = 0
    kept: int = 0
    # tombstones of an earlier, interrupted run finished first
    resumed: int = 0
    # A dry run's processes whose events could not be counted (a corrupt event, and no
    # stream to count its messages on): ``events`` leaves them out.
    uncounted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "sessions": [r.session_id for r in self.pruned],
            "processes": self.processes,
            "events": self.events,
            "kept": self.kept,
            "resumed": self.resumed,
            "uncounted": self.uncounted,
        }


def choose_prunable(
    records: Iterable[SessionRecord],
    now: int,
    older_than_s: float,
    keep: int,
    unended_after_s: float = DAY_S,
    quiet: Collection[str] | None = None,
) -> list[SessionRecord]:
    """Ended sessions older than ``older_than_s`` (by end time; 0: no age rule) or
    beyond the newest ``keep`` ended ones (0: no count rule), oldest first.

    Ended: completed, failed or interrupted by the session's ending, and a session with
    no ending (interrupted: its emitter went quiet) once nothing has been recorded for
    it for ``unended_after_s`` (then its end is its last event recorded). An active
    session, and one with no ending quiet for less than that (its emitter may only be
    slow or cut off for a while), is never chosen and holds no place of ``keep``.

    The end time is the one the session says (its emitter's clock), but never later
    than the stream recorded it: an emitter whose clock was ahead (a year, or 2099)
    would otherwise have its sessions kept past the age limit until then, and ranked
    newest, holding places of ``keep`` from sessions that did end later.

    ``quiet``: the ids of the sessions with no ending found quiet on the stream itself
    (``Sessions.prune``); one not in it is not chosen, however quiet by ``now``."""

    def ended_at(r: SessionRecord) -> int:
        said, recorded = r.ended_ns, r.last_recorded_ns
        return min(said, recorded) if said and recorded else said or recorded

    def is_ended(r: SessionRecord) -> bool:
        if r.status in (COMPLETED, FAILED):
            return True
        if r.status != INTERRUPTED:
            return False
        if r.ended_ns:  # interrupted by its ending (cancelled, Ctrl-C)
            return True
        if quiet is not None and r.session_id not in quiet:
            return False
        quiet_since = r.last_recorded_ns
        return bool(quiet_since) and now - quiet_since > unended_after_s * NS

    ended = sorted(
        (r for r in records if is_ended(r)),
        key=lambda r: (ended_at(r), r.session_id),
        reverse=True,
    )
    chosen = []
    for rank, r in enumerate(ended):
        too_many = keep > 0 and rank >= keep
        too_old = older_than_s > 0 and now - ended_at(r) > older_than_s * NS
        if too_many or too_old:
            chosen.append(r)
    return list(reversed(chosen))


# Session tails read at once when listing.
TAIL_BATCH = 32


class Sessions:
    def __init__(
        self,
        reader: SessionReader,
        settings: SessionsSettings | None = None,
        clock: Callable[[], int] = now_ns,
        stream: LedgerReader | None = None,
    ) -> None:
        self.reader = reader
        self.settings = settings or SessionsSettings()
        self._clock = clock
        # The stream itself, which prune asks whether a session with no ending is
        # quiet: the reader may be the read models (behind when the projector is).
        self.stream = stream if stream is not None else _stream_of(reader)

    async def _record(self, session_id: str, recorded: list[Recorded]) -> SessionRecord:
        if not recorded:
            raise SessionNotFoundError(f"session {session_id!r} not found")
        not_a_session(session_id, recorded)
        state = fold([r.event for r in recorded])
        return record_of(
            state,
            recorded[-1].recorded_ns,
            self._clock(),
            self.settings.interrupted_after_s,
        )

    async def list_sessions(
        self,
        statuses: Iterable[str] = (),
        search: str = "",
        limit: int = 0,
        with_errors: bool = False,
    ) -> list[SessionRecord]:
        """Newest first. ``search`` matches the id or the command (case-insensitive).
        Read from the process summaries and each session's tail (its last seq and when
        it was recorded), not its events: the snapshot is left to ``show``.

        ``with_errors``: the rows' errors as ``show`` says them, where the reader's
        summaries lack them (the query reader's registry keeps the last ending's, a
        failure's only: one read of the endings per ended session listed). Only for a
        list that shows the error (``sessions list``); read for the rows listed only
        (after the status filter and ``limit``). Without it a row has the summaries'
        error."""
        out, _ = await self._listed(await self._roots(), statuses, search, limit, with_errors)
        return out

    async def _listed(
        self,
        sessions: Iterable[ProcessSummary],
        statuses: Iterable[str] = (),
        search: str = "",
        limit: int = 0,
        with_errors: bool = False,
    ) -> tuple[list[SessionRecord], dict[str, Tail]]:
        """``list_sessions`` of these sessions (the reader's ``sessions()``), with the
        tails read for it by id."""
        roots = sorted(
            (p for p in sessions if found(p, search)),
            key=lambda p: (p.started_ns, p.process_id),
            reverse=True,
        )
        # Newest first, a batch of tails at a time, until ``limit`` are listed: the
        # default list (50) read the tail of every session first, one at a time (two
        # round trips each), however many there were.
        step = min(limit, TAIL_BATCH) if limit else TAIL_BATCH
        out: list[SessionRecord] = []
        tails: dict[str, Tail] = {}
        for at in range(0, len(roots), step):
            chunk = roots[at : at + step]
            got = await asyncio.gather(*(self.tail(p.process_id) for p in chunk))
            read = {p.process_id: t for p, t in zip(chunk, got, strict=True)}
            tails.update(read)
            out += self.records(chunk, read, statuses, search)
            if limit and len(out) >= limit:
                out = out[:limit]
                break
        if with_errors:
            out = await self._take_errors(out, roots, tails)
        return out, tails

    async def _take_errors(
        self, records: list[SessionRecord], roots: list[ProcessSummary], tails: Mapping[str, Tail]
    ) -> list[SessionRecord]:
        """``records`` with their endings' error (``SessionReader.take_errors``), for
        these rows only; a row that said its corrupt event keeps saying it."""
        by_id = {p.process_id: p for p in roots}
        listed = [
            by_id[r.session_id]
            for r in records
            if not isinstance(tails.get(r.session_id), CorruptEventError)
        ]
        await self.reader.take_errors(listed)
        taken = {p.process_id: p.error for p in listed}
        return [
            replace(r, error=taken[r.session_id]) if r.session_id in taken else r for r in records
        ]

    async def tail(self, session_id: str) -> Tail:
        """(last seq, when it was recorded), or the CorruptEventError reading it
        raised (the session is listed, and says so)."""
        try:
            return await self.reader.tail(session_id)
        except CorruptEventError as exc:
            return exc

    def records(
        self,
        roots: Iterable[ProcessSummary],
        tails: Mapping[str, Tail],
        statuses: Iterable[str] = (),
        search: str = "",
        limit: int = 0,
    ) -> list[SessionRecord]:
        """The list from the sessions' root processes and their tails (a root with no
        tail, or no event, is not listed), newest first."""
        wanted = set(statuses)
        now = self._clock()
        out = []
        for p in roots:
            tail = tails.get(p.process_id)
            if tail is None or not found(p, search):
                continue
            # The endings' error, by the rule `show` folds them with (ending_error; the
            # query reader's registry keeps the last ending's, a failure's only:
            # list_sessions with_errors reads the endings of the rows listed). A
            # failure that named none has none; a user's "failed" is "failed".
            error = p.error
            if isinstance(tail, CorruptEventError):
                # Listed, and said so: one poisoned session neither hides nor takes
                # the list down (``show`` names the sequence the same way).
                count, last_recorded, error = 0, p.last_recorded_ns, str(tail)
            else:
                count, last_recorded = tail
                if not count:
                    continue
            record = SessionRecord(
                session_id=p.process_id,
                command=p.name,
                metadata={},
                started_ns=p.started_ns,
                ended_ns=p.ended_ns,
                status=status_of(p, last_recorded, now, self.settings.interrupted_after_s),
                event_count=count,
                last_seq=count,
                last_recorded_ns=last_recorded,
                error=error,
            )
            if wanted and record.status not in wanted:
                continue
            out.append(record)
        out.sort(key=lambda r: (r.started_ns, r.session_id), reverse=True)
        return out[:limit] if limit else out

    async def _roots(self) -> list[ProcessSummary]:
        return await self.reader.sessions()

    async def show(self, session_id: str) -> tuple[SessionRecord, SessionState, list[Recorded]]:
        recorded = await self.reader.events(session_id)
        record = await self._record(session_id, recorded)
        return record, fold([r.event for r in recorded]), recorded

    async def _a_session(self, session_id: str) -> None:
        """The kind check of show and export, for a read that does not begin at the
        first event (export --after, follow): the process's first event is read. A
        process not known yet passes (its reads say what they say of it)."""
        first = await self.reader.first(session_id)
        not_a_session(session_id, [first] if first is not None else [])

    async def export(self, session_id: str, after_seq: int = 0) -> list[SessionEvent]:
        if after_seq > 0:
            # export --after of a task's id printed the task's events as a session's
            await self._a_session(session_id)
        recorded = await self.reader.events(session_id, after_seq)
        # Nothing above ``after_seq`` of a session the ledger does not know (or a pruned
        # one) is NOT_FOUND as from the first seq: it printed nothing and exited 0.
        if not recorded and (after_seq == 0 or not (await self.reader.tail(session_id))[0]):
            raise SessionNotFoundError(f"session {session_id!r} not found")
        if after_seq == 0:
            not_a_session(session_id, recorded)
        return [r.event for r in recorded]

    async def replay(self, session_id: str, to_seq: int | None = None) -> SessionState:
        """The session's state rebuilt from storage (up to ``to_seq``)."""
        events = await self.export(session_id)
        return fold([e for e in events if to_seq is None or e.seq <= to_seq])

    async def follow(
        self, session_id: str, after_seq: int = 0, until_end: bool = True
    ) -> AsyncIterator[Recorded]:
        """The session's events above ``after_seq``, then live. Stops after
        ``session_ended`` when ``until_end``; a session that ended at or below
        ``after_seq`` (a follow resumed after its last line) gives nothing and stops,
        where it waited for ever for an end it had already seen."""
        # A task's id was followed as a session: its events printed as session lines,
        # then a live wait for a session_ended no task writes. Its first event is
        # checked before anything is printed, and (one that begins while followed)
        # when it comes.
        await self._a_session(session_id)
        if until_end and after_seq > 0 and await self._ended_by(session_id, after_seq):
            return
        stream = self.reader.follow(session_id, after_seq)
        try:
            async for r in stream:
                not_a_session(session_id, [r])
                yield r
                if until_end and r.event.type == "session_ended":
                    return
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    async def _ended_by(self, session_id: str, after_seq: int) -> bool:
        """Whether the session has a ``session_ended`` at or below ``after_seq``. Not
        only its last event: an import (or a raw writer) may have appended events
        after the end, and a follow resumed past that end waited for ever, printing
        them (from seq 0 it stops at the end and never prints them)."""
        last, _ = await self.reader.tail(session_id)
        if not last:
            return False
        return any(seq <= after_seq for seq in await self.reader.endings(session_id))

    async def tree(self, session_id: str) -> dict[str, list[ProcessSummary]]:
        """The session's subtree as children by parent id (oldest first): the session
        itself holds the top level, children of children are included, a process
        without children has no entry, and nothing of any other session is here."""
        procs = await self.reader.subtree(session_id)
        root = procs.get(session_id)
        if root is not None and root.kind != SESSION_KIND:
            raise another_kind(session_id, root.kind)
        if root is None or root.parent:
            raise SessionNotFoundError(f"session {session_id!r} not found")
        children: dict[str, list[ProcessSummary]] = {}
        for p in procs.values():
            if p.process_id != session_id and p.parent in procs:
                children.setdefault(p.parent, []).append(p)
        return {
            k: sorted(v, key=lambda p: (p.started_ns, p.process_id)) for k, v in children.items()
        }

    async def prune(
        self,
        purger: Purger | None,
        older_than_s: float | None = None,
        keep: int | None = None,
        dry_run: bool = False,
        unended_after_s: float | None = None,
    ) -> PruneReport:
        older = self.settings.prune_older_than_s if older_than_s is None else older_than_s
        keep_n = self.settings.prune_keep if keep is None else keep
        unended = (
            self.settings.prune_unended_after_s if unended_after_s is None else unended_after_s
        )
        resumed = 0
        if not dry_run:
            if purger is None:
                raise PruneDeniedError("no purger: this client may not remove history")
            try:
                await purger.check()
                resumed = await purger.finish_pending()
            except PermissionError as exc:
                raise PruneDeniedError(str(exc)) from exc
        # The server's time before the list's tails are read: an event recorded while
        # they are read is then later than it, never quiet.
        server_now = await self.stream.server_now_ns() if self.stream is not None else 0
        # Every process, read once: the sessions listed are its roots, the trees pruned
        # its nesting. With the stream as the reader each read is the whole lifecycle
        # of every process (seconds at 10,000 sessions), and the list (``sessions()``)
        # then the trees (``processes()``) read it twice.
        # A real run's mark of the stream before that read: the processes started
        # while the list reads its tails (20-27 s at 10,000 sessions) are read from
        # there below, or a child started under a chosen session then was neither
        # tombstoned nor purged, its parent gone: no later prune found it.
        since = (
            await self.stream.mark()
            if not dry_run and self.stream is not None and self.stream.incremental
            else None
        )
        procs = await self.reader.processes()
        records, tails = await self._listed(sessions_in(procs))
        quiet = await self._quiet_on_the_stream(records, unended, server_now)
        if quiet is not None:
            records = [quiet.get(r.session_id, r) for r in records]
        chosen = choose_prunable(records, self._clock(), older, keep_n, unended, quiet)
        report = PruneReport(dry_run=dry_run, kept=len(records) - len(chosen), resumed=resumed)
        if chosen and not dry_run:
            procs = await self._with_started_since(procs, since)
        below: dict[str, list[str]] = {}
        for p in procs.values():
            if p.parent:
                below.setdefault(p.parent, []).append(p.process_id)
        trees = []
        for record in chosen:
            # The whole tree under the session.
            ids, todo = [], [record.session_id]
            while todo:
                pid = todo.pop()
                ids.append(pid)
                todo.extend(below.get(pid, []))
            trees.append(ids)
        if dry_run:
            await self._count(report, chosen, trees, tails)
        for record, ids in zip(chosen, trees, strict=True):
            report.processes += len(ids)
            if not dry_run:
                # The tombstone goes first (the read models forget the tree), then the
                # purge; a run killed in between is finished by the next one
                # (``finish_pending``).
                assert purger is not None
                try:
                    report.events += await purger.prune_tree(
                        record.session_id, ids, f"session {record.status}, sessions prune"
                    )
                except PermissionError as exc:
                    raise PruneDeniedError(str(exc)) from exc
            report.pruned.append(record)
        if report.pruned and not dry_run:
            assert purger is not None
            await purger.complete()
        return report

    async def _with_started_since(
        self, procs: dict[str, ProcessSummary], since: StreamMark | None
    ) -> dict[str, ProcessSummary]:
        """``procs`` and the processes started since it was read, for a real run's
        trees: on the stream those started after ``since`` (one filtered read of the
        start events from there, merged: one already read stays as read); with no
        stream to read from a mark, every process read again. A reader other than the
        stream (the read models, ``READER=query``) may not have applied a start
        recorded before the mark when it was read: it is read again too (cheap there),
        so what the first read missed and the mark does not cover is in the second."""
        if since is None or self.stream is None:
            return await self.reader.processes()
        started = await self.stream.started_since(since.last_seq)
        if getattr(self.reader, "lags_the_stream", False):
            procs = {**procs, **(await self.reader.processes())}
        return {**started, **procs}

    async def _count(
        self,
        report: PruneReport,
        chosen: Sequence[SessionRecord],
        trees: Sequence[Sequence[str]],
        tails: Mapping[str, Tail],
    ) -> None:
        """A dry run's ``events``: what the purge would remove, the events of every
        process of the trees, not only the sessions' (it said 3 where the run removed
        5). A session's count is its listed one (``tails``: read for the list); a
        nested process's is the messages the stream holds on its subjects (``_held``),
        TAIL_BATCH at a time across the trees: each tree's tails were read in turn (two
        round trips and a decode each; 10,000 sessions with one nested process each,
        ~20 s of the run). A session whose tail is a corrupt event is counted the same
        way (it added a silent 0); one that cannot be counted is named in
        ``report.uncounted``."""
        nested = [pid for ids in trees for pid in ids[1:]]
        held: dict[str, int | None] = {}
        for at in range(0, len(nested), TAIL_BATCH):
            chunk = nested[at : at + TAIL_BATCH]
            held.update(zip(chunk, await asyncio.gather(*map(self._held, chunk)), strict=True))
        for record, ids in zip(chosen, trees, strict=True):
            root = record.session_id
            if isinstance(tails.get(root, (record.event_count, 0)), tuple):
                held[root] = record.event_count
            else:
                held[root] = await self._held(root)
            for pid in ids:
                count = held[pid]
                if count is None:
                    report.uncounted.append(pid)
                else:
                    report.events += count

    async def _held(self, pid: str) -> int | None:
        """The events a purge of the process removes: the messages the stream holds on
        its subjects (``LedgerReader.held``: one request, nothing decoded; a corrupt
        one counts too). With no stream to ask, its tail's last seq; None when that is
        a corrupt event."""
        if self.stream is not None:
            count = await self.stream.held(pid)
            if count is not None:
                return count
        tail = await self.tail(pid)
        return tail[0] if isinstance(tail, tuple) else None

    async def _quiet_on_the_stream(
        self, records: Sequence[SessionRecord], unended_after_s: float, server_now: int
    ) -> dict[str, SessionRecord] | None:
        """The sessions with no ending that the stream itself says are quiet for
        longer than ``unended_after_s``, by id, each with its last event's time as the
        stream recorded it; None with no stream to ask (then the reader's word and the
        local clock judge). ``server_now``: the server's time (``server_now_ns``),
        taken before ``records`` were read.

        The reader's last recorded time (the query reader's read model) moves only as
        the projector applies events: one stopped or behind longer than the unended
        age made a live, heartbeating session look quiet, and the prune took it (its
        tombstone then hid it for good). And the local clock may be off the NATS
        server's, which recorded the times. So each one's tail is read again from the
        stream, and its quiet is the server's time now minus that. A dry run asks the
        same (the two agree).

        Only the sessions the reader already says are quiet, by the local clock and by
        the server's, are asked (a reader behind only makes a session look quieter, and
        ``choose_prunable`` takes none the local clock says is not), TAIL_BATCH at a
        time: every unended session's tail at once (10,000 of them) went past what
        NATS answers, and every run failed, pruning nothing. When the reader is the
        stream, the tails the list just read are the stream's word: none is read
        again."""
        if self.stream is None:
            return None
        now = self._clock()
        limit = unended_after_s * NS

        def looks_quiet(r: SessionRecord) -> bool:
            last = r.last_recorded_ns
            return now - last > limit and server_now - last > limit

        unended = [
            r for r in records if r.status == INTERRUPTED and not r.ended_ns and looks_quiet(r)
        ]
        if self.stream is self.reader:
            # A corrupt event's row (no count) is listed, and said so; not judged quiet.
            return {r.session_id: r for r in unended if r.event_count and r.last_recorded_ns}
        stream = self.stream

        async def tail(session_id: str) -> tuple[int, int]:
            try:
                return await stream.tail(session_id)
            except CorruptEventError:  # listed, and said so; not judged quiet
                return 0, 0

        out = {}
        for at in range(0, len(unended), TAIL_BATCH):
            chunk = unended[at : at + TAIL_BATCH]
            tails = await asyncio.gather(*(tail(r.session_id) for r in chunk))
            for r, (seq, last_ns) in zip(chunk, tails, strict=True):
                if seq and last_ns and server_now - last_ns > limit:
                    out[r.session_id] = replace(r, last_recorded_ns=last_ns)
        return out


def sessions_in(procs: Mapping[str, ProcessSummary]) -> list[ProcessSummary]:
    """The sessions among ``procs`` (a reader's ``processes()``): what its
    ``sessions()`` gives, the roots of kind ``session``."""
    return [p for p in procs.values() if p.kind == SESSION_KIND and not p.parent]


def _stream_of(reader: SessionReader) -> LedgerReader | None:
    return reader if isinstance(reader, LedgerReader) else None


# A session's tail as the list reads it: (last seq, when it was recorded), or what
# reading it raised.
Tail = tuple[int, int] | CorruptEventError


def found(p: ProcessSummary, search: str) -> bool:
    """Does the session's id or command hold ``search`` (case-insensitive)?"""
    return not search or search.lower() in f"{p.process_id} {p.name}".lower()


# How many sessions' tails a read asks for at a time (a whole read asks for every one).
TAILS_AT_ONCE = 16


class SessionList:
    """The sessions list kept between reads, for a screen that reads it every few
    seconds (the TUI's). The first read is whole (every process's lifecycle, every
    session's tail); each later one asks the stream where it stands (one STREAM.INFO)
    and reads only the messages appended since, once: their lifecycle events are
    folded into the kept summaries, and a session's new events, when they follow its
    kept tail one by one, are its new tail. A session whose new messages do not (one
    that is not an event, a void, a version out of place, a tail that named a
    corrupt event) has its tail read again, as the whole read does. Nothing appended:
    nothing read but the mark; statuses that turn with time (interrupted) are worked
    out anew each read. Anything but appends (a purge, a pruned session, an age limit,
    another stream of the name) or a failure makes the next read whole; a read
    of the range that comes back short (a replica behind) takes nothing and is asked
    again. A read cancelled half-way is finished by the next one. The list is the one
    ``list_sessions`` reads.

    A reader that cannot say what was appended (``QueryReader``) is read whole each
    time, as ``list_sessions`` does."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self._mark: StreamMark | None = None
        self._found: dict[str, ProcessSummary] = {}
        self._tails: dict[str, Tail] = {}
        self._tail_seq: dict[str, int] = {}  # the stream seq of each kept tail's event
        self._stale: set[str] = set()  # processes whose tails are to be read again
        self._lock = asyncio.Lock()
        self.whole_reads = 0  # how many reads were whole (the first, and after a removal)
        self.tail_reads = 0  # how many sessions' tails were read from their histories

    async def read(self, statuses: Iterable[str] = (), search: str = "") -> list[SessionRecord]:
        reader = self._sessions.reader
        if not isinstance(reader, LedgerReader) or not reader.incremental:
            return await self._sessions.list_sessions(statuses, search)
        async with self._lock:
            try:
                await self._catch_up(reader)
            except LedgerBehindError:
                pass  # the list as it was; the next read asks for the range again
            except Exception:
                self._mark = None  # the next read is whole
                raise
            return self._sessions.records(self.roots(), self._tails, statuses, search)

    async def _catch_up(self, reader: LedgerReader) -> None:
        """Each step leaves what is kept whole: what was read is taken at once (no
        await between), so a read cancelled anywhere (the screen closed) is finished
        by the next one, and nothing is taken twice."""
        mark = await reader.mark()
        if self._mark is None or not mark.appended_to(self._mark):
            found = await reader.lifecycle(to_seq=mark.last_seq)
            self._found, self._tails, self._tail_seq, self._mark = found, {}, {}, mark
            self._stale.clear()
            self.whole_reads += 1
        elif mark.last_seq > self._mark.last_seq:
            got = await reader.appended(self._mark.last_seq, mark.last_seq)
            fold_lifecycle(self._found, got.lifecycle)
            for pid, messages in got.messages.items():
                if not self._follow(pid, messages):
                    self._stale.add(pid)
            self._mark = mark
        wanted = [
            p.process_id
            for p in self.roots()
            if p.process_id in self._stale or p.process_id not in self._tails
        ]
        self.tail_reads += len(wanted)
        for i in range(0, len(wanted), TAILS_AT_ONCE):
            await asyncio.gather(
                *(self._read_tail(reader, pid) for pid in wanted[i : i + TAILS_AT_ONCE])
            )
        self._stale.clear()  # what is left is no session's

    async def _read_tail(self, reader: LedgerReader, pid: str) -> None:
        try:
            count, recorded, seq = await reader.tail_at(pid)
        except CorruptEventError as exc:
            self._tails[pid], self._tail_seq[pid] = exc, 0
        else:
            self._tails[pid], self._tail_seq[pid] = (count, recorded), seq
        self._stale.discard(pid)

    def _follow(self, pid: str, messages: list[tuple[int, int, int] | None]) -> bool:
        """The kept tail moved over a session's new messages: True when each one not
        in it yet is its next event (its seq above the tail's event's, its version the
        next one), as the tail read from its history would say."""
        tail = self._tails.get(pid)
        if not isinstance(tail, tuple):
            return False
        moved = tail_over((*tail, self._tail_seq.get(pid, 0)), messages)
        if moved is None:
            return False
        count, recorded, at = moved
        self._tails[pid], self._tail_seq[pid] = (count, recorded), at
        return True

    def roots(self) -> list[ProcessSummary]:
        return [p for p in self._found.values() if p.kind == SESSION_KIND and not p.parent]


def status_of(summary: ProcessSummary, last_recorded_ns: int, now: int, quiet_s: float) -> str:
    """A session's status from its root process: the registry's ending, else active
    until quiet for ``quiet_s``."""
    ended = summary.status if summary.status != "running" else "active"
    return session_status(ended, last_recorded_ns, now, quiet_s)


__all__ = [
    "PruneDeniedError",
    "PruneReport",
    "Purger",
    "SessionList",
    "SessionNotFoundError",
    "Sessions",
    "choose_prunable",
    "evolve",
    "status_of",
]
