"""What a service says about its settings before it connects to anything: each value
that does not validate by its environment variable (ports, timeouts, log level, server
URLs), file settings naming no file, and ``JETSOURCE_*`` variables that set nothing
(jetsource.core.settings: settings_error, missing_files, unknown_variables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic_settings import BaseSettings

from jetsource.core.settings import (
    OTHER_NAMES,
    GraphSettings,
    GrpcServerSettings,
    JetsourceSettings,
    NatsSettings,
    ServerTlsSettings,
    TlsSettings,
    ValkeySettings,
    missing_files,
    settings_error,
    tls_problems,
    unknown_variables,
)
from jetsource.domains.omni.settings import OmniDomainSettings
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.ingest.settings import IngestSettings
from jetsource.observer.settings import ObserverSettings
from jetsource.processquery.settings import ProcessQuerySettings
from jetsource.projection.settings import ProjectorSettings
from jetsource.publisher.settings import PublisherSettings
from jetsource.query.settings import QuerySettings
from jetsource.snapshotter.settings import SnapshotterSettings

SERVICES: list[type[JetsourceSettings]] = [
    PublisherSettings,
    ProjectorSettings,
    SnapshotterSettings,
    QuerySettings,
    ObserverSettings,
    ProcessQuerySettings,
    IngestSettings,
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JETSOURCE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", "/nonexistent-secrets")


def _error(settings: type[BaseSettings], monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError) as caught:
        settings.load()  # type: ignore[attr-defined]
    return settings_error(caught.value, settings)


# Every port setting of every service: above 65535 (and below 0) is refused by name.
PORTS = [
    (PublisherSettings, "JETSOURCE_PUBLISHER__GRPC_PORT"),
    (PublisherSettings, "JETSOURCE_PUBLISHER__METRICS_PORT"),
    (ProjectorSettings, "JETSOURCE_PROJECTOR__HTTP_PORT"),
    (SnapshotterSettings, "JETSOURCE_SNAPSHOTTER__HTTP_PORT"),
    (QuerySettings, "JETSOURCE_QUERY__GRPC_PORT"),
    (QuerySettings, "JETSOURCE_QUERY__METRICS_PORT"),
    (ObserverSettings, "JETSOURCE_OBSERVER__GRPC_PORT"),
    (ObserverSettings, "JETSOURCE_OBSERVER__METRICS_PORT"),
    (ProcessQuerySettings, "JETSOURCE_PROCESS_QUERY__GRPC_PORT"),
    (ProcessQuerySettings, "JETSOURCE_PROCESS_QUERY__METRICS_PORT"),
    (IngestSettings, "JETSOURCE_INGEST__HTTP_PORT"),
    (IngestSettings, "JETSOURCE_INGEST__GRPC_PORT"),
    (PublisherSettings, "JETSOURCE_GRPC__HEALTH_PORT"),
    (PublisherSettings, "JETSOURCE_DEVSTACK__NATS_PORT"),
    (PublisherSettings, "JETSOURCE_DEVSTACK__VALKEY_PORT"),
    (PublisherSettings, "JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT"),
]


@pytest.mark.parametrize(("settings", "variable"), PORTS)
@pytest.mark.parametrize("value", ["70000", "65536", "-1"])
def test_a_port_outside_0_to_65535_is_refused_by_its_variable(
    settings: type[JetsourceSettings],
    variable: str,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(settings, monkeypatch, **{variable: value})
    assert message.startswith(f"bad setting: {variable}={value!r}: ")


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("JETSOURCE_NATS__CONNECT_TIMEOUT_S", "-1", "greater than 0"),
        ("JETSOURCE_NATS__CONNECT_TIMEOUT_S", "0", "greater than 0"),
        ("JETSOURCE_VALKEY__SOCKET_TIMEOUT_S", "-5", "greater than 0"),
        ("JETSOURCE_GRAPH__CONNECTION_TIMEOUT_S", "0", "greater than 0"),
        ("JETSOURCE_DEVSTACK__READY_TIMEOUT_S", "-1", "greater than 0"),
        ("JETSOURCE_LOG_LEVEL", "verbose", "not a level"),
        ("JETSOURCE_LOG_LEVEL", "", "not a level"),
        ("JETSOURCE_NATS__URL", "http://nats:4222", "scheme must be one of nats://"),
        ("JETSOURCE_NATS__URL", "nats://nats:abc", "port is not a number"),
        ("JETSOURCE_NATS__URL", "nats://nats:99999", "port is not a number"),
        ("JETSOURCE_NATS__URL", "nats://:4222", "no host"),
        ("JETSOURCE_NATS__URL", "", "an empty URL"),
        ("JETSOURCE_NATS__URL", "nats://a:4222,,nats://b:4222", "an empty URL"),
        ("JETSOURCE_NATS__URL", "nats://a:4222,wss://b", "websocket"),
        ("JETSOURCE_VALKEY__URL", "http://valkey:6379", "scheme must be one of redis://"),
        ("JETSOURCE_VALKEY__URL", "redis://valkey:6379/x", "database 'x' is not a number"),
        ("JETSOURCE_VALKEY__URL", "redis://valkey:port/0", "port is not a number"),
        ("JETSOURCE_GRAPH__URI", "http://graph:7474", "scheme must be one of bolt://"),
        ("JETSOURCE_GRAPH__URI", "bolt://graph:x", "port is not a number"),
    ],
)
@pytest.mark.parametrize("settings", SERVICES)
def test_a_value_that_cannot_work_is_refused_by_its_variable(
    settings: type[JetsourceSettings],
    variable: str,
    value: str,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(settings, monkeypatch, **{variable: value})
    assert message.startswith(f"bad setting: {variable}={value!r}: "), message
    assert why in message


def test_credentials_in_a_url_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(
        PublisherSettings, monkeypatch, JETSOURCE_NATS__URL="nats://ann:s3cret@nats:port"
    )
    assert "s3cret" not in message and "ann" not in message
    assert "JETSOURCE_NATS__URL='nats://***@nats:port'" in message


def test_a_secret_that_does_not_parse_is_named_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(PublisherSettings, monkeypatch, JETSOURCE_GRPC__AUTH_TOKENS="not-json-x1")
    assert "JETSOURCE_GRPC__AUTH_TOKENS" in message and "not-json-x1" not in message


def test_a_list_item_is_named_by_its_variable_and_index(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(ProjectorSettings, monkeypatch, JETSOURCE_PROJECTOR__BACKOFF_S='[1, "x"]')
    assert message.startswith("bad setting: JETSOURCE_PROJECTOR__BACKOFF_S[1]='x': ")


@pytest.mark.parametrize(
    "value",
    [
        "nats://nats:4222",
        "tls://a:4222, tls://b:4222,tls://c",
        "nats://user:pass@nats:4222",
        "nats-0.nats:4222",
        "localhost",
        "wss://nats.example/ws",
    ],
)
def test_good_nats_urls_pass_as_written(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETSOURCE_NATS__URL", value)
    assert PublisherSettings.load().nats_url() == value


def test_log_levels_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    for given, level in [("debug", "DEBUG"), ("Warn", "WARNING"), (" error ", "ERROR")]:
        monkeypatch.setenv("JETSOURCE_LOG_LEVEL", given)
        assert JetsourceSettings.load().log_level == level


def test_file_settings_that_name_no_readable_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    settings = PublisherSettings(
        nats=NatsSettings(
            tls=TlsSettings(ca_file=ca, cert_file=tmp_path / "missing.pem"), creds_file=tmp_path
        ),
        grpc=GrpcServerSettings(
            tls=ServerTlsSettings(cert_file=ca, key_file=tmp_path / "nokey.pem")
        ),
    )
    problems = missing_files(settings)
    assert problems == [
        f"JETSOURCE_NATS__CREDS_FILE='{tmp_path}': is a directory",
        f"JETSOURCE_NATS__TLS__CERT_FILE='{tmp_path / 'missing.pem'}': does not exist",
        f"JETSOURCE_GRPC__TLS__KEY_FILE='{tmp_path / 'nokey.pem'}': does not exist",
    ]
    assert missing_files(PublisherSettings()) == []


def test_misspelt_variables_are_named_with_the_closest_setting() -> None:
    env = {
        "JETSOURCE_PUBLISHER__GRPC_PROT": "1",
        "JETSOURCE_NATS__URLS": "nats://x",
        "JETSOURCE_LOG_LEVL": "debug",
        "JETSOURCE_PUBLISHR__GRPC_PORT": "1",
        "JETSOURCE_NATS__TLS__CAFILE": "/ca.pem",
        # real settings, of this service or another: no word
        "JETSOURCE_PUBLISHER__GRPC_PORT": "1",
        "JETSOURCE_NATS__TLS__CA_FILE": "/ca.pem",
        "JETSOURCE_QUERY__GRPC_PORT": "1",
        "JETSOURCE_SNAPSHOTTER__HTTP_PORT": "1",
        "JETSOURCE_SECRETS_DIR": "/s",
        "JETSOURCE_OUTPUT": "json",
        "JETSOURCE_CLIENT__OBSERVER": "127.0.0.1:50053",  # read by the CLI itself
        "JETSOURCE_TEST_NATS_URL": "nats://x",  # the test suite's own
        "PATH": "/bin",
    }
    assert unknown_variables(PublisherSettings, env) == [
        "JETSOURCE_LOG_LEVL is not a setting and is ignored (did you mean JETSOURCE_LOG_LEVEL?)",
        "JETSOURCE_NATS__TLS__CAFILE is not a setting and is ignored "
        "(did you mean JETSOURCE_NATS__TLS__CA_FILE?)",
        "JETSOURCE_NATS__URLS is not a setting and is ignored (did you mean JETSOURCE_NATS__URL?)",
        "JETSOURCE_PUBLISHER__GRPC_PROT is not a setting and is ignored "
        "(did you mean JETSOURCE_PUBLISHER__GRPC_PORT?)",
        "JETSOURCE_PUBLISHR__GRPC_PORT is not a setting and is ignored "
        "(did you mean JETSOURCE_PUBLISHER__...?)",
    ]


@pytest.mark.parametrize("settings", SERVICES)
def test_every_real_setting_of_every_service_is_known_to_every_other(
    settings: type[JetsourceSettings],
) -> None:
    """OTHER_NAMES holds every top-level name of every settings class: a shared
    environment (one .env for all services) gives no false warnings."""
    names: set[str] = set()
    classes: list[type[BaseSettings]] = [*SERVICES, SessionsAppSettings, OmniDomainSettings]
    for each in classes:
        names |= {n for n in each.model_fields if n not in JetsourceSettings.model_fields}
    assert names <= OTHER_NAMES
    env = {f"JETSOURCE_{name.upper()}__X": "1" for name in names - set(settings.model_fields)}
    assert unknown_variables(settings, env) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JETSOURCE_GRPC__AUTH_TOKENS", "tok-1"),
        ("JETSOURCE_PROJECTOR__MODELS", "contexts,timeline"),
        ("JETSOURCE_PROJECTOR__BACKOFF_S", "1, 2"),
    ],
)
def test_a_list_setting_that_is_not_json_is_named(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pydantic-settings said only 'error parsing value for field "projector"' (the
    CLI called it a bug, a service printed a traceback)."""
    message = _error(ProjectorSettings, monkeypatch, **{variable: value})
    assert message.startswith(f"bad setting: {variable}"), message
    assert "Invalid JSON" in message
    assert ("tok-1" in message) is False


def test_a_secrets_file_that_is_not_json_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "jetsource_grpc__auth_tokens").write_text("plain-token")
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", str(tmp_path))
    message = _error(PublisherSettings, monkeypatch)
    assert message.startswith("bad setting: JETSOURCE_GRPC__AUTH_TOKENS: Invalid JSON")
    assert "plain-token" not in message


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("JETSOURCE_EVENTSTORE__STREAM", "CONTEXT EVENTS", "not a stream name"),
        ("JETSOURCE_EVENTSTORE__STREAM", "", "not a stream name"),
        ("JETSOURCE_SNAPSHOTS__STREAM", "context.snapshots", "not a stream name"),
        ("JETSOURCE_PROJECTOR__DLQ_STREAM", "DLQ>", "not a stream name"),
        ("JETSOURCE_EVENTSTORE__SUBJECT_PREFIX", "context.*", "not a subject prefix"),
        ("JETSOURCE_EVENTSTORE__SUBJECT_PREFIX", "context..events", "not a subject prefix"),
        ("JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX", "", "not a subject prefix"),
        ("JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX", "dlq.>", "not a subject prefix"),
        ("JETSOURCE_PROJECTOR__CONTROL_BUCKET", "read.models", "not a bucket name"),
        ("JETSOURCE_SNAPSHOTS__MAX_MSG_SIZE", "999999999999", "less than or equal"),
        ("JETSOURCE_EVENTSTORE__MAX_MSG_SIZE", "4294967296", "less than or equal"),
        ("JETSOURCE_EVENTSTORE__MAX_BYTES", "-5", "greater than or equal to -1"),
    ],
)
def test_nats_names_the_server_would_refuse_are_refused_by_their_variable(
    variable: str, value: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They passed the settings, then ended the service with a traceback from its first
    JetStream request (or hung on a request to a subject no stream listens on)."""
    message = _error(ProjectorSettings, monkeypatch, **{variable: value})
    assert message.startswith(f"bad setting: {variable}={value!r}: "), message
    assert why in message


def test_observer_claims_bucket_is_a_bucket_name(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(ObserverSettings, monkeypatch, JETSOURCE_OBSERVER__CLAIMS_BUCKET="a b")
    assert "JETSOURCE_OBSERVER__CLAIMS_BUCKET='a b': 'a b' is not a bucket name" in message


def test_tls_files_that_do_not_go_together_or_do_not_load_are_named(tmp_path: Path) -> None:
    """They failed at the first listen or connection (a traceback, exit 1), or not at
    all: a server key without its certificate left TLS off in silence."""
    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")

    def problems(**blocks: Any) -> list[str]:
        return tls_problems(PublisherSettings(**blocks))

    good_server = ServerTlsSettings(
        cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca
    )
    good_client = TlsSettings(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    assert (
        problems(grpc=GrpcServerSettings(tls=good_server), nats=NatsSettings(tls=good_client)) == []
    )
    assert problems() == []
    assert problems(grpc=GrpcServerSettings(tls=ServerTlsSettings(cert_file=pki.server_cert))) == [
        "JETSOURCE_GRPC__TLS__CERT_FILE is set without JETSOURCE_GRPC__TLS__KEY_FILE"
    ]
    assert problems(grpc=GrpcServerSettings(tls=ServerTlsSettings(key_file=pki.server_key))) == [
        "JETSOURCE_GRPC__TLS__KEY_FILE is set without JETSOURCE_GRPC__TLS__CERT_FILE"
    ]
    assert problems(grpc=GrpcServerSettings(tls=ServerTlsSettings(client_ca_file=pki.ca))) == [
        "JETSOURCE_GRPC__TLS__CLIENT_CA_FILE is set without JETSOURCE_GRPC__TLS__CERT_FILE"
    ]
    assert problems(valkey=ValkeySettings(tls=TlsSettings(key_file=pki.client_key))) == [
        "JETSOURCE_VALKEY__TLS__KEY_FILE is set without JETSOURCE_VALKEY__TLS__CERT_FILE"
    ]
    (said,) = problems(nats=NatsSettings(tls=TlsSettings(ca_file=junk)))
    assert said.startswith(f"JETSOURCE_NATS__TLS__CA_FILE='{junk}': not PEM certificates")
    (said,) = problems(
        graph=GraphSettings(tls=TlsSettings(cert_file=pki.client_cert, key_file=pki.server_key))
    )
    assert said.startswith(
        f"JETSOURCE_GRAPH__TLS__CERT_FILE='{pki.client_cert}' with "
        f"JETSOURCE_GRAPH__TLS__KEY_FILE='{pki.server_key}': not a PEM certificate"
    )
    (said,) = problems(
        grpc=GrpcServerSettings(
            tls=ServerTlsSettings(cert_file=junk, key_file=pki.server_key, client_ca_file=pki.ca)
        )
    )
    assert said.startswith(f"JETSOURCE_GRPC__TLS__CERT_FILE='{junk}' with")


# Bearer tokens a server could never match or a client could never send: an empty item
# turned the gRPC services' (and the ingest's /api/v1/) tokens off in silence, one with
# a line end or a non-ASCII letter refused every client, and such a CLIENT__TOKEN made
# the CLI answer INTERNAL "a bug" (grpc refused the header in its own code).
@pytest.mark.parametrize(
    ("settings", "variable", "value", "why"),
    [
        (PublisherSettings, "JETSOURCE_GRPC__AUTH_TOKENS", '[""]', "an empty token"),
        (QuerySettings, "JETSOURCE_GRPC__AUTH_TOKENS", '["ok-tok", "  "]', "[1]: a token"),
        (ObserverSettings, "JETSOURCE_GRPC__AUTH_TOKENS", '["sec-x1\\r"]', "whitespace"),
        (ProcessQuerySettings, "JETSOURCE_GRPC__AUTH_TOKENS", '[" sec-x1"]', "whitespace"),
        (IngestSettings, "JETSOURCE_GRPC__AUTH_TOKENS", '["sec-\\u00e9x1"]', "printable ASCII"),
        (IngestSettings, "JETSOURCE_INGEST__API_TOKENS", '[""]', "an empty token"),
        (IngestSettings, "JETSOURCE_INGEST__API_TOKENS", '["sec-x1\\n"]', "whitespace"),
        (PublisherSettings, "JETSOURCE_CLIENT__TOKEN", "sec-x1\r", "whitespace"),
        (SessionsAppSettings, "JETSOURCE_CLIENT__TOKEN", "sec-\x01x1", "printable ASCII"),
    ],
)
def test_a_bearer_token_no_client_could_send_is_refused_by_name(
    settings: type[BaseSettings],
    variable: str,
    value: str,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(settings, monkeypatch, **{variable: value})
    assert message.startswith(f"bad setting: {variable}"), message
    assert why in message, message
    assert "sec-" not in message  # the token is never shown


def test_bearer_tokens_that_can_be_sent_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETSOURCE_GRPC__AUTH_TOKENS", '["t1", "a-b_c.d~e+f/g=="]')
    monkeypatch.setenv("JETSOURCE_CLIENT__TOKEN", "")  # empty: sends none, as unset
    loaded = PublisherSettings.load()
    assert [t.get_secret_value() for t in loaded.grpc.auth_tokens] == ["t1", "a-b_c.d~e+f/g=="]
    assert loaded.client.token is not None and loaded.client.token.get_secret_value() == ""


@pytest.mark.parametrize(
    ("days", "why"), [((-10, -1), "the certificate expired"), ((2, 30), "is not valid before")]
)
def test_a_certificate_out_of_date_is_refused_by_its_variable(
    tmp_path: Path, days: tuple[int, int], why: str
) -> None:
    """A server with an expired certificate started and served, every client's handshake
    failed ("not reachable"); a client's (NATS, Valkey) was refused by its server.
    Refused at start now, by the variable naming the file."""
    import datetime

    import trustme

    ca = trustme.CA()
    now = datetime.datetime.now(datetime.UTC)
    leaf = ca.issue_cert(
        "127.0.0.1",
        not_before=now + datetime.timedelta(days=days[0]),
        not_after=now + datetime.timedelta(days=days[1]),
    )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    server = GrpcServerSettings(tls=ServerTlsSettings(cert_file=cert, key_file=key))
    client = NatsSettings(tls=TlsSettings(cert_file=cert, key_file=key))
    problems = tls_problems(PublisherSettings(grpc=server, nats=client))
    assert len(problems) == 2, problems
    for variable in ("JETSOURCE_NATS__TLS__CERT_FILE", "JETSOURCE_GRPC__TLS__CERT_FILE"):
        assert any(p.startswith(f"{variable}={str(cert)!r}: ") for p in problems), problems
    assert all(why in p for p in problems), problems


SEED_LIKE = "SUAJUNKJUNKJUNK-7c1"


@pytest.mark.parametrize(
    ("variable", "content", "why"),
    [
        ("JETSOURCE_NATS__NKEY_SEED_FILE", f"{SEED_LIKE}\n", "holds no nkey seed"),
        ("JETSOURCE_NATS__NKEY_SEED_FILE", "", "holds no nkey seed"),
        ("JETSOURCE_NATS__CREDS_FILE", f"{SEED_LIKE}\n", "is not a NATS credentials file"),
        (
            "JETSOURCE_NATS__CREDS_FILE",
            "-----BEGIN NATS USER JWT-----\neyJ.e30.x\n------END NATS USER JWT------\n"
            f"-----BEGIN USER NKEY SEED-----\n{SEED_LIKE}\n------END USER NKEY SEED------\n",
            "holds no valid nkey seed",
        ),
    ],
    ids=["seed-junk", "seed-empty", "creds-junk", "creds-bad-seed"],
)
def test_a_nats_credentials_file_that_holds_none_is_refused_by_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, content: str, why: str
) -> None:
    """A seed file holding anything but a seed ended a service with a traceback
    (nkeys.ErrInvalidSeed, exit 1) and the CLI with INTERNAL "a bug"."""
    path = tmp_path / "nats.secret"
    path.write_text(content)
    message = _error(PublisherSettings, monkeypatch, **{variable: str(path)})
    assert message.startswith(f"bad setting: {variable}"), message
    assert why in message and SEED_LIKE not in message, message


def test_a_valid_seed_and_credentials_file_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
    (tmp_path / "user.nk").write_text(seed + "\n")
    (tmp_path / "user.creds").write_text(
        "-----BEGIN NATS USER JWT-----\neyJ.e30.x\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    monkeypatch.setenv("JETSOURCE_NATS__NKEY_SEED_FILE", str(tmp_path / "user.nk"))
    monkeypatch.setenv("JETSOURCE_NATS__CREDS_FILE", str(tmp_path / "user.creds"))
    loaded = PublisherSettings.load()
    assert loaded.nats.nkey_seed_file == tmp_path / "user.nk"
