from __future__ import annotations

from pydantic import Field

from jetsource.core.settings import JetsourceSettings, Port
from jetsource.core.workers import WorkerFields

# jetsource.domains.context.commands.DEFAULT_MAX_CONTEXT_BYTES (not imported: the CLI
# reads these settings and starts without the domain's modules).
DEFAULT_MAX_CONTEXT_BYTES = 2 * 1024 * 1024


class PublisherOptions(WorkerFields):
    """``JETSOURCE_PUBLISHER__...``"""

    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50051
    metrics_port: Port = Field(default=9101, description="Prometheus /metrics; 0 disables")
    # Conflicts without an expected version are retried after a reload, with jitter.
    conflict_retries: int = Field(default=20, ge=0)
    conflict_backoff_s: float = Field(default=0.005, ge=0)
    state_cache_size: int = Field(default=10_000, ge=0)
    max_concurrent_rpcs: int = Field(default=256, ge=1)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    default_deadline_s: float = Field(default=10.0, gt=0)
    max_context_bytes: int = Field(
        default=DEFAULT_MAX_CONTEXT_BYTES,
        ge=1024,
        description="refuse a command that would make a story's state (its encoded "
        "ContextView, what GetContext answers) larger than this (FAILED_PRECONDITION, "
        "reason CONTEXT_TOO_LARGE); at most half of grpc.max_message_bytes is used",
    )
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

    def context_cap(self) -> int:
        """The story size cap in force: ``max_context_bytes``, at most half the gRPC
        message limit (a watch message is the state and its event; answers wrap it)."""
        return min(self.publisher.max_context_bytes, self.grpc.max_message_bytes // 2)
