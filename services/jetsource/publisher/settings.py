from __future__ import annotations

from pydantic import Field

from jetsource.core.settings import JetsourceSettings
from jetsource.core.workers import WorkerFields


class PublisherOptions(WorkerFields):
    """``JETSOURCE_PUBLISHER__...``"""

    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = Field(default=9101, description="Prometheus /metrics; 0 disables")
    # Conflicts without an expected version are retried after a reload, with jitter.
    conflict_retries: int = Field(default=20, ge=0)
    conflict_backoff_s: float = Field(default=0.005, ge=0)
    state_cache_size: int = Field(default=10_000, ge=0)
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    default_deadline_s: float = Field(default=10.0, gt=0)
    freeze_every_s: float = Field(
        default=1.0,
        ge=0,
        description="move what lives out of the garbage collector's full walks this often "
        "(jetsource.core.heap; 0: leave the collector as it is)",
    )

    def target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


class PublisherSettings(JetsourceSettings):
    publisher: PublisherOptions = PublisherOptions()
