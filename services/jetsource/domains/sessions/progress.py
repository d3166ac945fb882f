"""The progress of a session as its events tell it: a pure fold.

``evolve(state, event) -> state`` is what the live follower applies event by event and
what replay applies to the stored events, so a replay ends in exactly the state the
follower ended with. The TUI draws this state (levels with progress, nodes with their
status, failures, queue statistics, scanner and watcher progress); the session record's
"latest status snapshot" is its summary. Unknown event types change nothing but the
count and the position.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from jetsource.domains.sessions.format import (
    ENDINGS,
    SESSION_ENDED,
    SESSION_STARTED,
    SessionEvent,
    ending_error,
    error_text,
)

WAITING, RUNNING, COMPLETE, FAILED, SKIPPED = "waiting", "running", "complete", "failed", "skipped"


@dataclass(frozen=True)
class Node:
    node_id: str
    level: int | None = None
    status: str = WAITING
    error: str = ""
    provider: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class Level:
    level: int
    total: int = 0
    completed: int = 0
    failed: int = 0
    status: str = WAITING

    @property
    def done(self) -> int:
        return self.completed + self.failed


@dataclass(frozen=True)
class Failure:
    seq: int
    type: str
    node_id: str
    error: str


@dataclass(frozen=True)
class SessionState:
    session: str = ""
    command: str = ""
    started: dict[str, Any] = field(default_factory=dict)
    started_ns: int = 0
    ended_ns: int = 0
    last_ns: int = 0
    # active until session_ended says completed, failed or interrupted
    status: str = "active"
    error: str = ""
    seq: int = 0
    count: int = 0
    levels: tuple[Level, ...] = ()
    nodes: tuple[Node, ...] = ()
    failures: tuple[Failure, ...] = ()
    queue: dict[str, int] = field(default_factory=dict)
    scan: dict[str, Any] = field(default_factory=dict)
    watch: dict[str, Any] = field(default_factory=dict)
    generation: str = ""
    # request id -> node id, so a provider event naming only its request finds its node
    requests: tuple[tuple[str, str], ...] = ()

    def node(self, node_id: str) -> Node | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)

    def level(self, number: int) -> Level | None:
        return next((lv for lv in self.levels if lv.level == number), None)

    def snapshot(self) -> dict[str, Any]:
        """The latest status in a few numbers (the session record's snapshot)."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.status] = counts.get(n.status, 0) + 1
        out: dict[str, Any] = {"nodes": counts}
        if self.levels:
            out["levels"] = {
                "total": len(self.levels),
                "completed": sum(1 for lv in self.levels if lv.status == COMPLETE),
            }
        if self.generation:
            out["generation"] = self.generation
        if self.queue:
            out["queue"] = dict(self.queue)
        if self.scan:
            out["scan"] = dict(self.scan)
        if self.watch:
            out["watch"] = dict(self.watch)
        if self.error:
            out["error"] = self.error
        return out


# Event data is whatever JSON its writer sent (the observer checks no schema, and
# ``validation: warn`` keeps a mismatch): every read below takes a field of the wrong
# shape as absent, so no event can stop a fold (show, follow, replay, the TUI).


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _error(value: Any) -> str:
    """An error as text: a string as is, other JSON as JSON, absent as ''
    (:func:`~jetsource.domains.sessions.format.error_text`, as ``sessions list`` shows
    the ending's)."""
    return error_text(value)


def _set_node(state: SessionState, node_id: str, **changes: Any) -> SessionState:
    nodes = list(state.nodes)
    for i, n in enumerate(nodes):
        if n.node_id == node_id:
            nodes[i] = replace(n, **changes)
            return replace(state, nodes=tuple(nodes))
    return replace(state, nodes=(*nodes, Node(node_id, **changes)))


def _set_level(state: SessionState, number: int, **changes: Any) -> SessionState:
    levels = list(state.levels)
    for i, lv in enumerate(levels):
        if lv.level == number:
            levels[i] = replace(lv, **changes)
            return replace(state, levels=tuple(levels))
    levels.append(Level(number, **changes))
    return replace(state, levels=tuple(sorted(levels, key=lambda lv: lv.level)))


def _recount(state: SessionState, number: int | None) -> SessionState:
    if number is None or state.level(number) is None:
        return state
    members = [n for n in state.nodes if n.level == number]
    return _set_level(
        state,
        number,
        completed=sum(1 for n in members if n.status in (COMPLETE, SKIPPED)),
        failed=sum(1 for n in members if n.status == FAILED),
    )


def _node_of(state: SessionState, data: dict[str, Any]) -> str:
    node_id = data.get("node_id")
    if isinstance(node_id, str) and node_id:
        return node_id
    wanted = data.get("request_id")
    return next((n for r, n in state.requests if r == wanted), "")


def evolve(state: SessionState, event: SessionEvent) -> SessionState:
    d = event.data if isinstance(event.data, dict) else {}
    s = replace(state, session=event.session, seq=event.seq, count=state.count + 1,
                last_ns=event.ts_ns)  # fmt: skip
    t = event.type
    if t == SESSION_STARTED:
        command = d.get("command")
        return replace(s, command=command if isinstance(command, str) else "", started=d,
                       started_ns=event.ts_ns)  # fmt: skip
    if t == SESSION_ENDED:
        status, error = d.get("status"), d.get("error")
        if not (isinstance(status, str) and status in ENDINGS):
            status = "completed"
        # Any JSON but none is the error, as text by the one rendering `list` reads the
        # registry's with: a number or an object was dropped here (show said none)
        # while export wrote it.
        return replace(s, status=status, ended_ns=event.ts_ns,
                       error=ending_error(s.error, error))  # fmt: skip
    if t in ("generation_started", "generation_completed", "generation_failed"):
        s = replace(s, generation=t.removeprefix("generation_"))
        if t == "generation_failed":
            s = replace(
                s, failures=(*s.failures, Failure(event.seq, t, "", _error(d.get("error"))))
            )
        return s
    if t == "plan_constructed":
        for entry in _list(d.get("plan")):
            if isinstance(entry, dict) and (number := _int(entry.get("level"))) is not None:
                ids = [i for i in _list(entry.get("node_ids")) if isinstance(i, str)]
                s = _set_level(s, number, total=len(ids))
                for node_id in ids:
                    if s.node(node_id) is None:
                        s = _set_node(s, node_id, level=number)
        return s
    if t == "level_started":
        number = _int(d.get("level"))
        if number is None:
            return s
        ids = [i for i in _list(d.get("node_ids")) if isinstance(i, str)]
        for node_id in ids:
            if s.node(node_id) is None:
                s = _set_node(s, node_id, level=number)
        total = _int(d.get("nodes")) or len(ids) or (lv.total if (lv := s.level(number)) else 0)
        s = _set_level(s, number, total=total, status=RUNNING)
        return _recount(s, number)
    if t == "level_completed":
        number = _int(d.get("level"))
        if number is None:
            return s
        s = _recount(_set_level(s, number, status=COMPLETE), number)
        lv = s.level(number)
        assert lv is not None
        completed, failed = _int(d.get("completed")), _int(d.get("failed"))
        return _set_level(
            s,
            number,
            completed=lv.completed if completed is None else completed,
            failed=lv.failed if failed is None else failed,
        )
    if t in ("request_enqueued", "request_processing", "provider_request_sent"):
        pair = (d.get("request_id"), d.get("node_id"))
        if all(isinstance(x, str) and x for x in pair) and pair not in s.requests:
            s = replace(s, requests=(*s.requests, (str(pair[0]), str(pair[1]))))
    node_id = _node_of(s, d)
    current = s.node(node_id) if node_id else None
    level = _int(d.get("level"))
    if level is None and current is not None:
        level = current.level
    if t in ("node_generation_started", "provider_request_sent"):
        if not node_id or (current is not None and current.status in (COMPLETE, FAILED)):
            return s
        extra: dict[str, Any] = {"status": RUNNING, "level": level}
        if t == "provider_request_sent":
            extra["provider"] = _text(d.get("provider"))
            extra["attempts"] = (current.attempts if current else 0) + 1
        return _recount(_set_node(s, node_id, **extra), level)
    if t == "provider_request_retrying" and node_id:
        return _set_node(s, node_id, status=RUNNING, level=level)
    if t in ("node_generation_completed", "provider_response_received") and node_id:
        if current is not None and current.status == FAILED:
            return s
        return _recount(_set_node(s, node_id, status=COMPLETE, level=level), level)
    if t in ("node_generation_failed", "provider_request_failed") and node_id:
        error = _error(d.get("error"))
        s = _set_node(s, node_id, status=FAILED, level=level, error=error)
        s = replace(s, failures=(*s.failures, Failure(event.seq, t, node_id, error)))
        return _recount(s, level)
    if t == "node_skipped" and node_id:
        return _recount(_set_node(s, node_id, status=SKIPPED, level=level), level)
    if t == "queue_stats":
        return replace(s, queue={k: v for k, v in d.items() if (_int(v) is not None)})
    if t in ("request_enqueued", "request_deduplicated"):
        key = "enqueued" if t == "request_enqueued" else "deduplicated_seen"
        queue = dict(s.queue)
        queue[key] = queue.get(key, 0) + 1
        return replace(s, queue=queue)
    if t in ("scan_started", "scan_progress", "scan_completed"):
        scan = {**s.scan, **{k: v for k, v in d.items() if k != "status"}}
        scan["status"] = t.removeprefix("scan_")
        return replace(s, scan=scan)
    if t in ("watch_started", "file_changed", "batch_processed"):
        watch = dict(s.watch)
        if t == "watch_started":
            watch["paths"] = _list(d.get("paths"))
        elif t == "file_changed":
            watch["changes"] = watch.get("changes", 0) + 1
            watch["last_path"] = _text(d.get("path"))
        else:
            watch["batches"] = watch.get("batches", 0) + 1
        return replace(s, watch=watch)
    return s


def fold(events: list[SessionEvent], state: SessionState | None = None) -> SessionState:
    s = state or SessionState()
    for e in events:
        s = evolve(s, e)
    return s
