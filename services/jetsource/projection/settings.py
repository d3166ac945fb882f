from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from jetsource.core.settings import BucketName, JetsourceSettings, Port, StreamName, SubjectPrefix
from jetsource.projection.partitions import PartitionOptions


class ProjectorOptions(BaseModel):
    """``JETSOURCE_PROJECTOR__...``"""

    # The settings' section in the environment (the snapshotter runs the same runtime
    # under JETSOURCE_SNAPSHOTTER__...): errors name the variable the process reads.
    ENV_SECTION: ClassVar[str] = "PROJECTOR"

    host: str = "127.0.0.1"
    # /metrics (Prometheus) and /healthz on one HTTP port; 0 disables both.
    http_port: Port = 9102
    # The read models to run; empty: every default model of every registered domain.
    models: list[str] = Field(default_factory=list)
    # The module whose REGISTRY lists the domains (the one place they are registered).
    domains: str = "jetsource.domains"
    # Largest batch handed to a model at once (one Lua script / one transaction).
    batch_size: int = Field(default=500, ge=1, le=10_000)
    pull_batch: int = Field(default=1000, ge=1)
    pull_expires_s: float = Field(default=5.0, gt=0.1)
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_ack_pending: int = Field(default=20_000, ge=1)
    # A handler that refuses an event this many times sends it to the dead letters.
    max_deliver: int = Field(default=5, ge=1)
    backoff_s: list[float] = Field(default_factory=lambda: [0.2, 1.0, 5.0, 15.0, 30.0])
    # Redelivery delay for an event waiting behind an earlier one of its aggregate.
    waiting_delay_s: float = Field(default=0.1, ge=0)
    # An event still waiting after this many rounds (gaps are filled from the stream, so
    # waiting is rare) is refused, and so reaches the dead letters: waiting is bounded.
    max_waits: int = Field(default=100, ge=1)
    # A model with work delivered and nothing done for this long is stalled: /healthz
    # answers 503 and jetsource_projector_stalled is 1.
    stall_after_s: float = Field(default=120.0, gt=0)
    # A model whose store has refused every write for this long (Valkey OOM at maxmemory,
    # READONLY, the graph store away...; the events wait for redelivery) is in a store
    # outage: /healthz answers 503 naming the model and the store, until a write goes
    # through again.
    store_outage_after_s: float = Field(default=3.0, gt=0)
    dlq_stream: StreamName = "CONTEXT_DLQ"
    dlq_subject_prefix: SubjectPrefix = "jetsource.dlq"
    control_bucket: BucketName = "JETSOURCE_READMODELS"
    control_poll_s: float = Field(default=2.0, gt=0)
    valkey_prefix: str = "jetsource"
    # Graph labels are <prefix><Name>_v<version>, e.g. Story_v1.
    graph_label_prefix: str = Field(default="", pattern=r"^[A-Za-z]?[A-Za-z0-9]*$")
    timeline_keep: int = Field(default=50, ge=1)
    state_cache_size: int = Field(default=10_000, ge=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    freeze_every_s: float = Field(
        default=1.0,
        ge=0,
        description="move what lives out of the garbage collector's full walks this often "
        "(jetsource.core.heap; 0: leave the collector as it is)",
    )
    # Scale-out: 0 (default) runs one worker per model; N splits the models of this
    # service in N partitions shared by its replicas (leases, fencing).
    partitions: PartitionOptions = PartitionOptions()

    def backoff(self, failures: int) -> float:
        return self.backoff_s[min(failures, len(self.backoff_s)) - 1] if self.backoff_s else 0.0


class ProjectorSettings(JetsourceSettings):
    projector: ProjectorOptions = ProjectorOptions()
