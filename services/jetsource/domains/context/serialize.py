"""ContextState <-> plain dicts (JSON documents in read models and API answers).

``state_from_dict(state_to_dict(s)) == s`` for every state; the dict form is sorted
so equal states serialize to equal bytes (read-model digests compare them).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from jetsource.domains.context.model import STATUS_NAMES, TODO, ContextState, Decision, Subtask

STATE_SCHEMA_VERSION = 1
_STATUS_BY_NAME = {name: status for status, name in STATUS_NAMES.items()}


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
        "status": STATUS_NAMES.get(t.status, "unspecified"),
        "progress": t.progress,
        "status_note": t.status_note,
    }


def state_to_dict(state: ContextState) -> dict[str, Any]:
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
        "decisions": {k: decision_to_dict(state.decisions[k]) for k in sorted(state.decisions)},
        "subtasks": {k: subtask_to_dict(state.subtasks[k]) for k in sorted(state.subtasks)},
        "dependencies": sorted([a, b] for a, b in state.dependencies),
    }


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
            status=_STATUS_BY_NAME.get(t["status"], TODO),
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
