"""The process domain's read models: the registry (``processes``), the timelines
(``process_timeline``) and the graph (``process_graph``). The descriptor imports
``MODELS``.

The model classes import only the engine's contract and store helpers (never the
event store), so the query service can read them without the event store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jetsource.domains.process.models.graph import (
    PROCESS_GRAPH,
    ProcessGraphModel,
    process_graph_spec,
)
from jetsource.domains.process.models.registry import PROCESSES, ProcessesModel, processes_spec
from jetsource.domains.process.models.timeline import (
    TIMELINE,
    ProcessTimelineModel,
    timeline_spec,
)
from jetsource.projection.contract import ModelSpec, ReadModel
from jetsource.projection.domain import ModelDecl

if TYPE_CHECKING:
    from jetsource.projection.bootstrap import ModelEnv


def _processes(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return ProcessesModel(spec, env.redis, env.options.valkey_prefix)


def _timeline(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    return ProcessTimelineModel(spec, env.redis, env.options.valkey_prefix)


def _graph(env: ModelEnv, spec: ModelSpec) -> ReadModel:
    model: Any = ProcessGraphModel(
        spec, env.graph, env.settings.graph.database, env.options.graph_label_prefix
    )
    return model  # type: ignore[no-any-return]


MODELS: dict[str, ModelDecl] = {
    PROCESSES: ModelDecl(processes_spec, _processes),
    TIMELINE: ModelDecl(timeline_spec, _timeline),
    PROCESS_GRAPH: ModelDecl(process_graph_spec, _graph),
}

__all__ = ["MODELS", "PROCESSES", "PROCESS_GRAPH", "TIMELINE"]
