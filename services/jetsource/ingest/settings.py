"""Settings of jetsource-ingest: ``JETSOURCE_INGEST__...`` for the ingress itself,
``JETSOURCE_OMNI__...`` for the domain's streams and bucket; read models' names (Valkey
prefix, control bucket) are the projector's, so both agree.

Instances come as JSON (``JETSOURCE_INGEST__INSTANCES``) or, with their secrets, from
the file ``jetsource_ingest__instances`` in the secrets directory (a Kubernetes Secret)::

    {"acme": {"provider": "whatsapp", "format": "cloud", "app_secret": "...",
              "verify_token": "..."},
     "evo": {"provider": "whatsapp", "format": "evolution", "api_key": "..."},
     "bot": {"provider": "discord", "format": "forwarder", "shared_secret": "..."},
     "app": {"provider": "discord", "format": "interactions", "public_key": "<64 hex>"}}
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from jetsource.core.settings import BearerToken, Port
from jetsource.domains.omni.settings import INSTANCE_NAME, InstanceConfig, OmniOptions
from jetsource.projection.settings import ProjectorSettings


class IngestOptions(BaseModel):
    host: str = "127.0.0.1"
    # Webhooks, REST reads (/api/v1/), OpenAPI (/openapi.json, /docs), /healthz, /metrics.
    http_port: Port = 8088
    # OmniQueryService (gRPC); 0 picks a free port.
    grpc_host: str = "127.0.0.1"
    grpc_port: Port = 50054
    max_concurrent_rpcs: int = Field(default=1000, ge=1)
    # How often OmniQueryService's gRPC health checks NATS and Valkey (NOT_SERVING while
    # the reads cannot be answered, as the other query services'); /healthz asks at once.
    store_probe_s: float = Field(default=2.0, gt=0)
    instances: dict[str, InstanceConfig] = Field(default_factory=dict)
    # Larger bodies are refused (413) and archived cut to keep_rejected_bytes.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # A request refused before its signature is checked (too large, a wrong signature,
    # an unknown instance) is archived with its body cut to this (omni.intake.UNSIGNED).
    keep_rejected_bytes: int = Field(default=64 * 1024, ge=0)
    # A request's line and headers must come whole within head_timeout_s of the
    # connection's start (or of the previous answer on it), its body within
    # body_timeout_s of its head: else 408 request_timeout and the connection closed
    # (a slow or stalled client held its connection and a task for ever).
    head_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    # A request's line and headers over this are refused 431 headers_too_large.
    max_head_bytes: int = Field(default=64 * 1024, ge=4096, le=1024 * 1024)
    # Open HTTP connections at most (0: the open-file limit less 128): one more closes
    # the oldest not being answered (idle, or a slow head), else is answered 503.
    max_connections: int = Field(default=0, ge=0)
    # Non-empty: /api/v1/ asks for "Authorization: Bearer <one of them>".
    api_tokens: list[BearerToken] = Field(default_factory=list)
    max_page_size: int = Field(default=1000, ge=1)
    control_ttl_s: float = Field(default=1.0, ge=0)
    control_max_stale_s: float = Field(default=30.0, ge=0)
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    freeze_every_s: float = Field(
        default=1.0,
        ge=0,
        description="move what lives out of the garbage collector's full walks this often "
        "(jetsource.core.heap; 0: leave the collector as it is)",
    )

    @field_validator("instances")
    @classmethod
    def _names(cls, value: dict[str, InstanceConfig]) -> dict[str, InstanceConfig]:
        """An instance's name is a path segment of its webhook URL and a part of the
        read model's keys (``c:<provider>:<instance>:<conversation>``): letters, digits,
        ``-``, ``_`` and ``.``, 1-64 of them. A ``:`` would let ``a:b`` + ``c`` read
        what ``a`` + ``b:c`` wrote."""
        for name in value:
            if not INSTANCE_NAME.fullmatch(name):
                raise ValueError(
                    f"instance name {name[:80]!r}: 1-64 letters, digits, '-', '_' or '.', "
                    "starting with a letter or digit"
                )
        return value


class IngestSettings(ProjectorSettings):
    ingest: IngestOptions = IngestOptions()
    omni: OmniOptions = OmniOptions()
