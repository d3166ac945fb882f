"""A stream's max age is what JetStream keeps as int64 nanoseconds: 292 years at most.
A longer one (a policy meant as "centuries") passed the settings and was refused only
when the stream was created, with nats-server's bare "invalid JSON: ... cannot unmarshal
number 10000000000000000000 into ... max_age" (and "inf" raised OverflowError there);
each is now refused by its setting before anything connects."""

from __future__ import annotations

import os

import pydantic
import pytest

from jetsource.core.clock import MAX_AGE_S, NS
from jetsource.core.settings import EventStoreSettings, JetsourceSettings, settings_error
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.domain import Retention, StreamPolicy
from jetsource.publisher.settings import PublisherSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JETSOURCE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", "/nonexistent-secrets")


def test_the_longest_age_is_what_int64_nanoseconds_hold() -> None:
    assert MAX_AGE_S * NS <= 2**63 - 1 < (MAX_AGE_S + 1) * NS
    assert EventStoreSettings(retention="age", max_age_s=MAX_AGE_S).max_age_s == MAX_AGE_S
    assert StreamPolicy(Retention.AGE, max_age_s=MAX_AGE_S).max_age_s == MAX_AGE_S


@pytest.mark.parametrize("value", ["1e10", "inf", "9223372037"])
@pytest.mark.parametrize(
    ("settings", "variable", "retention"),
    [
        (PublisherSettings, "JETSOURCE_EVENTSTORE__MAX_AGE_S", "JETSOURCE_EVENTSTORE__RETENTION"),
        (IngestSettings, "JETSOURCE_OMNI__RAW_MAX_AGE_S", None),
    ],
)
def test_a_longer_age_is_refused_by_its_variable(
    settings: type[JetsourceSettings],
    variable: str,
    retention: str | None,
    value: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if retention:
        monkeypatch.setenv(retention, "age")
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError) as caught:
        settings.load()
    message = settings_error(caught.value, settings)
    assert message.startswith(f"bad setting: {variable}={value!r}: "), message
    assert "9223372036" in message, message


@pytest.mark.parametrize("age", [1e10, float("inf"), float("nan")])
def test_a_domain_policy_with_a_longer_age_is_refused(age: float) -> None:
    with pytest.raises(ValueError, match="292 years"):
        StreamPolicy(Retention.AGE_WITH_COMPACTION, max_age_s=age)
