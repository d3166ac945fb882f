"""``JETSOURCE_PROCESS_QUERY__...``. The read models' names (Valkey prefix, control
bucket) are the projector's settings (``JETSOURCE_PROJECTOR__...``), so both agree."""

from __future__ import annotations

from pydantic import BaseModel, Field

from jetsource.core.settings import Port
from jetsource.projection.settings import ProjectorSettings


class ProcessQueryOptions(BaseModel):
    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50055
    metrics_port: Port = 9106  # 0 disables /metrics
    store_probe_s: float = Field(default=2.0, gt=0)
    max_concurrent_rpcs: int = Field(default=1000, ge=1)
    default_deadline_s: float = Field(default=5.0, gt=0)
    default_page_size: int = Field(default=100, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    # A page scans at most this many entries of a model (filters that match little
    # answer a short page with a token rather than scanning everything at once).
    max_scan: int = Field(default=20_000, ge=100)
    # GetProcessTree returns at most this many processes (then truncated=true).
    max_tree_nodes: int = Field(default=10_000, ge=1)
    # A page of events or processes ends at the item that reaches this many bytes (with
    # a token), so it stays below gRPC's message limit (4 MiB,
    # JETSOURCE_GRPC__MAX_MESSAGE_BYTES: at most half of it is used) however large the
    # events are.
    max_page_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    # A tree (one answer, no pages) stops before the node that would take it past this
    # many bytes (truncated=true): at most the message limit less 64 KiB.
    max_tree_bytes: int = Field(default=4 * 1024 * 1024 - 64 * 1024, ge=1024)
    # WatchProcess is woken by the timeline model's messages and reads at least this often.
    watch_poll_s: float = Field(default=1.0, gt=0)
    control_ttl_s: float = Field(default=1.0, ge=0)
    control_max_stale_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    freeze_every_s: float = Field(
        default=1.0,
        ge=0,
        description="move what lives out of the garbage collector's full walks this often "
        "(jetsource.core.heap; 0: leave the collector as it is)",
    )
    # A read of one process asks the dead letters whether a model parked it (a
    # poison): at most this long, else it answers from the model as it is.
    dead_letter_timeout_s: float = Field(default=0.5, gt=0)
    # A read with min_process_seq polls the read model at first this often, doubling
    # up to poll_max_s, until the process reaches it or the deadline nears.
    poll_min_s: float = Field(default=0.002, gt=0)
    poll_max_s: float = Field(default=0.05, gt=0)

    def target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


class ProcessQuerySettings(ProjectorSettings):
    process_query: ProcessQueryOptions = ProcessQueryOptions()
