"""The context domain's snapshots: the engine's generic snapshots model
(:mod:`jetsource.projection.snapshots`) bound to the context state codec.

Run by the snapshotter service; its version is the state schema version
(``STATE_SCHEMA_VERSION``): a new schema re-reads the stream and writes every
snapshot again, while readers skip the old ones and fold from events.
"""

from __future__ import annotations

from jetsource.domains.context.history import CODEC
from jetsource.projection.contract import ModelSpec
from jetsource.projection.domain import ModelDecl
from jetsource.projection.snapshots import (
    SNAPSHOTS,
    SnapshotModel,
    register_metrics,
    snapshot_decl,
)
from jetsource.projection.snapshots import snapshot_spec as _snapshot_spec

__all__ = ["DECL", "SNAPSHOTS", "SnapshotModel", "register_metrics", "snapshot_spec"]

DESCRIPTION = "a snapshot of each context every N events (CONTEXT_SNAPSHOTS)"


def snapshot_spec(version: int) -> ModelSpec:
    return _snapshot_spec(version, SNAPSHOTS, DESCRIPTION)


DECL: ModelDecl = snapshot_decl(CODEC, SNAPSHOTS, DESCRIPTION)
