"""OpenTelemetry settings and stop: a collector endpoint that cannot work is refused at
start by its variable (any string used to pass, and every export then failed in the log),
and an unreachable collector does not hold a stopping service for the exporter's retries
(7.5 s with its port refusing connections)."""

from __future__ import annotations

import os
import time

import pydantic
import pytest

pytest.importorskip("opentelemetry.sdk")

from jetsource.core import telemetry
from jetsource.core.settings import OtelSettings, settings_error
from jetsource.publisher.settings import PublisherSettings

VARIABLE = "JETSOURCE_OTEL__ENDPOINT"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JETSOURCE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", "/nonexistent-secrets")


def _error(monkeypatch: pytest.MonkeyPatch, value: str) -> str:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(pydantic.ValidationError) as caught:
        PublisherSettings.load()
    return settings_error(caught.value, PublisherSettings)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not a url", "whitespace"),
        ("http://:4317", "no host"),
        ("ftp://collector:4317", "scheme must be one of http://, https://"),
        ("grpc://collector:4317", "scheme must be one of http://, https://"),
        ("http://collector:99999", "port is not a number"),
        ("http://collector:abc", "port is not a number"),
        ("collector:0", "port 0"),
    ],
)
def test_an_endpoint_that_cannot_work_is_refused_by_its_variable(
    value: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _error(monkeypatch, value)
    assert message.startswith(f"bad setting: {VARIABLE}="), message
    assert why in message, message


def test_credentials_in_the_endpoint_are_refused_and_not_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error(monkeypatch, "http://ann:s3cret@collector:4317")
    assert "s3cret" not in message and "ann" not in message
    assert f"{VARIABLE}='http://***@collector:4317'" in message
    assert "OTEL_EXPORTER_OTLP_HEADERS" in message


@pytest.mark.parametrize(
    "value",
    ["http://collector:4317", "https://otel.example.com:4317", "collector:4317", "http://c"],
)
def test_good_endpoints_pass(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, value)
    assert PublisherSettings.load().otel.endpoint == value


def test_an_unreachable_collector_does_not_hold_the_stop() -> None:
    # Port 9 on loopback: nothing listens, connections are refused at once; the
    # exporter retries with backoff for up to its 10 s timeout.
    assert telemetry.setup_tracing("publisher", OtelSettings(endpoint="http://127.0.0.1:9"))
    try:
        for _ in range(5):
            with telemetry.span("x"):
                pass
    finally:
        began = time.monotonic()
        telemetry.shutdown()
        took = time.monotonic() - began
    assert not telemetry.enabled()
    assert took < telemetry.SHUTDOWN_TIMEOUT_S + 1.0, took


def test_a_huge_attribute_a_client_sent_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    # A 1 MB context id became a 1 MB span attribute: a few in one export batch pass
    # the 4 MiB a collector receives by default, and the whole batch is refused.
    for name in ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry.setup_tracing("publisher", OtelSettings(endpoint="http://127.0.0.1:9"))
    try:
        with telemetry.span("x", attributes={"jetsource.aggregate_id": "a" * 1_000_000}) as span:
            span.set_attribute("other", "b" * 1_000_000)
            assert len(span.attributes["jetsource.aggregate_id"]) == 4096
            assert len(span.attributes["other"]) == 4096
    finally:
        telemetry.shutdown(0.1)
