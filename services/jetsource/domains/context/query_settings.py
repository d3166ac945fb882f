from __future__ import annotations

from pydantic import Field

from jetsource.core.settings import Port
from jetsource.core.workers import WorkerFields
from jetsource.projection.settings import ProjectorSettings


class QueryOptions(WorkerFields):
    """``JETSOURCE_QUERY__...``. The read models' names (Valkey prefix, graph label
    prefix, control bucket) are the projector's settings, read from
    ``JETSOURCE_PROJECTOR__...`` so both services agree."""

    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50052
    metrics_port: Port = 9104  # 0 disables /metrics
    # How often health checks NATS, Valkey and the graph store (NOT_SERVING while one
    # does not answer).
    store_probe_s: float = Field(default=2.0, gt=0)
    max_concurrent_rpcs: int = Field(default=1000, ge=1)
    # Used when the client sets no deadline (read-your-writes waits at most this long).
    default_deadline_s: float = Field(default=5.0, gt=0)
    # Read-your-writes polling of the read model: starts at min, doubles up to max.
    poll_min_s: float = Field(default=0.002, gt=0)
    poll_max_s: float = Field(default=0.05, gt=0)
    max_page_size: int = Field(default=1000, ge=1)
    # ListEvents ends a page early, with a next_page_token, before its events pass this
    # many bytes (at least one event a page; at most the gRPC message limit less 64 KiB).
    max_page_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_graph_depth: int = Field(default=10, ge=0)
    # WatchContext re-reads the stream at least this often (it is woken per event).
    watch_poll_s: float = Field(default=1.0, gt=0)
    # How often the active read-model versions are looked up in NATS KV, and for how long
    # the last one known keeps serving reads while NATS does not answer.
    control_ttl_s: float = Field(default=1.0, ge=0)
    control_max_stale_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    # A read of one story from a read model (GetContext, GetDecisionGraph) answers
    # DATA_LOSS naming the poison when that model parked the story behind a dead
    # letter. Which stories are parked is read from the dead letters (one request) at
    # most this often, taking at most ``dead_letter_timeout_s`` (else the read answers
    # from the model as it is).
    dead_letter_ttl_s: float = Field(default=1.0, ge=0)
    dead_letter_timeout_s: float = Field(default=0.5, gt=0)

    def target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


class QuerySettings(ProjectorSettings):
    query: QueryOptions = QueryOptions()
