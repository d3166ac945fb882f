"""Event codec: (event type, schema version) -> message class, with upcasters.

Every read path decodes through :meth:`EventRegistry.decode`, so it only ever sees
current versions. Unknown types (or versions newer than this code knows) decode to
:class:`UnknownEvent`; one a newer release can have written (a type name of the
domain it does not know, a version past the newest it knows) says so in
``newer_release``, and every projector dead-letters it naming that (a model that
skipped it had lost it for good after the upgrade). Other unknown events (an
operator's void, a discarded dead letter's stand-in) are no-ops at their place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from jetsource.core.crypto import personal_fields
from jetsource.core.errors import InvalidEventTypeError, UnknownEventTypeError
from jetsource.core.ids import valid_event_type
from jetsource.core.wellknown import unshowable

Upcaster = Callable[[Message], Message]


@dataclass(frozen=True)
class UnknownEvent:
    """An event this code cannot interpret; carried along untouched.

    ``newer_release`` is set when a newer release can have written it (its type or
    schema version is one this release does not know): what to say of it ("DecisionAdded
    v3 was written by a newer release: this release knows DecisionAdded up to v2").
    Empty for the engine's stand-ins (a voided message, a discarded dead letter), which
    are no-ops at their place."""

    event_type: str
    schema_version: int
    payload: bytes
    reason: str = "unknown event type"
    newer_release: str = ""


class PayloadDecodeError(ValueError):
    """A registered event type whose payload bytes do not parse: poison."""


class EventRegistry:
    """Event messages by (type, schema version).

    A domain whose callers name their own event types (the process ledger) gives a
    ``fallback`` message: every event type its ``event_types`` pattern accepts is then
    stored as that message (``encode(message, event_type, version)``) and decoded as it,
    whatever the type. ``event_types`` is the domain's rule for type names (default:
    CamelCase letters and digits, at most 64); it is what makes a type a safe subject
    token."""

    def __init__(
        self,
        *,
        fallback: type[Message] | None = None,
        event_types: re.Pattern[str] | None = None,
        event_types_rule: str = "",
    ) -> None:
        self._classes: dict[tuple[str, int], type[Message]] = {}
        self._current: dict[str, int] = {}
        self._by_class: dict[type[Message], tuple[str, int]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._fallback = fallback
        self._pattern = event_types
        self._rule = event_types_rule or (
            f"must match {event_types.pattern}"
            if event_types
            else "must be CamelCase letters and digits (at most 64)"
        )

    @property
    def fallback(self) -> type[Message] | None:
        return self._fallback

    def valid_type(self, event_type: str) -> bool:
        """Is ``event_type`` a type name of this domain (a safe subject token)?"""
        if self._pattern is None:
            return valid_event_type(event_type)
        return bool(self._pattern.fullmatch(event_type))

    def check_type(self, event_type: str) -> str:
        if not self.valid_type(event_type):
            raise InvalidEventTypeError(
                f"event type {event_type[:80]!r} {self._rule}", field="event_type"
            )
        return event_type

    def register(
        self, event_type: str, version: int, cls: type[Message], *, current: bool = True
    ) -> None:
        if not self.valid_type(event_type):
            raise ValueError(f"event type {event_type!r} {self._rule}")
        if version < 1:
            raise ValueError("schema versions start at 1")
        key = (event_type, version)
        if key in self._classes:
            raise ValueError(f"{event_type} v{version} registered twice")
        personal_fields(cls.DESCRIPTOR)  # a field marked personal must be a string
        if current:
            if event_type in self._current:
                raise ValueError(f"{event_type} already has a current version")
            # An event is named by its message's class when appended: a class current for
            # two types stored every event of the first under the second's name.
            if (taken := self._by_class.get(cls)) is not None:
                raise ValueError(
                    f"{event_type} v{version}: message {cls.DESCRIPTOR.full_name} is already "
                    f"the current schema of {taken[0]}; each current event type needs a "
                    "message of its own"
                )
        self._classes[key] = cls
        if current:
            self._current[event_type] = version
            self._by_class[cls] = key

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn`` lifting ``event_type`` from ``from_version`` to the next."""

        def decorate(fn: Upcaster) -> Upcaster:
            if (event_type, from_version) in self._upcasters:  # the first was replaced silently
                raise ValueError(f"{event_type}: a second upcaster from v{from_version}")
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

    def encode(
        self, message: Message, event_type: str = "", schema_version: int = 0
    ) -> tuple[str, int, bytes]:
        """(type, version, bytes) of a message to store. ``event_type`` (and
        ``schema_version``, default 1) name the type of a fallback message; a registered
        message names its own."""
        if event_type and event_type not in self._current and self._fallback is not None:
            if type(message) is not self._fallback:
                raise UnknownEventTypeError(
                    f"event type {event_type!r} is stored as {self._fallback.__name__}, "
                    f"not {type(message).__name__}"
                )
            self.check_type(event_type)
            version = schema_version or 1
            return event_type, version, message.SerializeToString(deterministic=True)
        registered, version = self.type_of(message)
        if event_type and event_type != registered:
            raise UnknownEventTypeError(
                f"{type(message).__name__} is event type {registered!r}, not {event_type!r}"
            )
        return registered, version, message.SerializeToString(deterministic=True)

    def decode(self, event_type: str, version: int, payload: bytes) -> Message | UnknownEvent:
        cls = self._classes.get((event_type, version))
        if (
            cls is None
            and self._fallback is not None
            and event_type not in self._current
            and self.valid_type(event_type)
        ):
            message = self._fallback()
            try:
                message.ParseFromString(payload)
            except DecodeError as exc:
                raise PayloadDecodeError(
                    f"{event_type} v{version}: payload does not parse: {exc}"
                ) from exc
            return _showable(message, event_type, version, payload)
        if cls is None:
            return self._unknown(event_type, version, payload)
        message = cls()
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise PayloadDecodeError(
                f"{event_type} v{version}: payload does not parse: {exc}"
            ) from exc
        current = self._current[event_type]
        while version < current:
            try:
                message = self._upcasters[(event_type, version)](message)
            except Exception as exc:
                # The stored event cannot be read as the current schema, as a payload
                # that does not parse: a projector dead-letters it, a reader says the
                # history is corrupt there. It used to stop the model's worker.
                raise PayloadDecodeError(
                    f"{event_type} v{version}: the upcaster to v{version + 1} failed: {exc!r}"
                ) from exc
            version += 1
        return _showable(message, event_type, version, payload)

    def _unknown(self, event_type: str, version: int, payload: bytes) -> UnknownEvent:
        current = self._current.get(event_type)
        if current is None:
            newer = (
                f"{event_type} v{version} is an event type this release does not know "
                "(it knows no version of it): written by a newer release"
                # A domain whose callers name their types (a fallback) knows every type
                # name its rule accepts; a name no rule accepts no release writes.
                if self._fallback is None and self.valid_type(event_type)
                else ""
            )
            return UnknownEvent(event_type, version, payload, "unknown event type", newer)
        newer = (
            f"{event_type} v{version} was written by a newer release: this release knows "
            f"{event_type} up to v{current}"
            if version > current
            else ""
        )
        return UnknownEvent(
            event_type, version, payload, f"unknown schema version {version}", newer
        )


def _showable(message: Message, event_type: str, version: int, payload: bytes) -> Message:
    """``message``, or PayloadDecodeError where it holds a time or number no reader can
    show (:mod:`jetsource.core.wellknown`): poison as a payload that does not parse."""
    problem = unshowable(message, payload)
    if problem:
        raise PayloadDecodeError(f"{event_type} v{version}: {problem}")
    return message
