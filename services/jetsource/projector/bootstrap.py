"""Composition root of the projector and its admin commands: settings in, the
connections, the model registry and a factory for model versions out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from neo4j import AsyncDriver
from redis.asyncio import Redis

from jetsource.core.errors import AccessDeniedError
from jetsource.domain.context.events import registry as event_registry
from jetsource.domain.context.history import StateLoader
from jetsource.eventstore.bootstrap import (
    open_event_store,
    open_snapshot_store,
    redact_url,
    release,
)
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore
from jetsource.projector.control import Control
from jetsource.projector.deadletters import DeadLetters
from jetsource.projector.graph_model import GRAPH, GraphModel, connect_graph, graph_spec
from jetsource.projector.readmodel import ModelSpec, ReadModel
from jetsource.projector.settings import ProjectorSettings
from jetsource.projector.valkey_models import (
    CONTEXT,
    TIMELINE,
    ContextModel,
    TimelineModel,
    connect_valkey,
    context_spec,
    timeline_spec,
)
from jetsource.snapshotter.model import SNAPSHOTS, SnapshotModel, snapshot_spec

log = logging.getLogger("jetsource.projector")

# name -> spec of a given version
SPECS: dict[str, Callable[[int], ModelSpec]] = {
    CONTEXT: context_spec,
    TIMELINE: timeline_spec,
    GRAPH: graph_spec,
    SNAPSHOTS: snapshot_spec,
}


class UnknownModelError(ValueError):
    pass


def spec_for(name: str, version: int) -> ModelSpec:
    if name not in SPECS:
        raise UnknownModelError(f"unknown read model {name!r}; known: {', '.join(SPECS)}")
    if version < 1:
        raise ValueError(f"model versions start at 1, got {version}")
    return SPECS[name](version)


@dataclass
class Projection:
    settings: ProjectorSettings
    nc: NATS
    store: JetStreamEventStore
    dead_letters: DeadLetters
    control: Control
    snapshots: JetStreamSnapshotStore
    _redis: Redis | None = None
    _graph: AsyncDriver | None = None
    extra_models: dict[str, Callable[[int], ReadModel]] = field(default_factory=dict)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            self._redis = connect_valkey(self.settings)
        return self._redis

    @property
    def graph(self) -> AsyncDriver:
        if self._graph is None:
            self._graph = connect_graph(self.settings)
        return self._graph

    def model(self, name: str, version: int) -> ReadModel:
        o = self.settings.projector
        if name in self.extra_models:
            return self.extra_models[name](version)
        spec = spec_for(name, version)
        model: Any
        if name == CONTEXT:
            model = ContextModel(spec, self.redis, o.valkey_prefix, self.store, o.state_cache_size)
        elif name == SNAPSHOTS:
            loader = StateLoader(self.store, self.snapshots, self.settings.snapshots.cache_size)
            model = SnapshotModel(
                spec, self.snapshots, loader, self.settings.snapshots.every, o.state_cache_size
            )
        elif name == TIMELINE:
            model = TimelineModel(spec, self.redis, o.valkey_prefix, o.timeline_keep)
        else:
            model = GraphModel(
                spec,
                self.graph,
                self.settings.graph.database,
                self.store,
                o.state_cache_size,
                o.graph_label_prefix,
            )
        return model  # type: ignore[no-any-return]

    async def check_access(self, valkey: bool, graph: bool) -> None:
        """Refused credentials fail here, clearly, instead of as retried batches later.
        A server that is merely down is not an error: the models wait for it."""
        from neo4j.exceptions import AuthError
        from redis.exceptions import AuthenticationError, ResponseError

        if valkey:
            try:
                await self.redis.ping()
            except (AuthenticationError, ResponseError) as exc:
                if isinstance(exc, ResponseError) and "NOAUTH" not in str(exc).upper():
                    raise
                raise AccessDeniedError(
                    f"Valkey at {redact_url(self.settings.valkey_url())} refused this client: {exc}"
                ) from exc
            except Exception as exc:
                log.warning("valkey not reachable yet: %s", exc)
        if graph:
            try:
                await self.graph.verify_connectivity()
            except AuthError as exc:
                raise AccessDeniedError(
                    f"graph store at {self.settings.graph_uri()} refused user "
                    f"{self.settings.graph_auth()[0]!r}: {exc.message or exc}"
                ) from exc
            except Exception as exc:
                log.warning("graph store not reachable yet: %s", exc)

    async def close(self) -> None:
        try:
            await self.store.close()
            await self.snapshots.close()
            if self._redis is not None:
                await self._redis.aclose()
            if self._graph is not None:
                await self._graph.close()
        finally:
            await release(self.nc)


async def open_projection(settings: ProjectorSettings, provision: bool = True) -> Projection:
    nc, store = await open_event_store(settings, event_registry, provision=provision)
    o = settings.projector
    dead_letters = DeadLetters(
        nc,
        store._replies,
        o.dlq_stream,
        o.dlq_subject_prefix,
        settings.eventstore.request_timeout_s,
    )
    if provision:
        await dead_letters.ensure_stream(settings.eventstore.replicas)
    control = Control(nc, o.control_bucket, settings.eventstore.replicas)
    snapshots = await open_snapshot_store(nc, settings, provision)
    return Projection(settings, nc, store, dead_letters, control, snapshots)
