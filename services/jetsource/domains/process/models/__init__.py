"""The process domain's read models: the registry (``processes``), the timelines
(``process_timeline``) and the graph (``process_graph``). The descriptor imports
``MODELS``."""

from __future__ import annotations

from jetsource.projection.domain import ModelDecl

MODELS: dict[str, ModelDecl] = {}
