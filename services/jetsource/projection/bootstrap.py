"""Composition root of the projection runtime and its admin commands: settings and
the registered domains in; the connections, one event store per domain's stream, the
dead letters, the control bucket and a factory for model versions out.

The engine knows no domain: the registry module is named by a setting
(``JETSOURCE_PROJECTOR__DOMAINS``, default ``jetsource.domains``) and loaded by name.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from nats.aio.client import Client as NATS
from neo4j import AsyncDriver
from valkey.asyncio import Valkey

from jetsource.core.aio import wait_for
from jetsource.core.errors import AccessDeniedError
from jetsource.core.natsping import PingProbe
from jetsource.eventstore.bootstrap import (
    open_event_store,
    open_snapshot_store,
    release,
)
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from jetsource.projection.contract import ModelSpec, ReadModel
from jetsource.projection.control import Control
from jetsource.projection.deadletters import DeadLetters
from jetsource.projection.domain import Domain, DomainRegistry, UnknownModelError, overlap, voids_of
from jetsource.projection.graph import FencedDriver, connect_graph
from jetsource.projection.partitions import Fence, FencedSnapshots
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings
from jetsource.projection.valkey import FencedValkey, check_valkey_access, connect_valkey

log = logging.getLogger("jetsource.projector")

__all__ = [
    "DomainsError",
    "IncompleteModelError",
    "ModelEnv",
    "Projection",
    "UnknownModelError",
    "load_domains",
    "open_projection",
]


class DomainsError(ValueError):
    """``JETSOURCE_PROJECTOR__DOMAINS`` names no usable registry: the module does not
    import (or raised building its registry: two domains' subjects overlap, ...), has
    no such attribute, or it is not a ``DomainRegistry``. A bad setting, named as one
    (the CLI: exit 2), not an unexpected error."""

    field = "JETSOURCE_PROJECTOR__DOMAINS"


def load_domains(module: str = "jetsource.domains", setting: str = "") -> DomainRegistry:
    """The registry a domains module exports as ``REGISTRY`` (``module`` or
    ``module:attribute``); :class:`DomainsError` naming the setting when there is none
    (``setting``: the variable the process read it from, the projector's by default)."""
    name, _, attribute = module.partition(":")
    attribute = attribute or "REGISTRY"
    where = f"{setting or DomainsError.field}={module!r}"
    try:
        found = importlib.import_module(name)
    except Exception as exc:
        raise DomainsError(f"{where}: module {name!r} does not load: {exc}") from exc
    try:
        registry = getattr(found, attribute)
    except AttributeError as exc:
        raise DomainsError(f"{where}: module {name!r} has no {attribute!r} ({exc})") from exc
    except Exception as exc:  # a registry built on first use (jetsource.domains) refused
        raise DomainsError(f"{where}: {attribute} could not be built: {exc}") from exc
    if not isinstance(registry, DomainRegistry):
        raise DomainsError(
            f"{where}: {attribute} is a {type(registry).__name__}, not a DomainRegistry"
        )
    return registry


_READ_MODEL_METHODS = tuple(
    m for m in vars(ReadModel) if not m.startswith("_") and callable(getattr(ReadModel, m))
)


class IncompleteModelError(ValueError):
    """A domain's model factory built an object without every ``ReadModel`` method."""


def check_engine_subjects(settings: ProjectorSettings, registry: DomainRegistry) -> None:
    """No domain's subjects overlap the engine's own streams' (the dead letters', the
    snapshots'): the server would refuse the second stream at ``streams ensure`` with a
    message that names neither the domain nor the setting."""
    engine = {
        f"JETSOURCE_{settings.projector.ENV_SECTION}__DLQ_SUBJECT_PREFIX": (
            settings.projector.dlq_subject_prefix
        ),
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": settings.snapshots.subject_prefix,
    }
    for domain in registry:
        prefix = domain.eventstore(settings).subject_prefix
        for mine in prefix, voids_of(prefix):
            for setting, theirs in engine.items():
                if overlap(mine, theirs):
                    raise DomainsError(
                        f"domain {domain.name!r}: subjects {mine}.> overlap the engine's "
                        f"{theirs}.> ({setting}); give one a subject prefix of its own"
                    )


@dataclass
class ModelEnv:
    """What a model factory gets from the engine: its domain's event store, the
    shared snapshot store, Valkey and the graph driver (connected on first use),
    and the runtime's settings."""

    projection: Projection
    domain: Domain
    store: JetStreamEventStore
    # A partition worker's model writes under its lease's fence (None: unpartitioned).
    fence: Fence | None = None
    _fenced: dict[str, Any] = field(default_factory=dict)

    @property
    def settings(self) -> ProjectorSettings:
        return self.projection.settings

    @property
    def options(self) -> ProjectorOptions:
        return self.projection.settings.projector

    @property
    def snapshots(self) -> JetStreamSnapshotStore:
        if self.fence is None:
            return self.projection.snapshots
        if "snapshots" not in self._fenced:
            self._fenced["snapshots"] = FencedSnapshots(self.projection.snapshots, self.fence)
        return cast(JetStreamSnapshotStore, self._fenced["snapshots"])

    @property
    def redis(self) -> Valkey:
        if self.fence is None:
            return self.projection.redis
        if "redis" not in self._fenced:
            self._fenced["redis"] = FencedValkey(
                self.projection.redis, self.fence, self.options.valkey_prefix
            )
        return cast(Valkey, self._fenced["redis"])

    @property
    def graph(self) -> AsyncDriver:
        if self.fence is None:
            return self.projection.graph
        if "graph" not in self._fenced:
            self._fenced["graph"] = FencedDriver(
                self.projection.graph,
                self.fence,
                self.options.graph_label_prefix,
                self.settings.graph.database,
            )
        return cast(AsyncDriver, self._fenced["graph"])


@dataclass
class Projection:
    settings: ProjectorSettings
    nc: NATS
    domains: DomainRegistry
    stores: dict[str, JetStreamEventStore]
    dead_letters: DeadLetters
    control: Control
    snapshots: JetStreamSnapshotStore
    _redis: Valkey | None = None
    _graph: AsyncDriver | None = None
    _ping: PingProbe | None = None  # health's PING (core.natsping)
    extra_models: dict[str, Callable[[int], ReadModel]] = field(default_factory=dict)
    # stream -> its whole-history reader, its archive (history_of, archive_of)
    _histories: dict[str, Any] = field(default_factory=dict)
    _archives: dict[str, Any] = field(default_factory=dict)

    @property
    def store(self) -> JetStreamEventStore:
        """The first registered domain's store (commands that name no model)."""
        return next(iter(self.stores.values()))

    def store_for(self, model: str) -> JetStreamEventStore:
        return self.stores[self.domains.owner(model).name]

    def history_of(self, store: JetStreamEventStore) -> Any:
        """What reads one aggregate's whole history (``archive.history.history_store``):
        on a compacted stream whose archive is read (``JETSOURCE_ARCHIVE__READ``), the
        live stream with the versions before each horizon from the archive; else the
        live store itself. One per stream for the projection's life: a command writing
        N stories again (replay, erase, their snapshots) built one for each and fetched
        and decoded their segments N times."""
        stream = store.settings.stream
        if stream not in self._histories:
            from jetsource.archive.history import history_store

            found = history_store(store, self.settings, self.archive_of(store))
            self._histories[stream] = found
        return self._histories[stream]

    def archive_of(self, store: JetStreamEventStore) -> Any:
        """The archive of a compacted stream (``archive.history.archive_of``), or None;
        one per stream, shared with :meth:`history_of`."""
        stream = store.settings.stream
        if stream not in self._archives:
            from jetsource.archive.history import archive_of

            self._archives[stream] = archive_of(store, self.settings)
        return self._archives[stream]

    def domain_store(self, domain: str) -> JetStreamEventStore:
        try:
            return self.stores[domain]
        except KeyError:
            raise UnknownModelError(
                f"unknown domain {domain!r}; known: {', '.join(self.stores)}"
            ) from None

    @property
    def redis(self) -> Valkey:
        if self._redis is None:
            self._redis = connect_valkey(self.settings)
        return self._redis

    @property
    def graph(self) -> AsyncDriver:
        if self._graph is None:
            self._graph = connect_graph(self.settings)
        return self._graph

    def model_names(self) -> list[str]:
        return self.domains.models()

    def default_models(self) -> list[str]:
        """What the projector runs unless its settings name the models."""
        return [m for m in self.domains.models() if self.domains.decl(m).default]

    def spec(self, name: str, version: int) -> ModelSpec:
        return self.domains.decl(name).spec(version)

    def pinned_version(self, name: str) -> int | None:
        return self.domains.decl(name).pinned_version

    def model(self, name: str, version: int, fence: Fence | None = None) -> ReadModel:
        """A model version; with a ``fence``, one whose writes are fenced (a partition
        worker's: build one per lease, so no cache outlives a lost partition)."""
        if name in self.extra_models:
            return self.extra_models[name](version)
        decl = self.domains.decl(name)
        domain = self.domains.owner(name)
        env = ModelEnv(self, domain, self.stores[domain.name], fence)
        model = decl.build(env, decl.spec(version))
        # What the runtime and the admin commands call: a model without one of them
        # started, said it was healthy and failed later with an AttributeError (the CLI:
        # "unexpected ... (a bug)").
        missing = [m for m in _READ_MODEL_METHODS if not callable(getattr(model, m, None))]
        if missing:
            raise IncompleteModelError(
                f"read model {name!r} v{version} of domain {domain.name!r} "
                f"({type(model).__name__}) has no {', '.join(missing)}: a ReadModel "
                f"(jetsource.projection.contract) has {', '.join(_READ_MODEL_METHODS)}"
            )
        return model

    async def check_access(self, valkey: bool, graph: bool) -> None:
        """Refused credentials fail here, clearly, instead of as retried batches later.
        A server that is merely down is not an error: the models wait for it."""
        from neo4j.exceptions import AuthError

        if valkey:
            await check_valkey_access(self.redis, self.settings)
        if graph:
            try:
                await self.graph.verify_connectivity()
            except AuthError as exc:
                raise AccessDeniedError(
                    f"graph store at {self.settings.graph_uri()} refused user "
                    f"{self.settings.graph_auth()[0]!r}: {exc.message or exc}; check "
                    "JETSOURCE_GRAPH__USER and JETSOURCE_GRAPH__PASSWORD"
                ) from exc
            except Exception as exc:
                log.warning("graph store not reachable yet: %s", exc)

    async def unreachable(self, stores: set[str], timeout_s: float = 2.0) -> dict[str, str]:
        """Which of the read-model stores named (``valkey``, ``graph``) and NATS do not
        answer now: store -> why. Health follows it (NOT_SERVING / 503 while a service
        cannot reach a store it needs, serving again on its own)."""
        down: dict[str, str] = {}
        if not self.nc.is_connected:
            down["nats"] = "not connected"
        elif not await self.nats_answers(timeout_s):
            down["nats"] = f"connected, but no answer within {timeout_s:g} s"
        checks = {"valkey": lambda: self.redis.ping(), "graph": self.graph.verify_connectivity}
        for name in sorted(stores & set(checks)):
            try:
                await wait_for(checks[name](), timeout_s)
            except Exception as exc:
                down[name] = f"{type(exc).__name__}: {exc}"[:200]
        return down

    async def nats_answers(self, timeout_s: float) -> bool:
        """Whether the NATS server answers a PING now. A hung server (stopped, its
        connections open) leaves ``nc.is_connected`` True until the client's own
        pings give up, so health asks it (``jetsource.core.natsping``: a PING that
        times out is never cancelled; nats-py 2.16's flush(timeout) would break the
        connection when the late PONG came)."""
        if self._ping is None or self._ping.nc is not self.nc:
            self._ping = PingProbe(self.nc)
        return await self._ping.answers(timeout_s)

    async def close(self) -> None:
        try:
            for store in self.stores.values():
                await store.close()
            await self.snapshots.close()
            if self._redis is not None:
                await self._redis.aclose()
            if self._graph is not None:
                await self._graph.close()
        finally:
            await release(self.nc)


def projection_domains(
    settings: ProjectorSettings, domains: DomainRegistry | None = None
) -> DomainRegistry:
    """The registry :func:`open_projection` opens (``domains``, else the one the domains
    setting names), checked as it checks it: :class:`DomainsError` naming the setting
    when it loads none, has no domain, or overlaps the engine's streams. Needs no
    connection: the CLI checks it before it tries NATS, so a bad setting is said as one
    whatever NATS is (it said "not reachable" when nothing listened)."""
    registry = (
        domains
        if domains is not None
        else load_domains(
            settings.projector.domains, f"JETSOURCE_{settings.projector.ENV_SECTION}__DOMAINS"
        )
    )
    check_engine_subjects(settings, registry)
    if not list(registry):
        # A bad setting, named as one (it read "refused: no domain is registered", exit
        # 1, and NATS "not reachable" in the TUI).
        raise DomainsError(
            f"JETSOURCE_{settings.projector.ENV_SECTION}__DOMAINS="
            f"{settings.projector.domains!r}: its registry has no domain"
        )
    return registry


async def open_projection(
    settings: ProjectorSettings,
    provision: bool = True,
    domains: DomainRegistry | None = None,
) -> Projection:
    """Connect, open one event store per registered domain (creating the streams
    when ``provision``), the dead letters, the control bucket and the snapshots."""
    registry = projection_domains(settings, domains)
    listed = list(registry)
    first = listed[0]
    nc, first_store = await open_event_store(
        settings.model_copy(update={"eventstore": first.eventstore(settings)}),
        first.registry,
        provision=provision,
    )
    stores = {first.name: first_store}
    for domain in listed[1:]:
        store = JetStreamEventStore(nc, domain.registry, domain.eventstore(settings))
        if provision:
            await store.ensure_streams()
        # Started as the first one is: its reply subscription answers the JetStream
        # API calls the admin commands make through it (cutover, wait, reset and drop
        # of a process or omni model timed out, waiting for replies nobody received).
        await store.start()
        stores[domain.name] = store
    o = settings.projector
    dead_letters = DeadLetters(
        nc,
        first_store._replies,
        o.dlq_stream,
        o.dlq_subject_prefix,
        settings.eventstore.request_timeout_s,
    )
    if provision:
        await dead_letters.ensure_stream(settings.eventstore.replicas)
    control = Control(nc, o.control_bucket, settings.eventstore.replicas)
    snapshots = await open_snapshot_store(nc, settings, provision)
    return Projection(settings, nc, registry, stores, dead_letters, control, snapshots)
