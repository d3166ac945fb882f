"""One trace from a gRPC command through the NATS append to the read-model write.

The publisher (its gRPC server, command handler and event store) and a projector
worker run in this process with an in-memory OpenTelemetry exporter: the command's
SERVER span, the append's PRODUCER span and the projection batch's CONSUMER span share
one trace id, each the parent of the next, carried between the processes' roles by
the ``traceparent`` header stored with the event in JetStream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.client import ContextClient
from jetsource.core import telemetry
from jetsource.core.settings import JetsourceSettings
from jetsource.domains.context.valkey_models import ContextModel
from jetsource.eventstore import jsapi
from jetsource.projection.bootstrap import Projection
from jetsource.projection.runtime import Worker
from jetsource.publisher.server import Publisher, build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.projector_fixtures import projection_of

pytestmark = pytest.mark.integration

COMMAND = "jetsource.context.v1.ContextCommandService/CreateContext"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.use_provider(provider)
    try:
        yield exporter
    finally:
        telemetry.use_provider(None)
        provider.shutdown()


@pytest.fixture
async def publisher(settings: JetsourceSettings, unique: str) -> AsyncIterator[Publisher]:
    p = await build(
        PublisherSettings(
            nats=settings.nats,
            eventstore=isolated_settings(unique),
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )
    yield p
    await p.stop(0)


@pytest.fixture
async def projection(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with projection_of(settings, unique) as p:
        yield p


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def stored_headers(projection: Projection, story: str) -> dict[str, Any]:
    cfg = projection.store.settings
    raw = await jsapi.last_for_subject(
        projection.store._replies, cfg.stream, f"{cfg.subject_prefix}.{story}.>", 5.0
    )
    assert raw is not None
    return dict(raw.headers)


async def project(projection: Projection) -> Worker:
    worker = Worker(
        projection.nc,
        projection.store,
        projection.model("context", 1),
        projection.dead_letters,
        projection.settings.projector,
    )
    await worker.run(until_caught_up=True)
    return worker


async def test_one_trace_from_the_grpc_command_to_the_read_model_write(
    spans: InMemorySpanExporter, publisher: Publisher, projection: Projection
) -> None:
    async with ContextClient(f"127.0.0.1:{publisher.port}", actor="tracer") as client:
        await client.create_context("traced", "Follow me")
    await project(projection)
    model = projection.model("context", 1)
    assert isinstance(model, ContextModel)
    doc = await model.read("traced")
    assert doc is not None and doc["state"]["version"] == 1  # the read-model write

    finished = list(spans.get_finished_spans())
    command = one(finished, COMMAND)
    append = one(finished, f"append {projection.store.settings.stream}")
    batch = one(finished, "project context v1")
    assert command.kind == SpanKind.SERVER and command.parent is None
    assert append.kind == SpanKind.PRODUCER and batch.kind == SpanKind.CONSUMER
    trace_id = command.context.trace_id
    assert append.context.trace_id == trace_id
    assert batch.context.trace_id == trace_id
    assert parent_id(append) == command.context.span_id
    assert parent_id(batch) == append.context.span_id
    assert batch.attributes is not None and batch.attributes["jetsource.model"] == "context"
    assert append.attributes is not None and append.attributes["jetsource.aggregate_id"] == (
        "traced"
    )

    # What crossed JetStream: the append span's traceparent, in the event's headers.
    headers = await stored_headers(projection, "traced")
    version, trace_hex, span_hex, flags = headers["traceparent"].split("-")
    assert (version, trace_hex, span_hex) == (
        "00",
        f"{trace_id:032x}",
        f"{append.context.span_id:016x}",
    )
    assert int(flags, 16) & 1  # sampled


async def test_a_callers_traceparent_is_continued(
    spans: InMemorySpanExporter, publisher: Publisher, projection: Projection
) -> None:
    caller_trace, caller_span = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    traceparent = f"00-{caller_trace:032x}-{caller_span:016x}-01"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        await pb_grpc.ContextCommandServiceStub(channel).CreateContext(
            pb.CreateContextRequest(
                context_id="called",
                title="From upstream",
                options=pb.CommandOptions(idempotency_key="k-called", actor="tracer"),
            ),
            metadata=(("traceparent", traceparent),),
            timeout=10,
        )
    await project(projection)
    finished = list(spans.get_finished_spans())
    command = one(finished, COMMAND)
    assert command.context.trace_id == caller_trace
    assert parent_id(command) == caller_span
    assert one(finished, "project context v1").context.trace_id == caller_trace


async def test_no_header_and_no_span_when_tracing_is_off(
    publisher: Publisher, projection: Projection
) -> None:
    assert not telemetry.enabled()
    async with ContextClient(f"127.0.0.1:{publisher.port}", actor="tracer") as client:
        await client.create_context("untraced", "Quiet")
    headers = await stored_headers(projection, "untraced")
    assert "traceparent" not in headers
    worker = await project(projection)
    assert worker.stats.applied == 1
