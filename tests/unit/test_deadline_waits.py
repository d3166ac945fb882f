"""Waits below a gRPC call within its deadline (``jetsource.core.deadline``), through
the store's real request path (``jsapi.Replies``) on a fake connection whose answers
come when the test says (or never).

- A slow but healthy acknowledgement (1.65 s under a 2 s client deadline) was cut by
  a fixed 0.3 s reserve and answered UNAVAILABLE "lost quorum", turning the
  publisher NOT_SERVING; a wait the deadline cuts is now DEADLINE_EXCEEDED naming
  the write in flight, and only the stream's own word on its leader says "quorum".
- The waits that did not know the deadline (the shared STREAM.INFO of ``_not_taken``,
  the load path's direct gets, the key store's requests in ``_seal``) waited their own
  5 s past it: a bare DEADLINE_EXCEEDED.
- Tasks started during a call copied its deadline (asyncio copies the context) and
  kept it after the call ended."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any
from unittest import mock

import grpc
import pytest

from jetsource.core import deadline
from jetsource.core.errors import DeadlineCutError, EventStoreUnavailableError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.jsapi import OutMessage

# subject -> (seconds until the answer, the answer) or None: never answered
Answer = Callable[[str], tuple[float, Any] | None]


def _msg(body: dict[str, Any]) -> Any:
    return SimpleNamespace(headers=None, data=json.dumps(body).encode(), subject="x")


def _replies(answer: Answer, seen: list[float | None] | None = None) -> jsapi.Replies:
    """A real Replies on a fake connection: each request is answered as ``answer``
    says; ``seen`` gets the deadline left when a subscription is made."""
    nc = mock.MagicMock()
    nc.new_inbox.return_value = "_INBOX.t"

    async def subscribe(*args: object, **kwargs: object) -> object:
        if seen is not None:
            seen.append(deadline.left())
        return mock.MagicMock()

    nc.subscribe = subscribe
    nc.publish = mock.AsyncMock()  # a batched direct get's request: never answered
    replies = jsapi.Replies(nc)
    loop = asyncio.get_running_loop()

    async def send(
        subject: str,
        data: bytes,
        reply: str,
        headers: Mapping[str, str] | None,
        deadline: float | None = None,
    ) -> None:
        got = answer(subject)
        if got is None:
            return
        delay, msg = got
        token = reply.rsplit(".", 1)[-1]

        def deliver() -> None:
            future = replies._futures.get(token)
            if future is not None and not future.done():
                future.set_result(msg)

        loop.call_later(delay, deliver)

    replies.send = send  # type: ignore[method-assign]
    return replies


def _store(answer: Answer) -> JetStreamEventStore:
    from jetsource.domains.context.events import registry
    from tests.eventstore_fixtures import isolated_settings

    store = JetStreamEventStore(mock.MagicMock(), registry, isolated_settings("dw"))
    store._replies = _replies(answer)
    store.keys._replies = _replies(answer)
    store.keys._sub = object()  # listening (no subscriptions on the fake)
    return store


def _info(current: bool) -> dict[str, Any]:
    """STREAM.INFO of an R3 stream whose leader n0 has both replicas current, or none."""
    replicas = [
        {"name": n, "current": current, "active": 1_000_000 if current else 30_000_000_000}
        for n in ("n1", "n2")
    ]
    return {
        "config": {"num_replicas": 3, "subjects": ["cedw.events.>"], "allow_direct": True},
        "cluster": {"leader": "n0", "replicas": replicas},
    }


def _publishes(ack_after: float | None, healthy: bool = True) -> Answer:
    """The stream acknowledges a publish after ``ack_after`` s (None: never) and
    answers STREAM.INFO at once, with a quorum (``healthy``) or without."""

    def answer(subject: str) -> tuple[float, Any] | None:
        if subject.startswith("$JS.API.STREAM.INFO."):
            return 0.0, _msg(_info(healthy))
        if subject.startswith("$JS.API."):
            return None
        return None if ack_after is None else (ack_after, _msg({"stream": "CE_dw", "seq": 7}))

    return answer


def _write() -> list[OutMessage]:
    return [OutMessage("cedw.events.s1.DecisionAdded", b"x", {"Nats-Msg-Id": "e1"})]


async def test_a_slow_healthy_acknowledgement_within_the_deadline_is_stored() -> None:
    """A 2 s client deadline is a 1.9 s budget (``answer_within``); the ack comes after
    1.65 s. The fixed 0.3 s reserve cut the wait at 1.6 s: UNAVAILABLE "lost quorum"."""
    store = _store(_publishes(1.65))
    with deadline.within(1.9):
        ack = await store._call(lambda: store._publish(_write()))
    assert ack.seq == 7


@pytest.mark.parametrize("healthy", [True, False])
async def test_a_write_the_deadline_cut_is_deadline_exceeded_unless_the_stream_says_why(
    healthy: bool,
) -> None:
    """The ack not come before the call's deadline: on a stream whose leader has its
    quorum it is DEADLINE_EXCEEDED naming the write and the resend (it was UNAVAILABLE
    "lost quorum" for any slow ack); only a leader that lost quorum says so."""
    store = _store(_publishes(None, healthy))
    started = time.monotonic()
    with deadline.within(0.6), pytest.raises(Exception) as failed:
        await store._call(lambda: store._publish(_write()))
    assert time.monotonic() - started < 0.6  # answered before the deadline
    error = to_rpc_error(failed.value)
    if healthy:
        assert isinstance(failed.value, DeadlineCutError), repr(failed.value)
        assert not isinstance(failed.value, EventStoreUnavailableError)
        assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "s1" in error.message and "idempotency key" in error.message, error.message
        assert "quorum" not in error.message
    else:
        assert error.code is grpc.StatusCode.UNAVAILABLE, error.message
        assert "its leader n0 lost quorum (replicas n1, n2 not current)" in error.message


async def test_a_write_the_deadline_cut_leaves_write_health_alone() -> None:
    """The publisher turned NOT_SERVING for every UNAVAILABLE the store raised, the
    cut-short write's too; a DeadlineCutError says nothing of the store."""
    from jetsource.publisher.server import WatchedStore

    store = mock.MagicMock()
    store.append = mock.AsyncMock(side_effect=DeadlineCutError("the write of s1"))
    health = mock.MagicMock(writable=True, stream="CE_dw")
    health.mark = mock.AsyncMock()
    with pytest.raises(DeadlineCutError):
        await WatchedStore(store, health).append("s1", [], 0)
    health.mark.assert_not_called()


def _silent(subject: str) -> tuple[float, Any] | None:
    return None  # nothing answers


async def _ends_before(budget: float, work: Callable[[], Any]) -> BaseException:
    """``work()`` under a call deadline of ``budget`` fails with DeadlineCutError before
    it (the guard at 1.5 x ``budget`` is the bare DEADLINE_EXCEEDED it was)."""
    started = time.monotonic()
    with deadline.within(budget), pytest.raises(DeadlineCutError) as cut:
        async with asyncio.timeout(budget * 1.5):
            await work()
    assert time.monotonic() - started < budget
    return cut.value


async def test_why_no_responders_is_awaited_within_the_deadline() -> None:
    """``_not_taken``'s STREAM.INFO waited its own 5 s whatever the deadline."""
    store = _store(_silent)
    cut = await _ends_before(0.5, store._not_taken)
    assert "STREAM.INFO" in str(cut) and "CE_dw" in str(cut)


async def test_the_load_paths_direct_gets_end_within_the_deadline() -> None:
    """A command's state load (the aggregate's tail, a page of its history) waited the
    5 s request timeout per attempt, and ``_call`` asked again."""
    store = _store(_silent)
    await _ends_before(0.5, lambda: store._tail("s1"))
    await _ends_before(
        0.5, lambda: jsapi.direct_get_page(store._replies, "CE_dw", "cedw.events.s1.>", 1, 10, 5.0)
    )


async def test_the_key_stores_requests_in_seal_end_within_the_deadline() -> None:
    """The keys of personal fields (``_seal`` -> ``keys_for``): the key store's own
    requests waited their 5 s timeout past the deadline."""
    store = _store(_silent)
    await _ends_before(0.5, lambda: store.keys.keys_for(["person-1"]))


async def test_a_create_the_deadline_cut_is_not_asked_again_past_it() -> None:
    """The key store's bucket is made under the command that first needs a key: a
    create cut by the call's deadline (a TimeoutError) was taken for a cluster without a
    meta leader and asked again for up to PLACEMENT_WAIT_S (15 s) past the deadline."""
    replies = _replies(_silent)
    config = {"name": "KV_keys", "subjects": ["$KV.keys.>"], "num_replicas": 1}
    await _ends_before(0.5, lambda: jsapi.ensure_stream(replies, config, 5.0))


async def test_tasks_that_outlive_the_call_do_not_keep_its_deadline() -> None:
    """A task started during a call copied the call's deadline: the shared diagnosis
    (``_not_taken``) of every call failing meanwhile was bound by the first one's, and
    a subscription made by a first append (its delivering task) had it for good."""
    left_in: list[float | None] = []
    store = _store(_silent)

    async def diagnose() -> tuple[str, str]:
        left_in.append(deadline.left())
        return "electing", "electing"

    async def later() -> None:
        await asyncio.sleep(0.01)
        left_in.append(deadline.left())

    store._diagnose = diagnose  # type: ignore[method-assign]
    with deadline.within(1.0):
        await store._not_taken()
        await deadline.spawn(later())
    assert left_in == [None, None]

    seen: list[float | None] = []
    with deadline.within(1.0):
        await _replies(_silent, seen).start()
    assert seen == [None]
