"""GetContextAtTime's NOT_FOUND for a time before the story existed writes every time
in one form, RFC 3339 with nine fraction digits and Z: a time before 1970 was written
as the request's Timestamp prints itself (``1969-12-31T23:59:50Z``, 3, 6 or 9 digits
as its nanos had them) and the rest with nine; year 1 was written "1-01-01T...".
Against real servers (NATS, Valkey)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jetsource._gen.context.v1 import query_pb2 as pb
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.history import StateLoader
from jetsource.domains.context.model import ContextState, CreateContext, decide
from jetsource.domains.context.query_service import ContextQueryService, QueryError
from jetsource.domains.context.query_settings import QueryOptions
from jetsource.projection.bootstrap import Projection
from tests.projector_fixtures import projection_of

pytestmark = pytest.mark.integration

STORY = "at-time"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Deadline:
    def time_remaining(self) -> float:
        return 10.0


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique, models=()) as p:
        yield p


@pytest.mark.parametrize(
    ("seconds", "nanos", "written"),
    [
        (-62_135_596_800, 0, "0001-01-01T00:00:00.000000000Z"),
        (-10, 0, "1969-12-31T23:59:50.000000000Z"),
        (-10, 500_000_000, "1969-12-31T23:59:50.500000000Z"),
        (0, 0, "1970-01-01T00:00:00.000000000Z"),
        (1_000_000_000, 123_000, "2001-09-09T01:46:40.000123000Z"),
    ],
)
async def test_times_in_the_not_yet_message_have_nine_fraction_digits(
    projection: Projection, seconds: int, nanos: int, written: str
) -> None:
    p = projection
    events = decide(CreateContext("A story"), ContextState(id=STORY))
    await p.store.append(STORY, [NewEvent(e) for e in events], NO_STREAM)
    service = ContextQueryService(
        p, StateLoader(p.store, p.snapshots, 10), QueryOptions(grpc_port=0, metrics_port=0)
    )
    request = pb.GetContextAtTimeRequest(
        context_id=STORY, time=Timestamp(seconds=seconds, nanos=nanos)
    )
    with pytest.raises(QueryError) as caught:
        await service.GetContextAtTime(request, Deadline())
    error = caught.value
    assert error.code == grpc.StatusCode.NOT_FOUND, error
    message = str(error)
    assert f"did not exist yet at {written}" in message, message
    times = [m.group(0) for m in TIME.finditer(message)]
    assert len(times) == 2 and all(re.search(r"\.\d{9}Z$", t) for t in times), message
