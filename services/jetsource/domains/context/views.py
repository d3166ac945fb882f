"""Domain and read-model values -> the query API's protobuf messages."""

from __future__ import annotations

import bisect
import itertools
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf.message import Message

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core.clock import to_timestamp
from jetsource.core.codec import UnknownEvent
from jetsource.core.envelope import RecordedEvent
from jetsource.domains.context.model import ContextState, Decision, Subtask
from jetsource.domains.context.serialize import status_from_name

STATUS = {"open": pb.CONTEXT_STATUS_OPEN, "closed": pb.CONTEXT_STATUS_CLOSED}
STATUS_NAME = {v: k for k, v in STATUS.items()}
_UNSPECIFIED = ev.SUBTASK_STATUS_UNSPECIFIED
# event message type -> ContextEvent oneof field
_EVENT_FIELD = {
    field.message_type.name: field.name
    for field in pb.ContextEvent.DESCRIPTOR.oneofs_by_name["event"].fields
    if field.message_type is not None
}


def context_view(state: dict[str, Any]) -> pb.ContextView:
    """From the state's dict form (``state_to_dict``, also the Valkey document's)."""
    view = pb.ContextView(
        context_id=state["id"],
        version=state["version"],
        title=state["title"],
        description=state["description"],
        created_by=state["created_by"],
        tags=state["tags"],
        status=pb.CONTEXT_STATUS_CLOSED if state["closed"] else pb.CONTEXT_STATUS_OPEN,
        close_reason=state["close_reason"],
    )
    view.decisions.extend(
        pb.DecisionView(**d, active=not d["superseded_by"]) for d in state["decisions"].values()
    )
    view.subtasks.extend(
        # (a status of a newer version as its number, as time travel answers it)
        pb.SubtaskView(**{**t, "status": status_from_name(t["status"], unknown=_UNSPECIFIED)})
        for t in state["subtasks"].values()
    )
    view.dependencies.extend(pb.Dependency(from_id=a, to_id=b) for a, b in state["dependencies"])
    return view


def event_view(record: RecordedEvent) -> pb.EventView:
    e = record.envelope
    view = pb.EventView(
        event_id=e.event_id,
        event_type=e.event_type,
        schema_version=e.schema_version,
        version=record.version,
        stream_sequence=record.stream_seq,
        correlation_id=e.correlation_id,
        causation_id=e.causation_id,
        idempotency_key=e.idempotency_key,
        source=e.source,
        metadata=dict(e.metadata),
    )
    view.recorded_at.CopyFrom(to_timestamp(record.recorded_at_ns))
    if e.HasField("occurred_at"):
        view.occurred_at.CopyFrom(e.occurred_at)
    if not isinstance(record.event, UnknownEvent):
        name = _EVENT_FIELD.get(type(record.event).__name__)
        if name:
            getattr(view.event, name).CopyFrom(record.event)
    return view


def _decision_fields(d: Decision) -> dict[str, Any]:
    """A decision's DecisionView fields (one list for the message and the encoded view)."""
    return {
        "id": d.id,
        "title": d.title,
        "body": d.body,
        "rationale": d.rationale,
        "author": d.author,
        "affects": d.affects,
        "superseded_by": d.superseded_by,
        "revisions": d.revisions,
        "active": not d.superseded_by,
    }


def _subtask_fields(t: Subtask) -> dict[str, Any]:
    return {
        "id": t.id,
        "title": t.title,
        "description": t.description,
        "assignee": t.assignee,
        "status": t.status,
        "progress": t.progress,
        "status_note": t.status_note,
    }


def state_view(state: ContextState) -> pb.ContextView:
    """Straight from a folded state (the same message as ``context_view`` of its
    dict form, without building the dict first)."""
    view = pb.ContextView(
        context_id=state.id,
        version=state.version,
        title=state.title,
        description=state.description,
        created_by=state.created_by,
        tags=state.tags,
        status=pb.CONTEXT_STATUS_CLOSED if state.closed else pb.CONTEXT_STATUS_OPEN,
        close_reason=state.close_reason,
    )
    decisions, subtasks = view.decisions, view.subtasks
    for key in sorted(state.decisions):
        d = state.decisions[key]
        decisions.add(**_decision_fields(d))
    for key in sorted(state.subtasks):
        t = state.subtasks[key]
        subtasks.add(**_subtask_fields(t))
    view.dependencies.extend(
        pb.Dependency(from_id=a, to_id=b) for a, b in sorted(state.dependencies)
    )
    return view


def view_size(state: ContextState) -> int:
    """The encoded size of the state's ``ContextView`` (what GetContext answers, less
    the few bytes around it). Serialized rather than ``ByteSize()``, which is slower."""
    return len(state_view(state).SerializeToString())


# An event grows the encoded view of the state it is folded into by at most its own
# encoded size plus this: the view repeats the event's strings with the same tags and
# lengths, and adds at most a decision's ``active`` flag, a subtask's status, the
# entry's tag and length, a revision count, and a byte more of the version (checked by
# tests/unit/test_context_size_cap.py over random histories).
EVENT_SLACK = 16


def view_growth(events: Iterable[Message | UnknownEvent]) -> int:
    """An upper bound of how much folding ``events`` grows a state's encoded view."""
    return sum(EVENT_SLACK + (0 if isinstance(e, UnknownEvent) else e.ByteSize()) for e in events)


# -- the same view, serialized, from a snapshot's state plus what changed since ------
#
# A time-travel answer is a snapshot's state with a few events folded on top. Folding
# replaces only the decisions and subtasks an event touches; every other one is the
# very object the snapshot's state holds. So the serialized view of a snapshot's state
# is kept in pieces (one per decision, subtask and dependency, in view order), and the
# view of a state folded from it re-encodes only the pieces whose objects differ:
# work in the number of changes, not in the size of the state. The bytes are the ones
# ``state_view(state).SerializeToString()`` gives (tests compare them).


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int) -> bytes:
    return _varint(number << 3 | 2)  # length-delimited


_DECISION_FIELD = _field(pb.ContextView.DECISIONS_FIELD_NUMBER)
_SUBTASK_FIELD = _field(pb.ContextView.SUBTASKS_FIELD_NUMBER)
_DEPENDENCY_FIELD = _field(pb.ContextView.DEPENDENCIES_FIELD_NUMBER)


def entry_head(number: int, length: int) -> bytes:
    """The tag and length of a length-delimited field ``number`` of ``length`` bytes:
    with the field's bytes after it, one entry of a message being encoded by hand."""
    return _field(number) + _varint(length)


def _entry(field: bytes, message: Message) -> bytes:
    body = message.SerializeToString()
    return field + _varint(len(body)) + body


def _decision_entry(d: Decision) -> bytes:
    return _entry(
        _DECISION_FIELD,
        pb.DecisionView(**_decision_fields(d)),
    )


def _subtask_entry(t: Subtask) -> bytes:
    return _entry(
        _SUBTASK_FIELD,
        pb.SubtaskView(**_subtask_fields(t)),
    )


def _dependency_entry(dep: tuple[str, str]) -> bytes:
    return _entry(_DEPENDENCY_FIELD, pb.Dependency(from_id=dep[0], to_id=dep[1]))


def _head(state: ContextState) -> bytes:
    """Everything but the repeated messages (the fields numbered before them)."""
    return pb.ContextView(
        context_id=state.id,
        version=state.version,
        title=state.title,
        description=state.description,
        created_by=state.created_by,
        tags=state.tags,
        status=pb.CONTEXT_STATUS_CLOSED if state.closed else pb.CONTEXT_STATUS_OPEN,
        close_reason=state.close_reason,
    ).SerializeToString()


Pieces = list[bytes | memoryview]


class _Entries:
    """Repeated-field entries of a base state, encoded in view (key) order, with
    where each starts in their concatenation. An edited copy is spliced from slices
    of it, so its cost is in the number of edits, not entries."""

    def __init__(self, keys: list[Any], chunks: list[bytes]) -> None:
        self.keys = keys
        self.at = {key: i for i, key in enumerate(keys)}
        self.joined = b"".join(chunks)
        self.starts = list(itertools.accumulate(map(len, chunks), initial=0))
        self._view = memoryview(self.joined)

    def splice(
        self, replaced: dict[int, bytes], inserted: list[tuple[Any, bytes]], out: Pieces
    ) -> None:
        """Append the entries, with those at ``replaced`` positions replaced and the
        ``inserted`` (key, entry) pairs put in key order, to ``out``."""
        if not replaced and not inserted:
            out.append(self.joined)
            return
        edits: dict[int, list[bytes]] = {i: [] for i in replaced}
        for key, chunk in sorted(inserted, key=operator.itemgetter(0)):
            edits.setdefault(bisect.bisect(self.keys, key), []).append(chunk)
        done = 0  # entries before this one are out
        for i in sorted(edits):
            if i > done:
                out.append(self._view[self.starts[done] : self.starts[i]])
            out.extend(edits[i])  # new keys sort before the entry at i
            if i in replaced:
                out.append(replaced[i])
                done = i + 1
            else:
                done = i
        if done < len(self.keys):
            out.append(self._view[self.starts[done] :])


class _MapEntries:
    """One map of a base state (decisions or subtasks) and its entries."""

    def __init__(self, items: Mapping[str, Any], encode: Callable[[Any], bytes]) -> None:
        self.items = items
        self.encode = encode
        self.order = list(items)  # the map's own order, to line up a fold's copy of it
        self.values = list(items.values())
        keys = sorted(items)
        self.entries = _Entries(keys, [encode(items[key]) for key in keys])

    def _changed(self, items: Mapping[str, Any]) -> tuple[list[str], list[str]] | None:
        """(keys whose value is another object, keys the base does not have), or
        None when a base key is missing."""
        n = len(self.order)
        keys = list(items)
        if keys[:n] == self.order:  # a fold's copy: same order, new keys at the end
            flags = map(operator.is_not, itertools.islice(items.values(), n), self.values)
            return list(itertools.compress(self.order, flags)), keys[n:]
        if any(key not in items for key in self.order):
            return None
        base = self.items
        changed = [k for k, v in items.items() if k in base and base[k] is not v]
        return changed, [k for k in keys if k not in base]

    def encode_like(self, items: Mapping[str, Any], out: Pieces) -> None:
        if items is self.items:
            out.append(self.entries.joined)
            return
        found = self._changed(items)
        if found is None:  # not derived from the base: encode it all
            out.extend(self.encode(items[key]) for key in sorted(items))
            return
        changed, added = found
        at, encode = self.entries.at, self.encode
        self.entries.splice(
            {at[key]: encode(items[key]) for key in changed},
            [(key, encode(items[key])) for key in added],
            out,
        )


class _Base:
    def __init__(self, state: ContextState) -> None:
        self.state = state
        self.decisions = _MapEntries(state.decisions, _decision_entry)
        self.subtasks = _MapEntries(state.subtasks, _subtask_entry)
        deps = sorted(state.dependencies)
        self.dependencies = _Entries(deps, [_dependency_entry(d) for d in deps])

    def encode_dependencies(self, deps: frozenset[tuple[str, str]], out: Pieces) -> None:
        base = self.state.dependencies
        if deps is base:
            out.append(self.dependencies.joined)
            return
        added = deps - base
        if len(added) != len(deps) - len(base):  # some of the base's are gone
            out.extend(_dependency_entry(d) for d in sorted(deps))
            return
        self.dependencies.splice({}, [(d, _dependency_entry(d)) for d in added], out)


class ViewEncoder:
    """Serialized ``ContextView`` of states folded from a few base states (decoded
    snapshots, shared by the loads that start from them): the pieces of the most
    recently used ``size`` bases are kept."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._bases: OrderedDict[int, _Base] = OrderedDict()

    def _base(self, state: ContextState) -> _Base:
        base = self._bases.get(id(state))
        if base is None or base.state is not state:
            base = _Base(state)
            self._bases[id(state)] = base
            while len(self._bases) > self.size:
                self._bases.popitem(last=False)
        else:
            self._bases.move_to_end(id(state))
        return base

    def encode(self, state: ContextState, base: ContextState | None = None) -> bytes:
        """``state_view(state).SerializeToString()``; fast when ``state`` was folded
        from ``base`` (any state works: what is not the base's is encoded anew)."""
        if base is None or not self.size:
            return state_view(state).SerializeToString()
        b = self._base(base)
        out: Pieces = [_head(state)]
        b.decisions.encode_like(state.decisions, out)
        b.subtasks.encode_like(state.subtasks, out)
        b.encode_dependencies(state.dependencies, out)
        return b"".join(out)


def with_context(answer: Message, view: bytes) -> bytes:
    """``answer`` (a time-travel response without its ``context``) encoded with the
    encoded ``view`` as its context: the bytes the whole message would encode to.
    One join: ``a + b + view + c`` made two copies of the view, each a large buffer
    taken from and given back to the allocator (page faults included)."""
    number = answer.DESCRIPTOR.fields_by_name["context"].number
    return b"".join((_field(number), _varint(len(view)), view, answer.SerializeToString()))
