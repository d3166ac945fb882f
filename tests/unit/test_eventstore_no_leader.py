"""No responders from the event stream: missing, or only without a leader. A stream of
a NATS cluster between two leaders (an election) or in a cluster that lost quorum has
no responders too, and was named "does not exist: create it with `jetsource streams
ensure`"; `tests/chaos/test_cluster_r3_chaos.py` has the real cluster."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from jetsource.core.errors import EventStoreUnavailableError, StreamMissingError
from jetsource.domains.context.events import registry
from jetsource.eventstore import jetstream, jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError
from tests.eventstore_fixtures import isolated_settings


def _store(monkeypatch: pytest.MonkeyPatch, info: Any) -> JetStreamEventStore:
    async def api(replies: Any, subject: str, body: Any, timeout: float) -> Any:
        assert subject.startswith("STREAM.INFO.")
        if isinstance(info, BaseException):
            raise info
        return info

    monkeypatch.setattr(jsapi, "api", api)
    monkeypatch.setattr(jetstream, "_DIAGNOSIS_TTL_S", 0.0)
    return JetStreamEventStore(
        mock.MagicMock(), registry, isolated_settings("nl", retry_attempts=3)
    )


def _calls(answers: list[Any]) -> Any:
    async def call() -> Any:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return call


async def test_a_stream_between_leaders_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = isolated_settings("nl")
    there = {"config": {"subjects": [f"{cfg.subject_prefix}.>"], "allow_direct": True}}
    store = _store(monkeypatch, there)
    answers: list[Any] = [NoRespondersError(), "stored"]
    assert await store._call(_calls(answers)) == "stored"


async def test_a_stream_that_stays_without_a_leader_is_unavailable_not_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = _store(monkeypatch, TimeoutError())
    answers: list[Any] = [NoRespondersError()] * 3
    with pytest.raises(EventStoreUnavailableError) as lost:
        await store._call(_calls(answers))
    # STREAM.INFO not answered cost a request's timeout already: said at once, not
    # asked again (each try would wait out another; a client's deadline ran out first)
    assert len(answers) == 2
    assert not isinstance(lost.value, StreamMissingError)
    assert "has no leader" in str(lost.value) and "does not exist" not in str(lost.value)


async def test_a_stream_not_found_is_still_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(monkeypatch, JsApiError(404, jsapi.ERR_STREAM_NOT_FOUND, "stream not found"))
    with pytest.raises(StreamMissingError, match="does not exist"):
        await store._call(_calls([NoRespondersError()]))
