"""The deadline of a gRPC call, said to the waits below it (``jetsource.core.deadline``),
and the UNAVAILABLE answer that asks the client not to try again in vain.

A publish waited up to the store's request timeout (5 s) for its acknowledgement
whatever the call's deadline: on a NATS cluster that lost quorum the deadline ended in
that wait and the call was answered DEADLINE_EXCEEDED naming nothing; and an
UNAVAILABLE naming the cause was sent again by the client's retry policy until the
deadline passed, which ended it as a bare DEADLINE_EXCEEDED too
(``tests/chaos/test_cluster_r3_chaos.py``, first write after a quorum loss)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from jetsource.core import deadline
from jetsource.core.grpcserver import RpcError, retry_is_futile, to_rpc_error


async def test_no_deadline_leaves_the_wait_as_it_is() -> None:
    assert deadline.left() is None
    assert deadline.bound(5.0) == 5.0


async def test_a_wait_ends_before_the_deadline_keeping_a_share_of_it_to_answer() -> None:
    """The reserve was a fixed 0.3 s and a wait at least 0.5 s: under a 2 s deadline a
    healthy acknowledgement in 1.65 s was cut, and a wait started with 0.1 s left ended
    0.4 s past the deadline. It is a tenth of the time left (at most 0.3 s)."""
    with deadline.within(2.0):
        assert deadline.bound(5.0) == pytest.approx(1.8, abs=0.05)
        assert deadline.bound(1.0) == 1.0
        with deadline.within(10.0):  # an outer, earlier deadline stays
            assert deadline.left() == pytest.approx(2.0, abs=0.05)
    with deadline.within(30.0):  # the share is capped
        assert deadline.bound(60.0) == pytest.approx(30.0 - deadline.ANSWER_RESERVE_S, abs=0.05)
    assert deadline.left() is None
    with deadline.within(0.1):  # little left: the wait still ends before the deadline
        assert 0.05 < deadline.bound(5.0) < 0.1


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("code", "took", "remaining", "futile"),
    [
        (grpc.StatusCode.UNAVAILABLE, 5.2, 4.8, True),  # another attempt ends in the deadline
        (grpc.StatusCode.UNAVAILABLE, 0.2, 9.8, False),  # a worker gone: worth a retry
        (grpc.StatusCode.UNAVAILABLE, 5.2, None, False),  # no deadline
        (grpc.StatusCode.ABORTED, 5.2, 4.8, False),  # not retried by the clients anyway
    ],
)
def test_retry_is_futile_when_less_time_is_left_than_the_call_took(
    code: grpc.StatusCode, took: float, remaining: float | None, futile: bool
) -> None:
    started = time.monotonic() - took
    context = _Context(remaining)
    assert retry_is_futile(RpcError(code, "x"), context, started) is futile


class _Replies:
    """Answers STREAM.MSG.GET with ``answer`` (an exception is raised)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.timeouts: list[float] = []

    async def request(self, subject: str, data: bytes, headers: object, timeout: float) -> object:
        self.timeouts.append(timeout)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def _meta_leaderless() -> object:
    from types import SimpleNamespace

    body = (
        b'{"error": {"code": 503, "err_code": 10008, '
        b'"description": "JetStream system temporarily unavailable"}}'
    )
    return SimpleNamespace(headers=None, data=body, subject="x")


@pytest.mark.parametrize(("answer", "budget"), [(TimeoutError(), None), ("leaderless", 2.0)])
async def test_a_read_only_the_leader_answers_names_the_missing_leader(
    answer: object, budget: float | None
) -> None:
    """A snapshot's read (a command's state load) from a stream without a leader: its
    STREAM.MSG.GET unanswered waited past the call's deadline (DEADLINE_EXCEEDED naming
    nothing), answered 503/10008 it was INTERNAL."""
    from jetsource.core.errors import EventStoreUnavailableError
    from jetsource.eventstore import jsapi

    replies = _Replies(_meta_leaderless() if answer == "leaderless" else answer)
    with deadline.within(budget), pytest.raises(EventStoreUnavailableError) as lost:
        await jsapi.leader_get(replies, "CS_X", {"last_by_subj": "a.b"}, 0.5)  # type: ignore[arg-type]
    assert isinstance(lost.value, TimeoutError)  # still transient where retried
    assert "stream CS_X" in str(lost.value) and "quorum" in str(lost.value)


async def test_a_read_the_calls_deadline_cut_is_deadline_exceeded_not_a_lost_quorum() -> None:
    """STREAM.MSG.GET not answered before the call's deadline (a slow read, the wait cut
    short by the deadline) was "no leader, or lost quorum" (UNAVAILABLE): it says
    nothing of the leader, so it is DEADLINE_EXCEEDED naming the read."""
    from jetsource.core.errors import DeadlineCutError, EventStoreUnavailableError
    from jetsource.eventstore import jsapi

    replies = _Replies(TimeoutError())
    with deadline.within(2.0), pytest.raises(DeadlineCutError) as cut:
        await jsapi.leader_get(replies, "CS_X", {"last_by_subj": "a.b"}, 5.0)  # type: ignore[arg-type]
    assert not isinstance(cut.value, EventStoreUnavailableError)
    assert replies.timeouts[0] < 2.0  # ends before the call's deadline
    error = to_rpc_error(cut.value)
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "STREAM.MSG.GET" in error.message and "CS_X" in error.message, error.message
    assert "quorum" not in error.message


async def test_a_publish_held_in_process_is_unavailable_not_internal() -> None:
    """Asked again after its ack was waited out, a publish the leader still holds is
    answered 10158 "duplicate message id is in process": it went up as JsApiError
    (INTERNAL over gRPC). Unavailable where the stream's leadership says so (its
    leader lost quorum); on a healthy leader see test_unacked_write_diagnosis."""
    from unittest import mock

    from jetsource.core.errors import EventStoreUnavailableError
    from jetsource.domains.context.events import registry
    from jetsource.eventstore import jsapi
    from jetsource.eventstore.jetstream import JetStreamEventStore
    from jetsource.eventstore.jsapi import JsApiError
    from tests.eventstore_fixtures import isolated_settings

    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("ip"))
    calls = 0
    lost_quorum = mock.AsyncMock(return_value="its leader n0 lost quorum (replicas n1 not current)")

    async def held() -> None:
        nonlocal calls
        calls += 1
        raise JsApiError(409, 10158, "duplicate message id is in process")

    with (
        mock.patch.object(jsapi, "stream_leadership", lost_quorum),
        pytest.raises(EventStoreUnavailableError) as lost,
    ):
        await store._call(held)
    assert calls == store.settings.retry_attempts  # asked again: it may be stored meanwhile
    assert "has not stored an earlier attempt of this write" in str(lost.value)
    assert "quorum" in str(lost.value)


def _store(name: str) -> object:
    from unittest import mock

    from jetsource.domains.context.events import registry
    from jetsource.eventstore.jetstream import JetStreamEventStore
    from tests.eventstore_fixtures import isolated_settings

    return JetStreamEventStore(mock.MagicMock(), registry, isolated_settings(name))


@pytest.mark.parametrize("budget", [0.8, 5.0])
async def test_a_stream_electing_its_leader_is_unavailable_under_any_deadline(
    monkeypatch: pytest.MonkeyPatch, budget: float
) -> None:
    """No responders from a stream between two leaders, under a call's deadline too short
    for another attempt: the give-up path read an error only the other branches set
    (UnboundLocalError: INTERNAL over gRPC, "a bug"). Unavailable, naming the election."""
    from jetsource.eventstore import jetstream
    from jetsource.eventstore.jsapi import NoRespondersError

    store: jetstream.JetStreamEventStore = _store("el")  # type: ignore[assignment]

    async def electing() -> Exception:
        return jetstream._ElectingError("stream X is electing a leader")

    monkeypatch.setattr(store, "_not_taken", electing)
    monkeypatch.setattr(store.settings, "retry_backoff_s", 0.01)

    async def no_responders() -> None:
        raise NoRespondersError("X")

    with deadline.within(budget), pytest.raises(jetstream._ElectingError, match="electing"):
        await store._call(no_responders)


@pytest.mark.parametrize(("leaderless", "unavailable"), [(None, False), ("no leader", True)])
async def test_a_refusal_for_a_write_in_flight_is_unavailable_only_on_a_stream_without_quorum(
    monkeypatch: pytest.MonkeyPatch, leaderless: str | None, unavailable: bool
) -> None:
    """A refusal for a write in flight (10164) with nothing stored since, its retries or
    the call's deadline spent: on a healthy cluster it is a racing write not visible yet,
    the conflict it always was (it was answered UNAVAILABLE "lost quorum", and the
    publisher marked NOT_SERVING); only a stream without a leader it can work with makes
    it unavailable, naming why."""
    from jetsource.core.errors import EventStoreUnavailableError
    from jetsource.eventstore import jetstream, jsapi

    store: jetstream.JetStreamEventStore = _store("if")  # type: ignore[assignment]

    async def leadership(*args: object) -> str | None:
        return leaderless

    monkeypatch.setattr(jsapi, "stream_leadership", leadership)
    with deadline.within(0.8):  # no time for another attempt
        if unavailable:
            with pytest.raises(EventStoreUnavailableError, match="no leader"):
                await store._wait_in_flight("s", 0)
        else:
            assert await store._wait_in_flight("s", 0) is False
    assert await store._wait_in_flight("s", 0) is True  # time and tries left: again


async def test_the_scan_of_voids_a_first_call_starts_is_not_cut_by_its_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's start scans the voids recorded so far, once: it ran under the first
    caller's deadline, and a scan that deadline cut (DeadlineCutError, a TimeoutError)
    was swallowed as NATS away with the subscription set, so voided events read as
    ordinary ones until a restart. The scan has no call's deadline; one that did not
    end (cancelled) is asked again by the next start."""
    from typing import Any
    from unittest import mock

    from jetsource.core.errors import DeadlineCutError
    from jetsource.eventstore import jsapi

    store: Any = _store("voidscan")
    voided = mock.Mock(subject=f"{store._cfg.subject_prefix}_voids.7", seq=1)
    scans: list[float | None] = []

    async def batch(*args: object, **kwargs: object) -> Any:
        scans.append(deadline.left())
        if deadline.left() is not None:
            raise DeadlineCutError("the call's deadline came before the voids could be read")
        yield voided

    async def nothing(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr(store._replies, "start", nothing)
    monkeypatch.setattr(store.keys, "start", nothing)
    monkeypatch.setattr(store._nc, "subscribe", mock.AsyncMock(return_value=mock.Mock()))
    monkeypatch.setattr(jsapi, "direct_get_batch", batch)
    with deadline.within(0.5):
        await store.start()
    assert store._voids == {7}
    assert scans == [None]

    # Cancelled mid-scan: the next start scans again.
    other: Any = _store("voidscan2")
    monkeypatch.setattr(other._replies, "start", nothing)
    monkeypatch.setattr(other.keys, "start", nothing)
    monkeypatch.setattr(other._nc, "subscribe", mock.AsyncMock(return_value=mock.Mock()))
    calls: list[int] = []

    async def cancelled_once(*args: object, **kwargs: object) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise asyncio.CancelledError
        yield voided

    monkeypatch.setattr(jsapi, "direct_get_batch", cancelled_once)
    with pytest.raises(asyncio.CancelledError):
        await other.start()
    await other.start()
    assert other._voids == {7} and len(calls) == 2
