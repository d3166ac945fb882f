"""A create waiting for a cluster (``jsapi.create_waiting``) that got no answer looks
for a permission violation of its stream's subjects (NATS drops a refused request and
only reports it). The stream was matched as a part of the denied text: a denial of
``$JS.API.STREAM.CREATE.CE_SNAPSHOTS`` (a user allowed stream CE but not the snapshots
stream) made stream CE's create, merely unanswered once by a cluster electing its
meta leader, AccessDeniedError at once (exit 2: change the user) instead of asked
again. It matches the subject's stream name exactly now, as ``projector status`` does
since 182d3b6. The create is a fake: a cluster without a meta leader and a permission
violation together cannot be made on a real single nats-server within a unit test."""

from __future__ import annotations

import collections

import pytest

from jetsource.core.errors import AccessDeniedError
from jetsource.eventstore import jsapi


@pytest.fixture(autouse=True)
def _denials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsapi, "_DENIALS", collections.deque(maxlen=16))


def _unanswered_once() -> object:
    calls = 0

    async def create() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TimeoutError  # no meta leader yet: not answered
        return "created"

    return create


def _violation(subject: str) -> str:
    # as nats-py reports it to the error callback (lower case)
    return f'nats: permissions violation for publish to "{subject.lower()}"'


async def test_a_denial_of_another_stream_named_with_it_as_a_prefix_is_not_its() -> None:
    jsapi.note_denial(_violation("$JS.API.STREAM.CREATE.CE_SNAPSHOTS"))
    assert await jsapi.create_waiting(_unanswered_once(), "CE", 1) == "created"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "name"),
    [
        ("$JS.API.STREAM.CREATE.CE", "CE"),
        ("$JS.API.STREAM.INFO.KV_keys", "KV_keys"),  # a bucket's find_or_create
    ],
)
async def test_a_denial_of_the_streams_own_subject_is_access_denied(
    subject: str, name: str
) -> None:
    jsapi.note_denial(_violation(subject))
    with pytest.raises(AccessDeniedError) as denied:
        await jsapi.create_waiting(_unanswered_once(), name, 1)  # type: ignore[arg-type]
    assert subject.lower() in str(denied.value)
