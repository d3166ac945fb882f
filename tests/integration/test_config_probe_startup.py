"""Every service entrypoint (the console scripts of pyproject.toml) given a setting it
cannot work with ends at once, before connecting to anything, with exit 2 and one log
line naming the variable: ``<service> cannot start: bad setting: JETSOURCE_...``. It
used to print a pydantic traceback (exit 1) for a value that did not parse, a logging
traceback for an unknown log level, a traceback from the first connection for a TLS
file that does not exist, and to retry for ever against a URL with the wrong scheme
(``http://nats:4222`` resolved the host ``http``) or with a negative timeout. A
``JETSOURCE_*`` variable that sets nothing is logged as a warning naming the closest
real one, and the service goes on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetsource.core.runner import EXIT_BAD_SETTING, EXIT_FAILED
from tests.infra import Server

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SERVICES = {
    "publisher": "PUBLISHER",
    "projector": "PROJECTOR",
    "snapshotter": "SNAPSHOTTER",
    "query": "QUERY",
    "observer": "OBSERVER",
    "process-query": "PROCESS_QUERY",
    "ingest": "INGEST",
}
# each service's own port settings
PORTS = {
    "publisher": "GRPC_PORT",
    "projector": "HTTP_PORT",
    "snapshotter": "HTTP_PORT",
    "query": "METRICS_PORT",
    "observer": "GRPC_PORT",
    "process-query": "GRPC_PORT",
    "ingest": "HTTP_PORT",
}
SHARED = [
    ("JETSOURCE_LOG_LEVEL", "verbose"),
    ("JETSOURCE_LOG_JSON", "maybe"),
    ("JETSOURCE_NATS__URL", "http://nats:4222"),
    ("JETSOURCE_NATS__URL", "nats://nats:abc"),
    ("JETSOURCE_NATS__CONNECT_TIMEOUT_S", "-1"),
    ("JETSOURCE_NATS__TLS__CA_FILE", "/nonexistent/ca.pem"),
    ("JETSOURCE_GRPC__AUTH_TOKENS", "not-json"),
    ("JETSOURCE_VALKEY__URL", "http://valkey:6379"),
    ("JETSOURCE_GRAPH__URI", "graph:7687"),
    ("JETSOURCE_EVENTSTORE__STREAM", "CONTEXT EVENTS"),
    ("JETSOURCE_SNAPSHOTS__STREAM", "context.snapshots"),
    ("JETSOURCE_EVENTSTORE__SUBJECT_PREFIX", "context.*"),
    ("JETSOURCE_PROJECTOR__CONTROL_BUCKET", "read.models"),
    ("JETSOURCE_SNAPSHOTS__MAX_MSG_SIZE", "999999999999"),
    ("JETSOURCE_NATS__TLS__CA_FILE", "/etc/hostname"),  # not PEM
    ("JETSOURCE_GRPC__TLS__KEY_FILE", "/etc/hostname"),  # without its certificate
    ("JETSOURCE_GRPC__TLS__CERT_FILE", "/etc/hostname"),  # without its key
]


def _owns(service: str, variable: str) -> bool:
    """Whether the service reads the variable (the projector's settings are read by
    every service built on them, not by the publisher and observer)."""
    return not (variable.startswith("JETSOURCE_PROJECTOR__") and service in NO_PROJECTOR)


NO_PROJECTOR = {"publisher", "observer"}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_SECRETS_DIR": str(tmp_path / "no-secrets"),
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{_closed_port()}",
        "JETSOURCE_LOG_JSON": "true",
    }
    return env | extra


def _shared_cases() -> list[tuple[str, str, str]]:
    """Each shared value on one service, the services taken in turn (one that reads the
    variable): the shared settings are one model every service's settings extend, so
    a value refused by one is refused by all (a subprocess per value per service was
    100 s of make test). Each service's own port rows below show every entrypoint
    reads its settings through the same refusal."""
    names = list(SERVICES)
    cases = []
    for i, (variable, value) in enumerate(SHARED):
        service = next(
            s for k in range(len(names)) if _owns(s := names[(i + k) % len(names)], variable)
        )
        cases.append((service, variable, value))
    return cases


CASES = [
    *_shared_cases(),
    *(
        (service, f"JETSOURCE_{SERVICES[service]}__{PORTS[service]}", value)
        for service in SERVICES
        for value in ("70000", "eighty")
    ),
]


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    CASES,
    ids=[f"{s}-{v.removeprefix('JETSOURCE_').lower()}={x}" for s, v, x in CASES],
)
def test_a_bad_setting_ends_the_service_at_once_naming_it(
    service: str, variable: str, value: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [str(BIN / f"jetsource-{service}")],
        env=_env(tmp_path, **{variable: value}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_BAD_SETTING, done.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert record["message"].startswith(f"{service} cannot start: bad setting: {variable}")
    assert done.stdout == ""


def test_a_misspelt_variable_is_warned_about_and_the_service_goes_on(tmp_path: Path) -> None:
    """Not fatal: a deployment's environment may carry names a newer version reads."""
    env = _env(
        tmp_path,
        JETSOURCE_PUBLISHER__GRPC_PROT="50999",
        JETSOURCE_PUBLISHER__GRPC_PORT="0",
        JETSOURCE_PUBLISHER__METRICS_PORT="0",
        JETSOURCE_QUERY__GRPC_PORT="50998",  # another service's: no warning
    )
    with subprocess.Popen(
        [str(BIN / "jetsource-publisher")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stderr is not None
            first = json.loads(process.stderr.readline())
            assert first["level"] == "warning"
            assert first["message"] == (
                "JETSOURCE_PUBLISHER__GRPC_PROT is not a setting and is ignored "
                "(did you mean JETSOURCE_PUBLISHER__GRPC_PORT?)"
            )
            # then it waits for NATS, as it does without the typo
            second = json.loads(process.stderr.readline())
            assert "JETSOURCE_" not in second["message"]
            assert process.poll() is None
        finally:
            process.terminate()
            process.wait(timeout=30)


def test_a_failure_at_start_is_one_log_record_not_a_raw_traceback(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """JetStream refusing the stream as configured (3 replicas on a single server):
    exit 1 and one JSON record with the error and the traceback in its "exception"
    field; it was Python's own traceback, 40 lines between the JSON ones."""
    done = subprocess.run(
        [str(BIN / "jetsource-publisher")],
        env=_env(
            tmp_path,
            JETSOURCE_NATS__URL=nats_server.url,
            JETSOURCE_EVENTSTORE__STREAM=f"CFG_{unique}",
            JETSOURCE_EVENTSTORE__SUBJECT_PREFIX=f"cfg{unique}.events",
            JETSOURCE_SNAPSHOTS__STREAM=f"CFG_SNAP_{unique}",
            JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX=f"cfgsnap{unique}.snapshots",
            JETSOURCE_EVENTSTORE__REPLICAS="3",
            JETSOURCE_PUBLISHER__GRPC_PORT="0",
            JETSOURCE_PUBLISHER__METRICS_PORT="0",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_FAILED, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stderr.strip().splitlines()]
    failed = records[-1]
    assert failed["level"] == "error"
    assert failed["message"].startswith("publisher failed: "), failed
    assert "replicas" in failed["message"]
    assert "Traceback" in failed["exception"]


@pytest.mark.parametrize(("service", "section"), [("publisher", "PUBLISHER"), ("query", "QUERY")])
def test_workers_whose_metrics_ports_pass_65535_are_refused_naming_the_setting(
    service: str, section: str, tmp_path: Path
) -> None:
    """Worker i serves /metrics on METRICS_PORT + 100 i: the last one refused the port
    its supervisor gave it, 'JETSOURCE_..._METRICS_PORT=65600', a value nobody set,
    after the others had started."""
    done = subprocess.run(
        [str(BIN / f"jetsource-{service}")],
        env=_env(
            tmp_path,
            **{
                f"JETSOURCE_{section}__WORKERS": "2",
                f"JETSOURCE_{section}__GRPC_PORT": str(_closed_port()),
                f"JETSOURCE_{section}__METRICS_PORT": "65500",
            },
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_BAD_SETTING, done.stderr
    (line,) = done.stderr.strip().splitlines()
    message = json.loads(line)["message"]
    assert message.startswith(f"{service} cannot start: ")
    assert f"set JETSOURCE_{section}__METRICS_PORT to at most 65435" in message
    assert "65600'" not in message
