"""The session event catalog: every event type a session's components emit, with a
JSON Schema for each, versioned and shipped with the package as JSON files beside
this module (``index.json`` names the version and the groups; one file per group).

Validation against the catalog is a setting (``off``, ``warn``, ``strict``): off checks
nothing, warn logs what does not match and lets it through, strict refuses it.
Unknown event types are never refused (consumers ignore what they do not know);
in strict mode only a *known* type whose data breaks its schema is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

log = logging.getLogger(__name__)


class Validation(StrEnum):
    OFF = "off"
    WARN = "warn"
    STRICT = "strict"


class CatalogViolation(ValueError):
    """A known event type whose data breaks its schema (strict mode)."""

    def __init__(self, event_type: str, problems: list[str]) -> None:
        self.event_type = event_type
        self.problems = problems
        super().__init__(f"{event_type}: " + "; ".join(problems))


@dataclass(frozen=True)
class EventSpec:
    type: str
    group: str
    description: str
    schema: dict[str, Any]


class Catalog:
    def __init__(self, index: dict[str, Any], groups: list[dict[str, Any]]) -> None:
        self.name: str = index["name"]
        self.version: str = index["version"]
        self.envelope: dict[str, Any] = index["envelope"]
        self.groups: dict[str, str] = {g["group"]: g["description"] for g in groups}
        self.events: dict[str, EventSpec] = {}
        for g in groups:
            for event_type, schema in g["events"].items():
                if event_type in self.events:
                    raise ValueError(f"event type {event_type!r} is in two catalog groups")
                Draft202012Validator.check_schema(schema)
                self.events[event_type] = EventSpec(
                    event_type, g["group"], schema.get("description", ""), schema
                )
        self._validators = {t: Draft202012Validator(s.schema) for t, s in self.events.items()}
        Draft202012Validator.check_schema(self.envelope)
        self._envelope = Draft202012Validator(self.envelope)

    def __contains__(self, event_type: object) -> bool:
        return event_type in self.events

    def problems(self, event_type: str, data: Any) -> list[str]:
        """What is wrong with ``data`` for a known type; [] when it fits or the type is
        unknown (unknown types are for consumers to ignore, not for us to refuse)."""
        validator = self._validators.get(event_type)
        if validator is None:
            return []
        return [_describe(e) for e in validator.iter_errors(data)]

    def envelope_problems(self, document: Any) -> list[str]:
        return [_describe(e) for e in self._envelope.iter_errors(document)]

    def check(self, event_type: str, data: Any, mode: Validation | str) -> list[str]:
        """Apply the validation setting: returns the problems (logged in warn mode);
        raises :class:`CatalogViolation` in strict mode when there are any."""
        mode = Validation(mode)
        if mode is Validation.OFF:
            return []
        found = self.problems(event_type, data)
        if found and mode is Validation.STRICT:
            raise CatalogViolation(event_type, found)
        if found:
            log.warning("session event %s does not match the catalog: %s", event_type, found)
        return found

    def as_document(self) -> dict[str, Any]:
        """The catalog as one JSON document (what ``jetsource sessions catalog`` prints)."""
        return {
            "name": self.name,
            "version": self.version,
            "envelope": self.envelope,
            "groups": {
                name: {
                    "description": description,
                    "events": {t: s.schema for t, s in self.events.items() if s.group == name},
                }
                for name, description in self.groups.items()
            },
        }


def _describe(error: Any) -> str:
    where = "/".join(str(p) for p in error.absolute_path)
    return f"data/{where}: {error.message}" if where else f"data: {error.message}"


def _read(name: str) -> dict[str, Any]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def load_catalog() -> Catalog:
    """The catalog shipped with the package (read once)."""
    index = _read("index.json")
    return Catalog(index, [_read(f"{g}.json") for g in index["groups"]])
