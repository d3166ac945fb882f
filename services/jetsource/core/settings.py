"""Settings shared by every jetsource process.

Environment variables use the prefix ``JETSOURCE_`` and ``__`` between nested
names (``JETSOURCE_NATS__URL``). Secrets can also come from files named the same
way in lower case (``jetsource_nats__password``) inside ``JETSOURCE_SECRETS_DIR``
(default ``/run/secrets/jetsource`` when it exists), which is how Kubernetes
mounts a Secret. Each service subclasses :class:`JetsourceSettings`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import ssl
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, BaseModel, Field, SecretStr, model_validator
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from jetsource.core.clock import MAX_AGE_S

DEFAULT_SECRETS_DIR = Path("/run/secrets/jetsource")

# A TCP port a setting names: 0 (where a setting documents it: an ephemeral port, or
# off) up to 65535. A larger one used to pass the settings and fail at bind time, or
# never (a disabled-looking metrics port), with no word of which variable was wrong.
MAX_PORT = 65535
Port = Annotated[int, Field(ge=0, le=MAX_PORT)]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _split_urls(value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",")]
    if not all(urls):
        raise ValueError("an empty URL in the list (a comma-separated list of server URLs)")
    return urls


def _host_and_port(url: str, default_scheme: str | None = None) -> None:
    """Refuse a URL without a host or with a port that is not 1..65535."""
    parts = urlsplit(url if "://" in url or default_scheme is None else f"{default_scheme}://{url}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{redact_url(url)!r}: the port is not a number in 1-{MAX_PORT}") from None
    if port == 0:
        raise ValueError(f"{redact_url(url)!r}: port 0")
    if not parts.hostname:
        raise ValueError(f"{redact_url(url)!r}: no host")


def redact_url(url: str) -> str:
    """The URL(s) (comma separated) without any ``user:password@`` part, fit for a log
    or an error. Everything up to a URL's last ``@`` goes, so a password holding ``/``,
    ``:`` or ``,`` is not shown in part (the list is cut only where a scheme follows)."""
    return ",".join(_redact_one(u) for u in _NEXT_URL.split(url))


_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][\w+.-]*://)")


def _redact_one(url: str) -> str:
    if "@" not in url:
        return url
    if "//" in url:
        return re.sub(r"//.*@", "//***@", url, count=1, flags=re.DOTALL)
    return "***@" + url.rsplit("@", 1)[1]  # host:port with credentials, no scheme


def _scheme(url: str, allowed: tuple[str, ...]) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in allowed:
        schemes = ", ".join(s + "://" for s in allowed)
        raise ValueError(f"{redact_url(url)!r}: the scheme must be one of {schemes}")
    return scheme


def check_nats_url(value: str | None) -> str | None:
    """``nats://``, ``tls://``, ``ws://`` or ``wss://`` URLs (or ``host:port``), comma
    separated, not mixing websocket and plain ones (the client refuses that too)."""
    if value is None:
        return None
    kinds = set()
    for url in _split_urls(value):
        scheme = _scheme(url, ("nats", "tls", "ws", "wss")) if "://" in url else "nats"
        kinds.add(scheme in ("ws", "wss"))
        _host_and_port(url, "nats")
    if len(kinds) > 1:
        raise ValueError("websocket (ws://, wss://) and plain (nats://, tls://) URLs mixed")
    return value


def check_valkey_url(value: str | None) -> str | None:
    if value is None:
        return None
    scheme = _scheme(value, ("redis", "rediss", "valkey", "valkeys", "unix"))
    if scheme != "unix":
        _host_and_port(value)
        db = urlsplit(value).path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{redact_url(value)!r}: the database {db!r} is not a number")
    return value


def check_graph_uri(value: str | None) -> str | None:
    """A Bolt URI without ``user:password@``: the driver refuses one, with the URI
    whole in its message (the password was in three log lines and a traceback of the
    projector, the query service's reads ended INTERNAL); credentials go in
    ``JETSOURCE_GRAPH__USER`` / ``__PASSWORD``."""
    if value is None:
        return None
    _scheme(value, ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"))
    _host_and_port(value)
    if "@" in urlsplit(value).netloc:
        raise ValueError(
            f"{redact_url(value)!r}: no user:password@ in the graph URI (the driver "
            "refuses it): set JETSOURCE_GRAPH__USER and JETSOURCE_GRAPH__PASSWORD"
        )
    return value


def check_log_level(value: str) -> str:
    level = value.strip().upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not a level: one of {', '.join(LOG_LEVELS).lower()}")
    return level


def check_stream_name(value: str) -> str:
    """A JetStream stream's name: what the server accepts (no whitespace, ``.``, ``*``,
    ``>``, path separators), 1-255 characters. A name it refuses used to pass the
    settings and end a service with a traceback from its first request."""
    if not 1 <= len(value) <= 255 or re.search(r"[\s.*>/\\]", value):
        raise ValueError(
            f"{value!r} is not a stream name: 1-255 characters, no whitespace, '.', '*', "
            "'>', '/' or '\\'"
        )
    return value


def check_bucket_name(value: str) -> str:
    """A NATS KV bucket's name: letters, digits, ``-`` and ``_``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        raise ValueError(f"{value!r} is not a bucket name: 1-64 letters, digits, '-' or '_'")
    return value


def check_subject_prefix(value: str) -> str:
    """Literal subject tokens joined by ``.``: none empty, no wildcard, no whitespace."""
    tokens = value.split(".")
    if not value or any(not t or re.search(r"[\s*>]", t) for t in tokens):
        raise ValueError(
            f"{value!r} is not a subject prefix: tokens joined by '.', none empty, "
            "no whitespace, '*' or '>'"
        )
    return value


def check_otel_endpoint(value: str | None) -> str | None:
    """An OTLP/gRPC collector: ``http://host:port``, ``https://host:port`` or
    ``host:port``, a host, a port in 1-65535 when given, no ``user:password@`` (the
    exporter cannot use it: credentials go in ``OTEL_EXPORTER_OTLP_HEADERS``). Any
    string used to pass: the service started and every export failed in its log."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None  # set but empty: tracing off, as unset
    if re.search(r"\s", text):
        raise ValueError(f"{redact_url(text)!r}: whitespace in the URL")
    if "://" in text:
        _scheme(text, ("http", "https"))
    _host_and_port(text, "http")
    if "@" in urlsplit(text if "://" in text else f"http://{text}").netloc:
        raise ValueError(
            f"{redact_url(text)!r}: no user:password@ in the collector's URL "
            "(put credentials in OTEL_EXPORTER_OTLP_HEADERS)"
        )
    return text


def check_archive_url(value: str | None) -> str | None:
    """Where the archive is: a folder (a path, or ``file:///ABSOLUTE/PATH``) or
    ``s3://BUCKET/prefix``. Checked when settings load (it was checked when the archive
    was first opened: the query service and the projector ended with a traceback, a CLI
    command only once connected); the archive's opener asks the same question."""
    if value is None or not value.strip():
        return None  # unset or empty: the default folder
    if problem := archive_url_problem(value):
        raise ValueError(problem)
    return value


def archive_url_problem(url: str) -> str | None:
    """What is wrong with an archive URL, its credentials masked, or None."""
    parts = urlsplit(url)
    shown = repr(redact_url(url))
    if parts.scheme == "s3" and not parts.netloc:
        return f"{shown} names no bucket (s3://BUCKET/prefix)"
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path):
        return (
            f"{shown}: a file URL is file:///ABSOLUTE/PATH (three slashes; "
            f"{parts.hostname or 'nothing'} is no folder), or give the path itself"
        )
    if parts.scheme not in ("", "file", "s3"):
        return f"{shown}: unknown scheme {parts.scheme!r} (a folder, file:/// or s3://)"
    return None


def check_bearer_token(value: SecretStr) -> SecretStr:
    """A bearer token a client can send and a server can match: printable ASCII (what
    an HTTP/2 header value may hold: a client's gRPC library refused a token with a
    carriage return or a non-ASCII letter in its own code, and the CLI called that
    INTERNAL "a bug"), neither beginning nor ending with a space (servers strip what
    they are sent: such a token on a server matched no client, and all were refused).
    The token itself is never part of the message."""
    token = value.get_secret_value()
    if not token:
        raise ValueError(
            "an empty token (an unset variable?); '[]' asks no token, and a client "
            "leaves the setting unset to send none"
        )
    if token != token.strip():
        raise ValueError("a token begins or ends with whitespace (a line end copied in?)")
    if any(not " " <= c <= "~" for c in token):
        raise ValueError(
            "a token holds a character other than printable ASCII (a control character "
            "or non-ASCII letter cannot be sent in an authorization header)"
        )
    return value


def check_client_token(value: SecretStr | None) -> SecretStr | None:
    """The token a client sends: unset or empty sends none, else as
    :func:`check_bearer_token`."""
    if value is None or not value.get_secret_value():
        return value
    return check_bearer_token(value)


def check_nkey_seed_file(value: Path | None) -> Path | None:
    """A file holding a NATS user's nkey seed (``SU...``, one line). Checked when
    settings load, never shown: a file holding anything else ended a service with a
    traceback (``nkeys.ErrInvalidSeed``, exit 1) and the CLI with INTERNAL "a bug".
    A path that names no file is left to :func:`missing_files`."""
    if value is None or not value.is_file():
        return value
    import nkeys

    try:
        nkeys.from_seed(bytearray(value.read_bytes().strip()))
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except Exception:
        raise ValueError(
            "holds no nkey seed (one line, SU... as `nsc` or `nk -gen user` writes it)"
        ) from None
    return value


_CREDS_JWT = re.compile(rb"-----BEGIN NATS USER JWT-----\s*\n\s*(\S+)")
_CREDS_SEED = re.compile(rb"-----BEGIN USER NKEY SEED-----\s*\n\s*(\S+)")


def check_creds_file(value: Path | None) -> Path | None:
    """A NATS credentials file: a user JWT and its nkey seed, as ``nsc generate creds``
    writes them. Checked when settings load, never shown: nats-py reading a file without
    the JWT's block looped for ever on its end, one without a valid seed raised
    ErrInvalidSeed (a traceback, exit 1)."""
    if value is None or not value.is_file():
        return value
    import nkeys

    try:
        text = value.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    jwt, seed = _CREDS_JWT.search(text), _CREDS_SEED.search(text)
    if jwt is None or seed is None:
        raise ValueError(
            "is not a NATS credentials file (a -----BEGIN NATS USER JWT----- block and a "
            "-----BEGIN USER NKEY SEED----- block, as `nsc generate creds` writes)"
        )
    try:
        nkeys.from_seed(bytearray(seed.group(1)))
    except Exception:
        raise ValueError("its USER NKEY SEED block holds no valid nkey seed") from None
    return value


StreamName = Annotated[str, AfterValidator(check_stream_name)]
NkeySeedFile = Annotated[Path | None, AfterValidator(check_nkey_seed_file)]
CredsFile = Annotated[Path | None, AfterValidator(check_creds_file)]
BearerToken = Annotated[SecretStr, AfterValidator(check_bearer_token)]
ClientToken = Annotated[SecretStr | None, AfterValidator(check_client_token)]
BucketName = Annotated[str, AfterValidator(check_bucket_name)]
SubjectPrefix = Annotated[str, AfterValidator(check_subject_prefix)]
NatsUrl = Annotated[str | None, AfterValidator(check_nats_url)]
ValkeyUrl = Annotated[str | None, AfterValidator(check_valkey_url)]
GraphUri = Annotated[str | None, AfterValidator(check_graph_uri)]
OtelEndpoint = Annotated[str | None, AfterValidator(check_otel_endpoint)]


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
    auth_tokens: list[BearerToken] = Field(default_factory=list)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_inflight_per_client: int = Field(default=64, ge=1)
    health_port: Port = 0


class GrpcClientSettings(BaseModel):
    """How jetsource's clients (CLI, typed clients) reach the gRPC services:
    ``JETSOURCE_CLIENT__...``. ``tls.enabled`` with no ``ca_file`` trusts the system CAs;
    ``cert_file``/``key_file`` present a client certificate (mutual TLS)."""

    tls: TlsSettings = TlsSettings()
    server_name: str | None = None  # the name the server certificate must carry
    token: ClientToken = None
    # Where the CLI sends commands and queries (host:port): ``JETSOURCE_CLIENT__PUBLISHER``
    # and ``JETSOURCE_CLIENT__QUERY``. Unset: the local service (its bind port, on loopback).
    publisher: str | None = None
    query: str | None = None
    # Deadline of each call the CLI makes (``--timeout`` overrides it).
    timeout_s: float = Field(default=10.0, gt=0)
    # How long the CLI waits for a connection before saying the server is not reachable.
    connect_timeout_s: float = Field(default=3.0, gt=0)


class NatsSettings(BaseModel):
    """NATS connection. ``url`` unset means the local devstack server; else one URL or
    a comma-separated list of a cluster's (``nats://``, ``tls://``, ``ws://``,
    ``wss://``, or ``host:port``), credentials in it allowed (never logged)."""

    url: NatsUrl = None
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    creds_file: CredsFile = None
    nkey_seed_file: NkeySeedFile = None
    tls: TlsSettings = TlsSettings()
    connect_timeout_s: float = Field(default=5.0, gt=0)
    name: str | None = None
    # The client PINGs the server this often and gives the connection up (reconnects)
    # after this many unanswered: a hung or half-open server is noticed within about
    # ping_interval_s x (max_outstanding_pings + 1) (nats-py's defaults, 120 s x 2,
    # took 4 to 6 minutes).
    ping_interval_s: float = Field(default=20.0, gt=0)
    max_outstanding_pings: int = Field(default=3, ge=1)


class ValkeySettings(BaseModel):
    """Valkey connection. ``url`` unset means the local devstack server."""

    url: ValkeyUrl = None
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsSettings = TlsSettings()
    socket_timeout_s: float = Field(default=5.0, gt=0)


class GraphSettings(BaseModel):
    """Graph store reached over Bolt (Neo4j 5, or ArcadeDB's Bolt plugin locally).

    ``uri`` unset means the local devstack server.
    """

    uri: GraphUri = None
    user: str = "neo4j"
    password: SecretStr | None = None
    database: str = "jetsource"
    tls: TlsSettings = TlsSettings()
    connection_timeout_s: float = Field(default=10.0, gt=0)


class EventStoreSettings(BaseModel):
    """The event stream. Production: replicas 3 and a server with ``sync_interval: always``."""

    stream: StreamName = "CONTEXT_EVENTS"
    subject_prefix: SubjectPrefix = "context.events"
    aggregate_type: str = "context"
    replicas: int = Field(default=1, ge=1, le=5)
    duplicate_window_s: float = Field(default=120.0, gt=0)
    # JetStream keeps it as a 32-bit number: a larger one was a JSON error at start.
    max_msg_size: int = Field(default=1024 * 1024, gt=0, le=2**31 - 1)
    max_bytes: int = Field(default=-1, ge=-1)  # -1: no limit
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
    max_age_s: float = Field(default=0.0, ge=0, le=MAX_AGE_S)  # 292 years: int64 ns
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

    url: Annotated[str | None, AfterValidator(check_archive_url)] = None
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

    stream: StreamName = "CONTEXT_SNAPSHOTS"
    subject_prefix: SubjectPrefix = "context.snapshots"
    every: int = Field(default=100, ge=1)
    keep: int = Field(default=5, ge=1, le=1000)
    # Larger encoded states are not snapshotted (readers fold from events instead).
    max_msg_size: int = Field(default=8 * 1024 * 1024, gt=0, le=2**31 - 1)
    # Decoded snapshot states kept in memory per process (they never change).
    cache_size: int = Field(default=1_000, ge=0)
    replicas: int = Field(default=1, ge=1, le=5)


class DevstackSettings(BaseModel):
    """Where and how `jetsource infra up` runs the embedded servers."""

    home: Path = Path(".jetsource")
    host: str = "127.0.0.1"
    nats_port: int = Field(default=4222, ge=1, le=MAX_PORT)
    nats_monitor_port: int = Field(default=8222, ge=1, le=MAX_PORT)
    # JetStream fsync policy. "always" (default) fsyncs every write before the ack, as
    # production does; a duration ("2m", "10s") or "default" (the server's own 2m)
    # relaxes it for benchmarks: a power loss may then lose that much acknowledged data.
    nats_sync_interval: str | None = "always"
    valkey_port: int = Field(default=6379, ge=1, le=MAX_PORT)
    graph_http_port: int = Field(default=2480, ge=1, le=MAX_PORT)
    graph_bolt_port: int = Field(default=7687, ge=1, le=MAX_PORT)
    graph_password: SecretStr = SecretStr("jetsource-dev")
    graph_heap: str = "512m"
    ready_timeout_s: float = Field(default=60.0, gt=0)


class OtelSettings(BaseModel):
    """OpenTelemetry traces: ``JETSOURCE_OTEL__...`` (needs the ``otel`` extra).

    ``endpoint`` unset (or the extra not installed) means nothing is traced and events
    carry no ``traceparent`` header. Spans go to an OTLP/gRPC collector, e.g.
    ``http://otel-collector:4317`` (``https://`` for TLS; ``insecure`` overrides what
    the scheme says). The exporter's own ``OTEL_EXPORTER_OTLP_*`` variables (headers,
    certificates) apply as usual."""

    endpoint: OtelEndpoint = None
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
    log_level: Annotated[str, AfterValidator(check_log_level)] = "INFO"
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
        try:
            return cls(**overrides)
        except SettingsError as exc:
            # A list or mapping setting whose value is not JSON: pydantic-settings says
            # only which section ("error parsing value for field "grpc""), which the
            # CLI took for a bug and a service printed as a traceback.
            raise _json_errors(cls, secrets_dir, exc) from exc

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


# --- What a process says about its settings ------------------------------------------

# Top-level names of settings classes other than the one a process loads (each
# service's own section, the CLI's), and variables read outside any settings class:
# another service's variable in a shared environment is no typo.
# tests/unit/test_settings_checks.py keeps this list equal to the settings classes.
OTHER_NAMES = frozenset(
    {
        "publisher",
        "projector",
        "snapshotter",
        "query",
        "observer",
        "process_query",
        "ingest",
        "omni",
        "sessions",
        # read directly: JetsourceSettings.load, the CLI
        "secrets_dir",
        "debug",
        "output",
        "admin_connect_timeout_s",
        "admin_refused_wait_s",
        "progress_every_s",
        "tui_screenshots",
    }
)
# Whole variables read outside the settings classes (the CLI's other servers), and the
# prefixes of the test suite's and benchmarks' own variables.
OTHER_VARIABLES = frozenset({"JETSOURCE_CLIENT__OBSERVER", "JETSOURCE_CLIENT__PROCESS_QUERY"})
OTHER_PREFIXES = ("JETSOURCE_TEST_", "JETSOURCE_BENCH_")
# Words in a variable's name that mark its value as a secret (never echoed).
_SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "INSTANCES", "SEED")


def shown_input(name: str, error: Any) -> str:
    """How a refused value of the variable ``name`` is shown in an error: ``='...'``
    (credentials in a URL masked, cut at 200 characters), or nothing for a secret, a
    list or a mapping. The services' and the CLI's settings errors both show it so."""
    if any(word in name for word in _SECRET_WORDS) or "input" not in error:
        return ""
    if isinstance(error["input"], dict | list):
        return ""
    text = redact_url(str(error["input"]))
    return "=" + repr(text if len(text) <= 200 else text[:200] + "...")


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (
        typing.Union,
        typing.Annotated,
    ):
        for arg in typing.get_args(annotation):
            found = _nested_model(arg)
            if found is not None:
                return found
    return None


def _prefix(settings: type[BaseSettings]) -> tuple[str, str]:
    config = settings.model_config
    return (config.get("env_prefix") or "").upper(), config.get("env_nested_delimiter") or "__"


def _variable(settings: type[BaseSettings], loc: Iterable[int | str]) -> str:
    """The environment variable of a validation error's location: the field names down
    from the settings class while they are fields (a list index or dict key after them
    is shown in brackets)."""
    prefix, delimiter = _prefix(settings)
    model: type[BaseModel] | None = settings
    names: list[str] = []
    rest: list[str] = []
    for part in loc:
        if not rest and model is not None and isinstance(part, str) and part in model.model_fields:
            names.append(part)
            model = _nested_model(model.model_fields[part].annotation)
        else:
            rest.append(str(part))
    name = prefix + delimiter.join(names).upper() if names else f"{prefix}* ({settings.__name__})"
    return name + "".join(f"[{r}]" for r in rest)


def settings_error(exc: pydantic.ValidationError, settings: type[BaseSettings]) -> str:
    """One line naming each setting that did not validate by its environment variable:
    ``bad setting: JETSOURCE_PUBLISHER__GRPC_PORT='abc': Input should be a valid
    integer, ...``; secret values are not echoed, credentials in URLs are masked."""
    parts = []
    for error in exc.errors():
        name = _variable(settings, error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}{shown_input(name, error)}: {message}")
    return "bad setting: " + "; ".join(parts)


def _walk(model: BaseModel, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _walk(value, (*path, name))
        else:
            yield (*path, name), value


def missing_files(settings: JetsourceSettings) -> list[str]:
    """Each file setting (``..._FILE``: TLS certificates and keys, NATS credentials)
    that names something that is not a readable file, by its variable."""
    problems = []
    for path, value in _walk(settings, ()):
        if not (path[-1].endswith("_file") and isinstance(value, Path)):
            continue
        name = env_var(type(settings), *path)
        if not value.is_file():
            why = "is a directory" if value.is_dir() else "does not exist"
            problems.append(f"{name}={str(value)!r}: {why}")
        elif not os.access(value, os.R_OK):
            problems.append(f"{name}={str(value)!r}: not readable by this process")
    return problems


def unknown_variables(settings: type[BaseSettings], environ: Mapping[str, str]) -> list[str]:
    """The ``JETSOURCE_*`` variables of ``environ`` that set nothing: a misspelt name is
    otherwise ignored and its default used in silence. Names of other services'
    settings (:data:`OTHER_NAMES`) pass; within a section this class has, every name is
    checked. Each line suggests the closest real name."""
    prefix, delimiter = _prefix(settings)
    lines = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not prefix or not upper.startswith(prefix) or upper in OTHER_VARIABLES:
            continue
        if upper.startswith(OTHER_PREFIXES):
            continue
        parts = variable[len(prefix) :].lower().split(delimiter.lower())
        model: type[BaseModel] | None = settings
        for depth, part in enumerate(parts):
            if model is None:
                break  # a dict or list setting's items: not names
            fields = model.model_fields
            if part not in fields:
                if depth == 0 and part in OTHER_NAMES:
                    break
                known = list(fields) + (sorted(OTHER_NAMES) if depth == 0 else [])
                close = difflib.get_close_matches(part, known, n=1, cutoff=0.6)
                hint = ""
                if close:
                    hint = (
                        " (did you mean "
                        + prefix
                        + delimiter.join([*parts[:depth], close[0]]).upper()
                        + (delimiter + "..." if depth < len(parts) - 1 else "")
                        + "?)"
                    )
                lines.append(f"{variable} is not a setting and is ignored{hint}")
                break
            model = _nested_model(fields[part].annotation)
    return lines


def secrets_dir() -> Path:
    """Where the settings read secret files: ``JETSOURCE_SECRETS_DIR``, else
    ``/run/secrets/jetsource``."""
    secrets = os.environ.get("JETSOURCE_SECRETS_DIR")
    return Path(secrets) if secrets else DEFAULT_SECRETS_DIR


def unknown_secret_files(settings: type[BaseSettings], directory: Path) -> list[str]:
    """The files of the secrets directory named like a setting (``jetsource_...``) that
    set nothing, as :func:`unknown_variables` says of variables: a misspelt file
    (``jetsource_grpc_auth_tokens``, one ``_``) was ignored in silence, so a service
    ran asking no bearer token. Other files (a certificate a ``..._FILE`` setting
    names, the ``..data`` links of a Kubernetes Secret volume) are no settings."""
    if not directory.is_dir():
        return []
    prefix, _ = _prefix(settings)
    files = {
        file.name.upper(): file.name
        for file in sorted(directory.iterdir())
        if file.name.upper().startswith(prefix) and file.is_file()
    }
    lines = []
    for line in unknown_variables(settings, dict.fromkeys(files, "")):
        variable, rest = line.split(" ", 1)
        rest = re.sub(r"did you mean (\S+)\?", lambda m: f"did you mean {m[1].lower()}?", rest)
        if "did you mean" not in rest:
            # The usual slip: one '_' where the nesting takes two.
            name = files[variable]
            for i in [m.start() for m in re.finditer(r"(?<!_)_(?!_)", name)][1:]:
                doubled = name[:i] + "_" + name[i:]
                if not unknown_variables(settings, {doubled.upper(): ""}):
                    rest += f" (did you mean {doubled}?)"
                    break
        lines.append(f"secrets file {directory / files[variable]} {rest}")
    return lines


def _complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads a field of this type as JSON (lists, mappings)."""
    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple, set, frozenset):
        return True
    if isinstance(annotation, types.UnionType) or origin in (typing.Union, typing.Annotated):
        return any(_complex(arg) for arg in typing.get_args(annotation))
    return annotation in (list, dict, tuple, set, frozenset)


def _json_errors(
    settings: type[BaseSettings], secrets_dir: Path, exc: SettingsError
) -> pydantic.ValidationError | SettingsError:
    """The settings of ``settings`` read as JSON from the environment or the secrets
    directory whose text is not JSON, as a ValidationError naming each by its field
    path (so by its variable); ``exc`` itself when none is found."""
    prefix, delimiter = _prefix(settings)
    sources = {k.upper(): v for k, v in os.environ.items()}
    if secrets_dir.is_dir():
        for file in secrets_dir.iterdir():
            if file.is_file() and file.name.upper() not in sources:
                try:
                    sources[file.name.upper()] = file.read_text()
                except OSError:
                    continue
    errors: list[InitErrorDetails] = []
    for name, text in sorted(sources.items()):
        if not name.startswith(prefix):
            continue
        path = name[len(prefix) :].lower().split(delimiter.lower())
        model: type[BaseModel] | None = settings
        field = None
        for part in path:
            if model is None or part not in model.model_fields:
                field = None
                break
            field = model.model_fields[part]
            model = _nested_model(field.annotation)
        if field is None or not _complex(field.annotation):
            continue
        try:
            json.loads(text)
        except ValueError as bad:
            errors.append(
                {
                    "type": "json_invalid",
                    "loc": tuple(path),
                    "input": text,
                    "ctx": {"error": str(bad)},
                }
            )
    if not errors:
        return exc
    return pydantic.ValidationError.from_exception_data(settings.__name__, errors)


def tls_problems(settings: JetsourceSettings) -> list[str]:
    """Each TLS block whose files are not what they must be, by its variables: a
    server certificate without its key (or a key, or a client CA, without the
    certificate: TLS stayed off in silence), a client key without its certificate, and
    files that do not load as PEM (a CA file, a certificate with its key). They failed
    at the first connection or listen, as a traceback (exit 1), or not at all."""
    problems = []
    for path, block in _blocks(settings, ()):
        name = env_var(type(settings), *path)
        if isinstance(block, ServerTlsSettings):
            if block.cert_file is None and (block.key_file or block.client_ca_file):
                given = "KEY_FILE" if block.key_file else "CLIENT_CA_FILE"
                problems.append(f"{name}__{given} is set without {name}__CERT_FILE")
                continue
            if block.cert_file is not None and block.key_file is None:
                problems.append(f"{name}__CERT_FILE is set without {name}__KEY_FILE")
                continue
            ca = block.client_ca_file
            cert, key = block.cert_file, block.key_file
        elif isinstance(block, TlsSettings):
            if block.key_file is not None and block.cert_file is None:
                problems.append(f"{name}__KEY_FILE is set without {name}__CERT_FILE")
                continue
            ca, cert, key = block.ca_file, block.cert_file, block.key_file or block.cert_file
        else:
            continue
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca is not None and ca.is_file():
            try:
                context.load_verify_locations(cafile=str(ca))
            except (ssl.SSLError, OSError, ValueError) as exc:
                what = "CLIENT_CA_FILE" if isinstance(block, ServerTlsSettings) else "CA_FILE"
                problems.append(f"{name}__{what}={str(ca)!r}: not PEM certificates ({exc})")
        if cert is not None and key is not None and cert.is_file() and key.is_file():
            try:
                context.load_cert_chain(str(cert), str(key))
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(
                    f"{name}__CERT_FILE={str(cert)!r} with {name}__KEY_FILE={str(key)!r}: "
                    f"not a PEM certificate and its private key ({exc})"
                )
            else:
                if why := _out_of_date(cert):
                    problems.append(f"{name}__CERT_FILE={str(cert)!r}: {why}")
    return problems


def client_tls_problems(client: GrpcClientSettings) -> list[str]:
    """What :func:`missing_files` and :func:`tls_problems` say of a gRPC client's TLS
    files (``JETSOURCE_CLIENT__TLS__...``), for the CLI, which checks them before it
    connects: a CA file that was not there was INTERNAL "a bug" (FileNotFoundError), one
    that was no PEM, or a key not the certificate's, "not reachable"."""
    if not client.tls.active:
        return []
    holder = JetsourceSettings.model_construct(client=client)
    problems = [p for p in missing_files(holder) if p.startswith("JETSOURCE_CLIENT__")]
    return problems or [p for p in tls_problems(holder) if p.startswith("JETSOURCE_CLIENT__")]


def _out_of_date(cert: Path) -> str | None:
    """Why the certificate (the first of the file) cannot be used now: expired, or not
    valid yet. Taken as it was, a server with an expired certificate served and every
    client's handshake failed ("not reachable"); a client's was refused by its server."""
    from datetime import UTC, datetime

    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return None  # loaded by ssl above: a form this check does not read
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        return f"the certificate expired {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
    if leaf.not_valid_before_utc > now:
        return (
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S}"
            " UTC (this host's clock, or a certificate issued ahead)"
        )
    return None


def _blocks(model: BaseModel, path: tuple[str, ...]) -> Iterable[tuple[tuple[str, ...], Any]]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, TlsSettings | ServerTlsSettings):
            yield (*path, name), value
        elif isinstance(value, BaseModel):
            yield from _blocks(value, (*path, name))
