"""Settings shared by every jetsource process.

Environment variables use the prefix ``JETSOURCE_`` and ``__`` between nested
names (``JETSOURCE_NATS__URL``). Secrets can also come from files named the same
way in lower case (``jetsource_nats__password``) inside ``JETSOURCE_SECRETS_DIR``
(default ``/run/secrets/jetsource`` when it exists), which is how Kubernetes
mounts a Secret. Each service subclasses :class:`JetsourceSettings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRETS_DIR = Path("/run/secrets/jetsource")


class TlsSettings(BaseModel):
    """Client TLS. ``enabled`` with no files means "verify against system CAs"."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    @property
    def active(self) -> bool:
        return self.enabled or self.ca_file is not None or self.cert_file is not None


class ServerTlsSettings(BaseModel):
    """Server TLS for a gRPC service. ``client_ca_file`` set means mutual TLS: clients
    must present a certificate signed by it."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def active(self) -> bool:
        return self.cert_file is not None


class GrpcServerSettings(BaseModel):
    """What the gRPC services (publisher, query) accept: ``JETSOURCE_GRPC__...``.

    ``auth_tokens`` non-empty means every call but the health check needs
    ``authorization: Bearer <one of them>`` (a JSON list in the environment, or a
    file ``grpc__auth_tokens`` in the secrets directory). A client is its token, else
    its connection; ``max_inflight_per_client`` bounds its concurrent calls, so one
    misbehaving client cannot take every slot. ``health_port`` serves only
    grpc.health.v1 in plain text, for probes that cannot speak TLS (Kubernetes)."""

    tls: ServerTlsSettings = ServerTlsSettings()
    auth_tokens: list[SecretStr] = Field(default_factory=list)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_inflight_per_client: int = Field(default=64, ge=1)
    health_port: int = Field(default=0, ge=0)


class GrpcClientSettings(BaseModel):
    """How jetsource's clients (CLI, typed clients) reach the gRPC services:
    ``JETSOURCE_CLIENT__...``. ``tls.enabled`` with no ``ca_file`` trusts the system CAs;
    ``cert_file``/``key_file`` present a client certificate (mutual TLS)."""

    tls: TlsSettings = TlsSettings()
    server_name: str | None = None  # the name the server certificate must carry
    token: SecretStr | None = None
    # Where the CLI sends commands and queries (host:port): ``JETSOURCE_CLIENT__PUBLISHER``
    # and ``JETSOURCE_CLIENT__QUERY``. Unset: the local service (its bind port, on loopback).
    publisher: str | None = None
    query: str | None = None
    # Deadline of each call the CLI makes (``--timeout`` overrides it).
    timeout_s: float = Field(default=10.0, gt=0)
    # How long the CLI waits for a connection before saying the server is not reachable.
    connect_timeout_s: float = Field(default=3.0, gt=0)


class NatsSettings(BaseModel):
    """NATS connection. ``url`` unset means the local devstack server."""

    url: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    tls: TlsSettings = TlsSettings()
    connect_timeout_s: float = 5.0
    name: str | None = None
    # The client PINGs the server this often and gives the connection up (reconnects)
    # after this many unanswered: a hung or half-open server is noticed within about
    # ping_interval_s x (max_outstanding_pings + 1) (nats-py's defaults, 120 s x 2,
    # took 4 to 6 minutes).
    ping_interval_s: float = Field(default=20.0, gt=0)
    max_outstanding_pings: int = Field(default=3, ge=1)


class ValkeySettings(BaseModel):
    """Valkey connection. ``url`` unset means the local devstack server."""

    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    socket_timeout_s: float = 5.0


class GraphSettings(BaseModel):
    """Graph store reached over Bolt (Neo4j 5, or ArcadeDB's Bolt plugin locally).

    ``uri`` unset means the local devstack server.
    """

    uri: str | None = None
    user: str = "neo4j"
    password: SecretStr | None = None
    database: str = "jetsource"
    tls: TlsSettings = TlsSettings()
    connection_timeout_s: float = 10.0


class EventStoreSettings(BaseModel):
    """The event stream. Production: replicas 3 and a server with ``sync_interval: always``."""

    stream: str = "CONTEXT_EVENTS"
    subject_prefix: str = "context.events"
    aggregate_type: str = "context"
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    max_msg_size: int = Field(default=1024 * 1024, gt=0)
    max_bytes: int = -1
    compression: str = Field(default="s2", pattern="^(s2|none)$")
    request_timeout_s: float = Field(default=5.0, gt=0)
    # Transient failures (timeouts, reconnects) are retried with the same event ids.
    retry_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=0.05, ge=0)
    # Conflicts under ExpectedVersion.ANY are retried after a reload.
    any_conflict_retries: int = Field(default=50, ge=0)
    # Last (version, sequence) per aggregate kept in memory to skip a read per append.
    position_cache_size: int = Field(default=100_000, ge=0)
    # Data keys of personal fields (erasure): one bucket for every stream and service
    # of a deployment, so `jetsource erase` reaches all of them.
    keys_bucket: str = Field(default="JETSOURCE_KEYS", pattern="^[A-Za-z0-9_-]{1,64}$")
    # Retention (the domain's StreamPolicy; for the context stream these settings):
    # "forever" keeps everything (deny purge); "age" lets the server drop messages older
    # than max_age_s; "age+compaction" keeps everything live until the archiver has
    # sealed events older than max_age_s into verified archive segments behind a
    # snapshot, then purges them (the only stream kind whose purge is not denied; a
    # stream created with deny purge can never allow it again: restore it into a new one).
    retention: str = Field(default="forever", pattern="^(forever|age|age\\+compaction)$")
    max_age_s: float = Field(default=0.0, ge=0)
    # Roles that may purge whole subjects of this stream (a domain's StreamPolicy names
    # them, e.g. the sessions pruner): the stream is created without deny_purge, and
    # NATS permissions give $JS.API.STREAM.PURGE.<stream> to those roles' users alone.
    purge_roles: tuple[str, ...] = ()
    # Where an event id is unique: "stream" (made by the server, UUIDv7: the stream's
    # Nats-Msg-Id is the id) or "aggregate" (named by callers, unique per aggregate only:
    # the Nats-Msg-Id is ``<id>@<aggregate id>``, so two processes may use one id).
    event_ids: str = Field(default="stream", pattern="^(stream|aggregate)$")

    @model_validator(mode="after")
    def _age_given(self) -> Self:
        if self.retention != "forever" and self.max_age_s <= 0:
            raise ValueError(f"retention {self.retention} needs max_age_s > 0")
        return self


class ArchiveSettings(BaseModel):
    """Where compacted events are archived (``JETSOURCE_ARCHIVE__...``): ``url`` is a
    local directory (a path or ``file:///...``; default ``<devstack home>/archive``)
    or ``s3://bucket/prefix`` (any S3-compatible store: ``endpoint``, ``region`` and
    the usual ``AWS_*`` credentials). Readers (query, rebuilds) read across the
    horizon only when ``read`` is true; else they answer FAILED_PRECONDITION naming it."""

    url: str | None = None
    read: bool = True
    endpoint: str | None = None
    region: str | None = None
    # Events per sealed segment (one object each, compressed and checksummed).
    segment_events: int = Field(default=10_000, ge=1, le=1_000_000)


class SnapshotSettings(BaseModel):
    """The snapshot stream: one subject per aggregate, a bounded history on each.

    Every reader (publisher, query, snapshotter) loads state through it; only the
    snapshotter writes. ``every`` is how many events apart snapshots are taken.
    """

    stream: str = "CONTEXT_SNAPSHOTS"
    subject_prefix: str = "context.snapshots"
    every: int = Field(default=100, ge=1)
    keep: int = Field(default=5, ge=1, le=1000)
    # Larger encoded states are not snapshotted (readers fold from events instead).
    max_msg_size: int = Field(default=8 * 1024 * 1024, gt=0)
    # Decoded snapshot states kept in memory per process (they never change).
    cache_size: int = Field(default=1_000, ge=0)
    replicas: int = Field(default=1, ge=1, le=5)


class DevstackSettings(BaseModel):
    """Where and how `jetsource infra up` runs the embedded servers."""

    home: Path = Path(".jetsource")
    host: str = "127.0.0.1"
    nats_port: int = 4222
    nats_monitor_port: int = 8222
    # JetStream fsync policy. "always" (default) fsyncs every write before the ack, as
    # production does; a duration ("2m", "10s") or "default" (the server's own 2m)
    # relaxes it for benchmarks: a power loss may then lose that much acknowledged data.
    nats_sync_interval: str | None = "always"
    valkey_port: int = 6379
    graph_http_port: int = 2480
    graph_bolt_port: int = 7687
    graph_password: SecretStr = SecretStr("jetsource-dev")
    graph_heap: str = "512m"
    ready_timeout_s: float = 60.0


class OtelSettings(BaseModel):
    """OpenTelemetry traces: ``JETSOURCE_OTEL__...`` (needs the ``otel`` extra).

    ``endpoint`` unset (or the extra not installed) means nothing is traced and events
    carry no ``traceparent`` header. Spans go to an OTLP/gRPC collector, e.g.
    ``http://otel-collector:4317`` (``https://`` for TLS; ``insecure`` overrides what
    the scheme says). The exporter's own ``OTEL_EXPORTER_OTLP_*`` variables (headers,
    certificates) apply as usual."""

    endpoint: str | None = None
    # Defaults to ``jetsource-<service>`` (jetsource-publisher, jetsource-projector, ...).
    service_name: str | None = None
    insecure: bool | None = None
    # Fraction of new traces kept (a trace begun upstream keeps its parent's decision).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)


def env_var(settings: type[BaseSettings], *path: str) -> str:
    """The environment variable that sets the field at ``path`` (field names from the
    settings class down), e.g. ``env_var(IngestSettings, "ingest", "grpc_port")`` is
    ``JETSOURCE_INGEST__GRPC_PORT``: the class's env prefix and nested delimiter. A
    field that does not exist raises KeyError, so a renamed setting is never named
    wrongly in a message."""
    model: type[BaseModel] = settings
    for i, name in enumerate(path):
        if name not in model.model_fields:
            raise KeyError(f"{settings.__name__} has no setting {'.'.join(path[: i + 1])}")
        kind = model.model_fields[name].annotation
        if i < len(path) - 1:
            if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
                raise KeyError(f"{settings.__name__}: {'.'.join(path[: i + 1])} has no fields")
            model = kind
    config = settings.model_config
    prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter") or "__"
    name = prefix + delimiter.join(path)
    return name if config.get("case_sensitive") else name.upper()


class JetsourceSettings(BaseSettings):
    """Base settings: endpoints and credentials every service needs."""

    model_config = SettingsConfigDict(
        env_prefix="JETSOURCE_",
        env_nested_delimiter="__",
        secrets_nested_delimiter="__",
        extra="ignore",
    )

    nats: NatsSettings = NatsSettings()
    valkey: ValkeySettings = ValkeySettings()
    graph: GraphSettings = GraphSettings()
    eventstore: EventStoreSettings = EventStoreSettings()
    snapshots: SnapshotSettings = SnapshotSettings()
    archive: ArchiveSettings = ArchiveSettings()
    devstack: DevstackSettings = DevstackSettings()
    grpc: GrpcServerSettings = GrpcServerSettings()
    client: GrpcClientSettings = GrpcClientSettings()
    otel: OtelSettings = OtelSettings()
    # Service logs (jetsource.core.logging): ``JETSOURCE_LOG_LEVEL``; ``JETSOURCE_LOG_JSON``
    # true (JSON lines) or false (key=value); unset: JSON unless stderr is a terminal.
    log_level: str = Field(default="INFO")
    log_json: bool | None = None
    # The same warning (same logger and text, or the same rate key) is written at most
    # once per window; the next line written says how many were suppressed. 0: all.
    log_repeat_window_s: float = Field(default=10.0, ge=0.0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            NestedSecretsSettingsSource(file_secret_settings),
        )

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read settings from the environment and the secrets directory, if any."""
        secrets = os.environ.get("JETSOURCE_SECRETS_DIR")
        secrets_dir = Path(secrets) if secrets else DEFAULT_SECRETS_DIR
        if secrets_dir.is_dir():
            overrides.setdefault("_secrets_dir", secrets_dir)
        return cls(**overrides)

    # Effective endpoints: an external URL when set, else the local devstack server.
    def nats_url(self) -> str:
        return self.nats.url or f"nats://{self.devstack.host}:{self.devstack.nats_port}"

    def archive_url(self) -> str:
        return self.archive.url or str(self.devstack.home / "archive")

    def valkey_url(self) -> str:
        return self.valkey.url or f"redis://{self.devstack.host}:{self.devstack.valkey_port}/0"

    def graph_uri(self) -> str:
        return self.graph.uri or f"bolt://{self.devstack.host}:{self.devstack.graph_bolt_port}"

    def graph_auth(self) -> tuple[str, str]:
        if self.graph.uri is None:
            return ("root", self.devstack.graph_password.get_secret_value())
        password = self.graph.password.get_secret_value() if self.graph.password else ""
        return (self.graph.user, password)
