"""A new aggregate's first append is not looked up first (issue 23): it expects no
message on the aggregate's subjects, which the server checks. Refused, the append
goes the usual way, so every outcome is the one a look-up first would have given."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from jetsource.core.envelope import NO_STREAM
from jetsource.core.errors import ConcurrencyError
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.eventstore_fixtures import created, decision, store_pair

pytestmark = pytest.mark.integration


@pytest.fixture
async def pair(nc: NATS, unique: str) -> AsyncIterator[tuple[JetStreamEventStore, ...]]:
    async with store_pair(nc, unique) as both:
        yield both


def count_requests(store: JetStreamEventStore) -> list[str]:
    """The subjects of the requests the store sends from now on."""
    sent: list[str] = []
    replies = store._replies
    send = replies.send

    async def counting(subject: str, *args: object, **kw: object) -> None:
        sent.append(subject)
        await send(subject, *args, **kw)  # type: ignore[arg-type]

    replies.send = counting  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize("expected", [0, NO_STREAM])
async def test_a_new_aggregate_costs_one_request(
    pair: tuple[JetStreamEventStore, ...], expected: object
) -> None:
    a, _ = pair
    sent = count_requests(a)
    result = await a.append("new", [created()], expected)  # type: ignore[arg-type]
    assert result.versions == [1] and not result.duplicate
    assert len(sent) == 1 and not sent[0].startswith("$JS.API")
    again = await a.append("new", [decision(1)], 1)  # the position is known now
    assert again.versions == [2] and len(sent) == 2
    assert [e.version for e in await a.read_aggregate("new")] == [1, 2]


@pytest.mark.parametrize("expected", [0, NO_STREAM])
async def test_an_existing_aggregate_is_a_conflict(
    pair: tuple[JetStreamEventStore, ...], expected: object
) -> None:
    a, b = pair
    await a.append("old", [created(), decision(1)], NO_STREAM)
    with pytest.raises(ConcurrencyError) as err:
        await b.append("old", [decision(2)], expected)  # type: ignore[arg-type]
    assert err.value.actual == 2
    with pytest.raises(ConcurrencyError):  # a batch too, and nothing stored
        await b.append("old", [decision(3), decision(4)], expected)  # type: ignore[arg-type]
    assert [e.version for e in await a.read_aggregate("old")] == [1, 2]


async def test_a_retry_of_a_stored_first_append_is_the_original(
    pair: tuple[JetStreamEventStore, ...],
) -> None:
    a, b = pair
    for events in ([created()], [created(), decision(1)]):
        aggregate = f"r{len(events)}"
        first = await a.append(aggregate, events, NO_STREAM)
        again = await b.append(aggregate, events, NO_STREAM)  # b knows nothing of it
        assert again.duplicate and again.stream_seqs == first.stream_seqs
        assert again.versions == first.versions
        assert len(await a.read_aggregate(aggregate)) == len(events)


async def test_only_the_first_writer_of_a_new_aggregate_wins(
    pair: tuple[JetStreamEventStore, ...],
) -> None:
    a, b = pair
    await a.append("race", [created("a")], 0)
    with pytest.raises(ConcurrencyError):
        await b.append("race", [created("b")], 0)
    (only,) = await b.read_aggregate("race")
    assert only.event.title == "a"  # type: ignore[union-attr]
