"""A domain is a plug-in: one descriptor says what the engine needs to carry it.

The engine (event store, projection runtime, snapshots, admin) reads descriptors and
never imports a domain. A domain package builds its ``Domain`` and the one registry
(``jetsource.domains``) lists them; a test can register a throwaway one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message

from jetsource.core.clock import MAX_AGE_S
from jetsource.core.codec import EventRegistry
from jetsource.core.envelope import NewEvent
from jetsource.core.ids import valid_event_type
from jetsource.core.settings import EventStoreSettings, check_stream_name, check_subject_prefix

if TYPE_CHECKING:
    from jetsource.projection.bootstrap import ModelEnv
    from jetsource.projection.contract import ModelSpec, ReadModel


class Retention(StrEnum):
    FOREVER = "forever"  # the audit log: nothing is ever removed
    AGE = "age"  # messages older than max_age_s are removed by the server
    AGE_WITH_COMPACTION = "age+compaction"  # archived, then purged behind snapshots


@dataclass(frozen=True)
class StreamPolicy:
    """How a domain's event stream keeps its history. Purge rights belong to the
    roles named here (an archiver, a pruner), never to a service."""

    retention: Retention = Retention.FOREVER
    max_age_s: float = 0.0
    purge_roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.retention is not Retention.FOREVER and self.max_age_s <= 0:
            raise ValueError(f"retention {self.retention} needs max_age_s > 0")
        if not self.max_age_s <= MAX_AGE_S:  # (NaN too)
            raise ValueError(
                f"max_age_s {self.max_age_s} is longer than a stream keeps messages for "
                f"(at most {MAX_AGE_S} s, 292 years: JetStream's int64 nanoseconds)"
            )


@dataclass(frozen=True)
class ModelDecl:
    """A read model a domain declares: its spec for a version, and how to build it
    from the engine's resources (``ModelEnv``: the domain's event store, Valkey, the
    graph driver, snapshots, options)."""

    spec: Callable[[int], ModelSpec]
    build: Callable[[ModelEnv, ModelSpec], ReadModel]
    # Run by the projector unless its settings name the models; False for models
    # that run in a service of their own (the snapshotter).
    default: bool = True
    # A model whose version follows a schema (snapshots) instead of a cutover.
    pinned_version: int | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    stream: str
    subject_prefix: str
    aggregate_type: str
    registry: EventRegistry
    models: Mapping[str, ModelDecl] = field(default_factory=dict)
    policy: StreamPolicy = StreamPolicy()
    # The services that serve it, for operators (names of console scripts).
    services: tuple[str, ...] = ()
    # A generated valid history of one aggregate (id, number of events, seed): the
    # runtime's generic tests (determinism of every model) build from it.
    # A domain whose registry has a fallback message gives NewEvents (they name the type).
    sample_history: Callable[[str, int, int], Sequence[Message | NewEvent]] | None = None
    # Where the stream's names come from: the context domain's are settings
    # (JETSOURCE_EVENTSTORE__STREAM, ...); None means the descriptor's own.
    settings_key: str | None = None
    # Where its event ids are unique (EventStoreSettings.event_ids): "aggregate" when
    # callers name them (the process ledger), "stream" when the server makes them.
    event_ids: str = "stream"

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"domain name {self.name!r} must be an identifier")
        if not valid_event_type(self.aggregate_type.capitalize()):
            raise ValueError(f"aggregate type {self.aggregate_type!r} must be letters/digits")
        # The names the server would refuse (or read as wildcards) are refused here, with
        # the domain and the field named, not by the first `streams ensure`.
        for what, check, value in (
            ("stream", check_stream_name, self.stream),
            ("subject_prefix", check_subject_prefix, self.subject_prefix),
        ):
            try:
                check(value)
            except ValueError as exc:
                raise ValueError(f"domain {self.name!r}: {what}: {exc}") from None
        events, voids = self.subjects()
        if overlap(events, voids):
            raise ValueError(
                f"domain {self.name!r}: subject_prefix {self.subject_prefix!r} overlaps its "
                f"own voids subjects {voids}.>"
            )

    def subjects(self) -> tuple[str, str]:
        """The descriptor's two subject prefixes in its stream: its events' and its
        operators' voids' (each followed by ``.>``)."""
        return self.subject_prefix, voids_of(self.subject_prefix)

    def eventstore(self, settings: Any) -> EventStoreSettings:
        """This domain's event store settings: the shared ones (replicas, limits,
        timeouts) with its own stream, subjects and aggregate type."""
        base: EventStoreSettings = settings.eventstore
        if self.settings_key is not None:
            return base
        return base.model_copy(
            update={
                "stream": self.stream,
                "subject_prefix": self.subject_prefix,
                "aggregate_type": self.aggregate_type,
                # The descriptor's policy decides the stream's retention and purge rights.
                "retention": str(self.policy.retention),
                "max_age_s": self.policy.max_age_s,
                "purge_roles": self.policy.purge_roles,
                "event_ids": self.event_ids,
            }
        )


class DomainRegistry:
    """Domains by name, and each read model by its (globally unique) name: a model's
    name is its durable consumer, its dead-letter subjects and its control key."""

    def __init__(self, domains: list[Domain] | None = None) -> None:
        self._domains: dict[str, Domain] = {}
        self._owner: dict[str, str] = {}
        for d in domains or []:
            self.register(d)

    def register(self, domain: Domain) -> None:
        if domain.name in self._domains:
            raise ValueError(f"domain {domain.name!r} registered twice")
        for other in self._domains.values():
            if other.stream == domain.stream:
                raise ValueError(
                    f"domain {domain.name!r} shares its stream {domain.stream!r} with "
                    f"{other.name!r}"
                )
            # Two streams may not hold overlapping subjects: a prefix nested in another
            # domain's (``context`` and ``context.events``) is refused as an equal one is.
            for mine in domain.subjects():
                for theirs in other.subjects():
                    if overlap(mine, theirs):
                        raise ValueError(
                            f"domain {domain.name!r}: subjects {mine}.> overlap {theirs}.> "
                            f"of domain {other.name!r}; give it a subject_prefix of its own"
                        )
        for model, decl in domain.models.items():
            # A consumed type the domain does not have is a filter subject nothing is
            # ever published on: the model silently never saw those events.
            consumed = decl.spec(decl.pinned_version or 1).consumed_events or ()
            events = domain.registry
            known = set(events.event_types())
            unknown = sorted(
                t
                for t in consumed
                if not (t in known or (events.fallback is not None and events.valid_type(t)))
            )
            if unknown:
                raise ValueError(
                    f"read model {model!r} of {domain.name!r} consumes {', '.join(unknown)}, "
                    f"not event types of the domain (known: "
                    f"{', '.join(sorted(known))})"
                )
            if model in self._owner:
                raise ValueError(
                    f"read model {model!r} of {domain.name!r} is already declared by "
                    f"{self._owner[model]!r}: model names are global"
                )
        self._domains[domain.name] = domain
        for model in domain.models:
            self._owner[model] = domain.name

    def unregister(self, name: str) -> None:
        domain = self._domains.pop(name)
        for model in domain.models:
            self._owner.pop(model, None)

    def __iter__(self) -> Any:
        return iter(list(self._domains.values()))

    def get(self, name: str) -> Domain:
        return self._domains[name]

    def owner(self, model: str) -> Domain:
        try:
            return self._domains[self._owner[model]]
        except KeyError:
            raise UnknownModelError(
                f"unknown read model {model!r}; known: {', '.join(self.models())}"
            ) from None

    def models(self) -> list[str]:
        return list(self._owner)

    def decl(self, model: str) -> ModelDecl:
        return self.owner(model).models[model]


def voids_of(subject_prefix: str) -> str:
    """As the event store's ``void_prefix``: ``context.events`` -> ``context.voids``."""
    root, _, _ = subject_prefix.rpartition(".")
    return f"{root}.voids" if root else f"{subject_prefix}_voids"


def overlap(a: str, b: str) -> bool:
    """Do ``a.>`` and ``b.>`` match a common subject (one's tokens start the other's)?"""
    ta, tb = a.split("."), b.split(".")
    n = min(len(ta), len(tb))
    return ta[:n] == tb[:n]


class UnknownModelError(ValueError):
    pass
