"""A write whose acknowledgement did not come within the store's own wait (its
request timeout, not cut by a call's deadline) through every attempt was answered
UNAVAILABLE "it has no leader, or its leader lost quorum ... or its disk is full"
whatever the stream's state, and the publisher turned NOT_SERVING on a healthy
cluster. The answer now comes from the stream's STREAM.INFO, as a publish the call's
deadline cut (``_write_cut``): a leader that lost quorum (or none) is UNAVAILABLE
naming it; a leader with its quorum is DEADLINE_EXCEEDED naming the write, and write
health is left alone.

The real request path (``jsapi.Replies``) on a fake connection: an ack held while the
stream's leader has its quorum cannot be made on a real single nats-server."""

from __future__ import annotations

from unittest import mock

import grpc
import pytest

from jetsource.core.errors import DeadlineCutError, EventStoreUnavailableError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.unit.test_deadline_waits import Answer, _publishes, _replies, _write


def _store(answer: Answer) -> JetStreamEventStore:
    from jetsource.domains.context.events import registry
    from tests.eventstore_fixtures import isolated_settings

    settings = isolated_settings("dw", request_timeout_s=0.2, retry_attempts=2)
    store = JetStreamEventStore(mock.MagicMock(), registry, settings)
    store._replies = _replies(answer)
    return store


async def test_an_ack_not_come_on_a_healthy_stream_is_not_a_lost_quorum() -> None:
    store = _store(_publishes(None, healthy=True))
    with pytest.raises(Exception) as failed:
        await store._call(lambda: store._publish(_write()))
    assert not isinstance(failed.value, EventStoreUnavailableError), repr(failed.value)
    assert isinstance(failed.value, DeadlineCutError)
    error = to_rpc_error(failed.value)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED, error.message
    assert "lost quorum" not in error.message and "no leader" not in error.message
    assert "CE_dw" in error.message and "idempotency key" in error.message, error.message
    assert "2 attempts" in error.message


async def test_an_ack_not_come_on_a_stream_whose_leader_lost_quorum_says_so() -> None:
    store = _store(_publishes(None, healthy=False))
    with pytest.raises(EventStoreUnavailableError) as failed:
        await store._call(lambda: store._publish(_write()))
    said = str(failed.value)
    assert "its leader n0 lost quorum (replicas n1, n2 not current)" in said, said
    assert "full" not in said  # the stream said why: not every cause it may be


async def test_an_ack_not_come_on_a_healthy_stream_leaves_write_health_alone() -> None:
    """Through the publisher's WatchedStore: it marked NOT_SERVING for the UNAVAILABLE."""
    from jetsource.publisher.server import WatchedStore

    store = _store(_publishes(None, healthy=True))

    async def append(*args: object) -> object:
        return await store._call(lambda: store._publish(_write()))

    store.append = append  # type: ignore[assignment, method-assign]
    health = mock.MagicMock(writable=True, stream="CE_dw")
    health.mark = mock.AsyncMock()
    with pytest.raises(DeadlineCutError):
        await WatchedStore(store, health).append("s1", [], 0)
    health.mark.assert_not_called()
