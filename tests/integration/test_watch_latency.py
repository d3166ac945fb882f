"""WatchContext sends a story's first event without reading its whole history first.

A watch from version 1 read every event of the story before it sent the first one:
its time to a first answer grew with the story (37 ms at 400 events, against 3 ms at 10,
on the endpoint-latency bench). It reads a page at a time now. The check is what was
read before the first answer, not a timing."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core.envelope import ANY, NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.query_service import ContextQueryService
from jetsource.domains.context.query_settings import QueryOptions
from jetsource.domains.context.samples import story_events
from jetsource.projection.bootstrap import open_projection
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration

HISTORY = 400


async def test_a_watch_sends_its_first_event_before_reading_the_whole_history(
    settings: JetsourceSettings, unique: str
) -> None:
    projection = await open_projection(projector_settings(settings, unique))
    try:
        store = projection.store
        cid = "long-story"
        events = story_events(cid, HISTORY)
        for i in range(0, len(events), 50):
            await store.append(cid, [NewEvent(e) for e in events[i : i + 50]], ANY)
        service = ContextQueryService(
            projection,
            StateLoader(store, projection.snapshots, 10),
            QueryOptions(grpc_port=0, metrics_port=0),
        )
        read: list[int] = []
        reading = service.store.read_aggregate

        async def counted(*args: Any, **kwargs: Any) -> Any:
            records = await reading(*args, **kwargs)
            read.append(len(records))
            return records

        service.store.read_aggregate = counted  # type: ignore[method-assign]
        watch: Any = service.WatchContext(
            pb.WatchContextRequest(context_id=cid, from_version=1),
            None,
        )
        try:
            first = await anext(watch)
            assert first.event.version == 1
            assert sum(read) < len(events) / 2, f"read {sum(read)} events before the first"
            # The rest still comes, each event once and in order.
            versions = [first.event.version]
            while versions[-1] < len(events):
                versions.append((await anext(watch)).event.version)
            assert versions == list(range(1, len(events) + 1))
        finally:
            await watch.aclose()
    finally:
        await projection.close()
