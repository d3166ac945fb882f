"""ContextState <-> plain dicts (JSON documents in read models and API answers).

``state_from_dict(state_to_dict(s)) == s`` for every state; the dict form is sorted
so equal states serialize to equal bytes (read-model digests compare them).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, cast

from jetsource.domains.context.model import (
    STATUS_NAMES,
    TODO,
    ContextState,
    Decision,
    Status,
    Subtask,
)

STATE_SCHEMA_VERSION = 1
_STATUS_BY_NAME = {name: status for status, name in STATUS_NAMES.items()}


def status_name(status: Status) -> str:
    """A subtask status in the dict form: its name; a number this code has no name
    for (an event of a newer version) as its digits, so that it round-trips through
    snapshots and read models (it was written "unspecified" and read back as todo:
    the state at a version then depended on whether a snapshot was used)."""
    return STATUS_NAMES.get(status) or str(int(status))


def status_from_name(name: str, unknown: Status = TODO) -> Status:
    """:func:`status_name` read back; ``unknown`` for a name that is neither (the
    "unspecified" written before)."""
    known = _STATUS_BY_NAME.get(name)
    if known is not None:
        return known
    try:
        return cast(Status, int(name))
    except (TypeError, ValueError):
        return unknown


def decision_to_dict(d: Decision) -> dict[str, Any]:
    return {
        "id": d.id,
        "title": d.title,
        "body": d.body,
        "rationale": d.rationale,
        "author": d.author,
        "affects": list(d.affects),
        "superseded_by": d.superseded_by,
        "revisions": d.revisions,
    }


def subtask_to_dict(t: Subtask) -> dict[str, Any]:
    return {
        "id": t.id,
        "title": t.title,
        "description": t.description,
        "assignee": t.assignee,
        "status": status_name(t.status),
        "progress": t.progress,
        "status_note": t.status_note,
    }


def _scalars_to_dict(state: ContextState) -> dict[str, Any]:
    return {
        "id": state.id,
        "version": state.version,
        "exists": state.exists,
        "title": state.title,
        "description": state.description,
        "created_by": state.created_by,
        "tags": list(state.tags),
        "closed": state.closed,
        "close_reason": state.close_reason,
    }


def state_to_dict(state: ContextState) -> dict[str, Any]:
    doc = _scalars_to_dict(state)
    doc["decisions"] = {k: decision_to_dict(state.decisions[k]) for k in sorted(state.decisions)}
    doc["subtasks"] = {k: subtask_to_dict(state.subtasks[k]) for k in sorted(state.subtasks)}
    doc["dependencies"] = sorted([a, b] for a, b in state.dependencies)
    return doc


def shell_to_dict(state: ContextState) -> dict[str, Any]:
    """``state_to_dict`` of the state with no decisions, subtasks or dependencies
    (without copying the state to empty them)."""
    doc = _scalars_to_dict(state)
    doc["decisions"], doc["subtasks"], doc["dependencies"] = {}, {}, []
    return doc


def state_from_dict(doc: dict[str, Any]) -> ContextState:
    decisions = {
        k: Decision(
            id=d["id"],
            title=d["title"],
            body=d["body"],
            rationale=d["rationale"],
            author=d["author"],
            affects=tuple(d["affects"]),
            superseded_by=d["superseded_by"],
            revisions=d["revisions"],
        )
        for k, d in doc["decisions"].items()
    }
    subtasks = {
        k: Subtask(
            id=t["id"],
            title=t["title"],
            description=t["description"],
            assignee=t["assignee"],
            status=status_from_name(t["status"]),
            progress=t["progress"],
            status_note=t["status_note"],
        )
        for k, t in doc["subtasks"].items()
    }
    return ContextState(
        id=doc["id"],
        version=doc["version"],
        exists=doc["exists"],
        title=doc["title"],
        description=doc["description"],
        created_by=doc["created_by"],
        tags=tuple(doc["tags"]),
        closed=doc["closed"],
        close_reason=doc["close_reason"],
        decisions=MappingProxyType(decisions),
        subtasks=MappingProxyType(subtasks),
        dependencies=frozenset((a, b) for a, b in doc["dependencies"]),
    )


_COMPACT = {"separators": (",", ":"), "sort_keys": True}
_DECISIONS, _SUBTASKS = "\x00decisions\x00", "\x00subtasks\x00"


class StateEncoder:
    """``json.dumps(state_to_dict(state), separators=(",", ":"), sort_keys=True)``, the
    same bytes, without encoding again what did not change: states share the Decision
    and Subtask objects an event did not touch, so each one's encoded JSON (with its
    key) is kept by identity (bounded), and so is the whole object of a mapping an
    event did not touch. A read model writing a story's document after every batch
    spent most of its time re-encoding all of it; then, for a story of a thousand
    decisions, quoting each key again (issue 23: the projector's freshness under load).
    The context model now stores each member (``entry``) as a field of its story's
    hash and writes only the members that changed; ``encode`` gives the whole state."""

    # Whole objects kept: a few per story written in a batch (two mappings each).
    OBJECTS = 64

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        # id(item) -> (item, key, '"key":{...}')
        self._parts: OrderedDict[int, tuple[object, str, str]] = OrderedDict()
        self._objects: OrderedDict[int, tuple[object, str]] = OrderedDict()

    def entry(self, key: str, item: Decision | Subtask) -> str:
        """``"key":{...}``: one member of the state's decisions or subtasks object,
        as ``encode`` writes it (kept by the item's identity)."""
        known = self._parts.get(id(item))
        if known is not None and known[0] is item and known[1] == key:
            return known[2]
        body = decision_to_dict(item) if isinstance(item, Decision) else subtask_to_dict(item)
        text = f"{json.dumps(key)}:{json.dumps(body, **_COMPACT)}"  # type: ignore[arg-type]
        self._parts[id(item)] = (item, key, text)
        while len(self._parts) > self.size:
            self._parts.popitem(last=False)
        return text

    def _object(self, items: Mapping[str, Decision] | Mapping[str, Subtask]) -> str:
        whole = self._objects.get(id(items))
        if whole is not None and whole[0] is items:
            self._objects.move_to_end(id(items))
            return whole[1]
        parts, entries = self._parts, []
        for k in sorted(items):  # the known entry inline: most are, and this is hot
            item = items[k]
            known = parts.get(id(item))
            if known is not None and known[0] is item and known[1] == k:
                entries.append(known[2])
            else:
                entries.append(self.entry(k, item))
        text = "{" + ",".join(entries) + "}"
        self._objects[id(items)] = (items, text)
        while len(self._objects) > self.OBJECTS:
            self._objects.popitem(last=False)
        return text

    def encode(self, state: ContextState) -> str:
        shell = state_to_dict(
            replace(state, decisions=MappingProxyType({}), subtasks=MappingProxyType({}))
        )
        shell["decisions"], shell["subtasks"] = _DECISIONS, _SUBTASKS
        text = json.dumps(shell, **_COMPACT)  # type: ignore[arg-type]
        # The keys are fixed and appear once, structurally (a quote inside a string
        # value is escaped), so the placeholders cannot be confused with user text.
        text = text.replace(
            f'"decisions":{json.dumps(_DECISIONS)}',
            '"decisions":' + self._object(state.decisions),
            1,
        )
        return text.replace(
            f'"subtasks":{json.dumps(_SUBTASKS)}', '"subtasks":' + self._object(state.subtasks), 1
        )
