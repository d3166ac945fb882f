"""Omni event pages end by their bytes: a page of large events (a long message text,
up to the ingress's body limit) was answered whole, over gRPC's message limit, and the
caller got RESOURCE_EXHAUSTED "Sent message larger than max" for every page size that
reached them: the list could not be read past them at all. A page now ends before the
event that would take it past the message limit (less 64 KiB), its token going on at
that event, so every list (recent, filtered, a conversation) reads each event once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.events_pb2 import (
    DIRECTION_INBOUND,
    DIRECTION_OUTBOUND,
    EVENT_TYPE_MESSAGE,
    NormalizedEvent,
)
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up, ingest_with_limit

pytestmark = pytest.mark.integration

LIMIT = 256 * 1024  # JETSOURCE_GRPC__MAX_MESSAGE_BYTES: pages of at most 192 KiB


@pytest.fixture
async def small(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    async with ingest_with_limit(isettings, LIMIT) as service:
        yield service


async def read_all(call: Any, request: Any) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    sizes: list[int] = []
    for _ in range(50):
        answer = await call(request)
        ids += [v.event.id for v in answer.events]
        sizes.append(answer.ByteSize())
        if not answer.next_page_token:
            return ids, sizes
        request.page_token = answer.next_page_token
    raise AssertionError("no last page")


async def test_pages_of_large_events_fit_the_message_limit_and_lose_none(
    small: Ingest, projection: Projection
) -> None:
    events = []
    for i in range(14):
        e = NormalizedEvent(
            id=f"big-{i:04d}",
            provider="whatsapp",
            provider_event_id=f"p{i}",
            instance_name="acme-cloud",
            event_type=EVENT_TYPE_MESSAGE,
            direction=DIRECTION_INBOUND if i % 3 else DIRECTION_OUTBOUND,
            conversation_id="c1",
            content_text="x" * (60_000 if i % 2 else 10),
        )
        await small.store.append(e.id, [NewEvent(e)], NO_STREAM)
        events.append(e)
    newest_first = [e.id for e in reversed(events)]
    inbound = [e.id for e in reversed(events) if e.direction == DIRECTION_INBOUND]
    await caught_up(projection)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        cases = [
            (stub.ListRecentEvents, oq.ListRecentEventsRequest(page_size=50), newest_first),
            (
                stub.ListRecentEvents,
                oq.ListRecentEventsRequest(
                    page_size=50, instance="acme-cloud", direction=DIRECTION_INBOUND
                ),
                inbound,
            ),
            (
                stub.GetConversation,
                oq.GetConversationRequest(
                    provider="whatsapp", instance="acme-cloud", conversation_id="c1", page_size=50
                ),
                newest_first,
            ),
        ]
        for call, request, want in cases:
            ids, sizes = await read_all(call, request)
            assert ids == want, request
            assert len(sizes) > 1 and max(sizes) <= LIMIT - 64 * 1024, (request, sizes)
        # One event larger than a page's bytes is still answered, alone on its page.
        one = await stub.ListRecentEvents(oq.ListRecentEventsRequest(page_size=1))
        assert [v.event.id for v in one.events] == newest_first[:1]
