"""The context domain as the engine sees it: its stream, events and read models.

The stream's names are settings (``JETSOURCE_EVENTSTORE__STREAM`` and
``__SUBJECT_PREFIX``, default ``CONTEXT_EVENTS`` / ``context.events``), so tests and
deployments can move it; the descriptor's are the defaults.
"""

from __future__ import annotations

from typing import Any

from jetsource.domains.context.events import AGGREGATE_TYPE, registry
from jetsource.domains.context.graph_model import GRAPH, GraphModel, graph_spec
from jetsource.domains.context.samples import story_events
from jetsource.domains.context.snapshots_model import DECL as SNAPSHOTS_DECL
from jetsource.domains.context.snapshots_model import SNAPSHOTS
from jetsource.domains.context.valkey_models import (
    CONTEXT,
    TIMELINE,
    ContextModel,
    TimelineModel,
    context_spec,
    timeline_spec,
)
from jetsource.projection.bootstrap import ModelEnv
from jetsource.projection.contract import ModelSpec, ReadModel
from jetsource.projection.domain import Domain, ModelDecl, Retention, StreamPolicy


def _context(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    o = env.options
    return ContextModel(spec, env.redis, o.valkey_prefix, env.store, o.state_cache_size)


def _timeline(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    o = env.options
    return TimelineModel(spec, env.redis, o.valkey_prefix, o.timeline_keep)


def _graph(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    o = env.options
    model: Any = GraphModel(
        spec,
        env.graph,
        env.settings.graph.database,
        env.store,
        o.state_cache_size,
        o.graph_label_prefix,
    )
    return model  # type: ignore[no-any-return]


DOMAIN = Domain(
    name="context",
    stream="CONTEXT_EVENTS",
    subject_prefix="context.events",
    aggregate_type=AGGREGATE_TYPE,
    registry=registry,
    models={
        CONTEXT: ModelDecl(context_spec, _context),
        TIMELINE: ModelDecl(timeline_spec, _timeline),
        GRAPH: ModelDecl(graph_spec, _graph),
        # Run by the snapshotter service; its version is the state schema's.
        SNAPSHOTS: SNAPSHOTS_DECL,
    },
    # The audit log and time travel to any point: keep everything.
    policy=StreamPolicy(Retention.FOREVER),
    services=(
        "jetsource-publisher",
        "jetsource-query",
        "jetsource-projector",
        "jetsource-snapshotter",
    ),
    settings_key="eventstore",
    sample_history=story_events,
)
