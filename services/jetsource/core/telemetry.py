"""OpenTelemetry tracing, optional: the only module that imports ``opentelemetry``.

Without the ``otel`` extra installed, or without ``JETSOURCE_OTEL__ENDPOINT`` (and no
provider handed to :func:`use_provider`), every function here is a no-op: spans are
``contextlib.nullcontext()`` and no header is added to any event.

When on, a trace follows a command from the gRPC call (a SERVER span, parented to the
caller's ``traceparent`` metadata when it sent one) through the append (a PRODUCER
span, whose W3C ``traceparent`` is stored in each event's NATS headers) to the
projection batch that writes the read model (a CONSUMER span parented to the first
traced event of the batch and linked to the others).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager
from typing import Any

from jetsource.core.settings import OtelSettings

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    AVAILABLE = True
except ImportError:  # the otel extra is not installed
    AVAILABLE = False

log = logging.getLogger("jetsource.telemetry")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# A batch span links to at most this many traces besides its parent.
MAX_LINKS = 32
# How long a stopping service waits for its last spans to reach the collector. The
# exporter retries an unreachable one for up to 10 s: a stop used to wait that long
# (7.5 s with the collector's port refusing connections) before the process exited.
SHUTDOWN_TIMEOUT_S = 2.0
# The longest an attribute value may be, unless OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT or
# OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT says otherwise (the SDK's default: no limit). A
# client's 1 MB context id was stored whole as ``jetsource.aggregate_id``: a few such
# calls in one export batch pass the 4 MiB an OpenTelemetry Collector receives by
# default, and the whole batch (every other trace in it) is refused.
ATTRIBUTE_MAX_CHARS = 4096
_LENGTH_LIMITS = ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT")

_tracer: Any = None  # set when tracing is on
_provider: Any = None  # the provider this module made (shut down at exit)
_propagator: Any = TraceContextTextMapPropagator() if AVAILABLE else None

_KINDS = ("internal", "server", "client", "producer", "consumer")


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(service: str, settings: OtelSettings) -> bool:
    """Export spans to ``settings.endpoint`` (OTLP/gRPC). True when tracing is on."""
    global _provider
    if not settings.endpoint:
        return False
    if not AVAILABLE:
        log.warning(
            "JETSOURCE_OTEL__ENDPOINT is set but OpenTelemetry is not installed "
            "(pip install 'jetsource[otel]'); not tracing"
        )
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    import jetsource

    resource = Resource.create(
        {
            "service.name": settings.service_name or f"jetsource-{service}",
            "service.version": jetsource.__version__,
        }
    )
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        shutdown_on_exit=False,  # shutdown() does it, within SHUTDOWN_TIMEOUT_S
        span_limits=None
        if any(os.environ.get(name) for name in _LENGTH_LIMITS)
        else SpanLimits(
            max_attribute_length=ATTRIBUTE_MAX_CHARS,
            max_span_attribute_length=ATTRIBUTE_MAX_CHARS,
        ),
    )
    exporter = OTLPSpanExporter(endpoint=settings.endpoint, insecure=settings.insecure)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    _provider = provider
    log.info("tracing to %s", settings.endpoint, extra={"otel_endpoint": settings.endpoint})
    return True


def use_provider(provider: Any) -> None:
    """Trace with this TracerProvider (tests, or an application embedding jetsource);
    None turns tracing off."""
    global _tracer
    if provider is None or not AVAILABLE:
        _tracer = None
        return
    _tracer = provider.get_tracer("jetsource")


def shutdown(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush and stop the exporter this module started, if any, waiting at most
    ``timeout_s``: an unreachable collector does not hold the process's exit (the
    spans still queued then are dropped; the exporter's threads are daemons)."""
    global _provider
    provider, _provider = _provider, None
    use_provider(None)
    if provider is None:
        return

    def stop() -> None:
        with contextlib.suppress(Exception):
            provider.shutdown()

    stopper = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
    stopper.start()
    stopper.join(timeout_s)
    if stopper.is_alive():
        log.warning(
            "tracing: the collector did not take the last spans within %.0f s; dropped",
            timeout_s,
        )


def context_from(carrier: Mapping[str, str] | None) -> Any:
    """The remote span context a ``traceparent`` header names, or None."""
    if _tracer is None or not carrier:
        return None
    if TRACEPARENT not in carrier:
        return None
    ctx = _propagator.extract(carrier)
    if not _trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def span(
    name: str,
    *,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    carrier: Mapping[str, str] | None = None,
) -> AbstractContextManager[Any]:
    """A span made current for the block; its parent is the current span, or the one
    ``carrier``'s ``traceparent`` names. Exceptions are recorded on it and re-raised."""
    if _tracer is None:
        return contextlib.nullcontext()
    cm: AbstractContextManager[Any] = _tracer.start_as_current_span(
        name,
        context=context_from(carrier),
        kind=_kind(kind),
        attributes=dict(attributes) if attributes else None,
    )
    return cm


def rpc_span(service: str, method: str, context: Any) -> AbstractContextManager[Any]:
    """A SERVER span for one gRPC call (``service`` is the full service name), parented
    to the ``traceparent`` the caller sent in its metadata, if any."""
    if _tracer is None:
        return contextlib.nullcontext()
    carrier: dict[str, str] = {}
    with contextlib.suppress(Exception):  # a context without metadata (a direct call)
        for key, value in context.invocation_metadata() or ():
            if key in (TRACEPARENT, TRACESTATE) and isinstance(value, str):
                carrier[key] = value
    return span(
        f"{service}/{method}",
        kind="server",
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        carrier=carrier,
    )


def batch_span(
    name: str,
    carriers: Iterable[Mapping[str, str] | None],
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """A CONSUMER span for a batch of messages: parented to the first message carrying
    a ``traceparent`` (so a command's trace ends in the batch that projected it) and
    linked to the other traces in the batch."""
    if _tracer is None:
        return contextlib.nullcontext()
    parent = None
    links: list[Any] = []
    seen: set[int] = set()
    for carrier in carriers:
        ctx = context_from(carrier)
        if ctx is None:
            continue
        sc = _trace.get_current_span(ctx).get_span_context()
        if sc.trace_id in seen:
            continue
        seen.add(sc.trace_id)
        if parent is None:
            parent = ctx
        elif len(links) < MAX_LINKS:
            links.append(_trace.Link(sc))
    cm: AbstractContextManager[Any] = _tracer.start_as_current_span(
        name,
        context=parent,
        kind=_kind("consumer"),
        links=links,
        attributes=dict(attributes) if attributes else None,
    )
    return cm


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``, when it has one) to
    ``headers``; nothing when no sampled span is active (headers cost bytes per event)."""
    if _tracer is None:
        return
    sc = _trace.get_current_span().get_span_context()
    if not sc.is_valid or not sc.trace_flags.sampled:
        return
    _propagator.inject(headers)


def trace_headers() -> dict[str, str]:
    """The headers :func:`inject` would add (empty when none)."""
    headers: dict[str, str] = {}
    inject(headers)
    return headers


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the active span, for log lines; None when none."""
    if _tracer is None:
        return None
    sc = _trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


def _kind(kind: str) -> Any:
    if kind not in _KINDS:
        raise ValueError(f"span kind {kind!r}: one of {', '.join(_KINDS)}")
    return getattr(_trace.SpanKind, kind.upper())
