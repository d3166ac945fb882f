from __future__ import annotations

from pydantic import BaseModel, Field

from jetsource.core.settings import BucketName, JetsourceSettings, Port
from jetsource.domains.process.claims import DEFAULT_BUCKET


class ObserverOptions(BaseModel):
    """``JETSOURCE_OBSERVER__...``"""

    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50053
    metrics_port: Port = Field(default=9105, description="Prometheus /metrics; 0 disables")
    max_concurrent_rpcs: int = Field(default=512, ge=1)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    freeze_every_s: float = Field(
        default=1.0,
        ge=0,
        description="move what lives out of the garbage collector's full walks this often "
        "(jetsource.core.heap; 0: leave the collector as it is)",
    )
    # What one event may carry: larger payloads are refused (INVALID_ARGUMENT naming it).
    max_payload_bytes: int = Field(default=256 * 1024, ge=1)
    max_attributes: int = Field(default=64, ge=0)
    # Events per RecordBatch request (and per process per request: at most 1000, one
    # atomic batch).
    max_batch_events: int = Field(default=10_000, ge=1)
    # The key-value bucket of event id and idempotency key claims (forever).
    claims_bucket: BucketName = DEFAULT_BUCKET
    # A pending claim older than this is taken over: its owner crashed mid-append.
    claim_lease_s: float = Field(default=60.0, gt=0)
    conflict_retries: int = Field(default=20, ge=0)
    # RecordStream records what arrived every this many events (or when the stream
    # pauses): one atomic batch per process per flush.
    stream_flush_events: int = Field(default=500, ge=1)

    def target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


class ObserverSettings(JetsourceSettings):
    observer: ObserverOptions = ObserverOptions()
