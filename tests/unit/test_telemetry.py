"""jetsource.core.telemetry: a no-op when off; spans and traceparent headers when on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from jetsource.core import telemetry
from jetsource.core.settings import JetsourceSettings, OtelSettings
from jetsource.domains.context.query_service import ContextQueryService

A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B = "00-11111111111111111111111111111111-2222222222222222-01"


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


class Context:
    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def time_remaining(self) -> float:
        return 5.0


def test_off_without_an_endpoint_and_a_no_op() -> None:
    assert not telemetry.setup_tracing("publisher", OtelSettings())
    assert not telemetry.enabled()
    with telemetry.span("x") as span:
        assert span is None
        assert telemetry.trace_headers() == {}
    assert isinstance(telemetry.batch_span("b", [{"traceparent": A}]), contextlib.nullcontext)
    assert telemetry.current_ids() is None


def test_settings_name_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETSOURCE_OTEL__ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("JETSOURCE_OTEL__SERVICE_NAME", "ctx-publisher")
    otel = JetsourceSettings.load().otel
    assert (otel.endpoint, otel.service_name, otel.sample_ratio) == (
        "http://collector:4317",
        "ctx-publisher",
        1.0,
    )


def test_setup_with_an_endpoint_traces_and_shuts_down() -> None:
    assert telemetry.setup_tracing("query", OtelSettings(endpoint="http://127.0.0.1:1"))
    try:
        assert telemetry.enabled()
    finally:
        telemetry.shutdown()
    assert not telemetry.enabled()


def test_headers_only_inside_a_span(spans: InMemorySpanExporter) -> None:
    assert telemetry.trace_headers() == {}
    with telemetry.span("append", kind="producer") as span:
        headers = telemetry.trace_headers()
        ctx = span.get_span_context()
        assert list(headers) == ["traceparent"]  # no tracestate, no baggage
        assert headers["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
        assert telemetry.current_ids() == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


def test_a_batch_span_continues_the_first_trace_and_links_the_others(
    spans: InMemorySpanExporter,
) -> None:
    carriers: list[Any] = [{}, None, {"traceparent": "garbage"}, {"traceparent": A}]
    carriers += [{"traceparent": B}, {"traceparent": A}]
    with telemetry.batch_span("project m v1", carriers, {"jetsource.model": "m"}):
        pass
    (span,) = spans.get_finished_spans()
    assert span.kind == SpanKind.CONSUMER
    assert span.context.trace_id == int(A.split("-")[1], 16)
    assert span.parent is not None and span.parent.span_id == int(A.split("-")[2], 16)
    assert [link.context.trace_id for link in span.links] == [int(B.split("-")[1], 16)]


async def test_each_query_rpc_is_a_server_span(spans: InMemorySpanExporter) -> None:
    service = object.__new__(ContextQueryService)
    service.o = SimpleNamespace(default_deadline_s=5.0)  # type: ignore[assignment]

    async def work() -> str:
        return "answer"

    assert await service._run("GetContext", Context((("traceparent", A),)), work) == "answer"

    async def fails() -> str:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        await service._run("ListEvents", Context(), fails)
    ok, failed = spans.get_finished_spans()
    assert ok.name == "jetsource.context.v1.ContextQueryService/GetContext"
    assert ok.kind == SpanKind.SERVER and ok.context.trace_id == int(A.split("-")[1], 16)
    assert failed.name.endswith("/ListEvents") and failed.parent is None
    assert failed.status.status_code.name == "ERROR"
