"""Event codec: (event type, schema version) -> message class, with upcasters.

Every read path decodes through :meth:`EventRegistry.decode`, so it only ever sees
current versions. Unknown types (or versions newer than this code knows) decode to
:class:`UnknownEvent`, which handlers skip; they are never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from jetsource.core.errors import UnknownEventTypeError
from jetsource.core.ids import valid_event_type

Upcaster = Callable[[Message], Message]


@dataclass(frozen=True)
class UnknownEvent:
    """An event this code cannot interpret; carried along untouched and skipped."""

    event_type: str
    schema_version: int
    payload: bytes
    reason: str = "unknown event type"


class PayloadDecodeError(ValueError):
    """A registered event type whose payload bytes do not parse: poison."""


class EventRegistry:
    def __init__(self) -> None:
        self._classes: dict[tuple[str, int], type[Message]] = {}
        self._current: dict[str, int] = {}
        self._by_class: dict[type[Message], tuple[str, int]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(
        self, event_type: str, version: int, cls: type[Message], *, current: bool = True
    ) -> None:
        if not valid_event_type(event_type):
            raise ValueError(f"event type {event_type!r} must be CamelCase letters and digits")
        if version < 1:
            raise ValueError("schema versions start at 1")
        key = (event_type, version)
        if key in self._classes:
            raise ValueError(f"{event_type} v{version} registered twice")
        self._classes[key] = cls
        if current:
            if event_type in self._current:
                raise ValueError(f"{event_type} already has a current version")
            self._current[event_type] = version
            self._by_class[cls] = key

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn`` lifting ``event_type`` from ``from_version`` to the next."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return decorate

    def validate(self) -> None:
        """Every historical version must have a path to the current one."""
        for (event_type, version), _ in self._classes.items():
            current = self._current.get(event_type)
            if current is None:
                raise ValueError(f"{event_type} has no current version")
            for v in range(version, current):
                if (event_type, v) not in self._upcasters:
                    raise ValueError(f"{event_type}: no upcaster from v{v} to v{v + 1}")

    def event_types(self) -> list[str]:
        return sorted(self._current)

    def current_version(self, event_type: str) -> int:
        try:
            return self._current[event_type]
        except KeyError:
            raise UnknownEventTypeError(f"event type {event_type!r} is not registered") from None

    def type_of(self, message: Message) -> tuple[str, int]:
        try:
            return self._by_class[type(message)]
        except KeyError:
            raise UnknownEventTypeError(
                f"{type(message).__name__} is not a registered current event message"
            ) from None

    def encode(self, message: Message) -> tuple[str, int, bytes]:
        event_type, version = self.type_of(message)
        return event_type, version, message.SerializeToString(deterministic=True)

    def decode(self, event_type: str, version: int, payload: bytes) -> Message | UnknownEvent:
        cls = self._classes.get((event_type, version))
        if cls is None:
            reason = (
                "unknown event type"
                if event_type not in self._current
                else f"unknown schema version {version}"
            )
            return UnknownEvent(event_type, version, payload, reason)
        message = cls()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise PayloadDecodeError(
                f"{event_type} v{version}: payload does not parse: {exc}"
            ) from exc
        current = self._current[event_type]
        while version < current:
            message = self._upcasters[(event_type, version)](message)
            version += 1
        return message
