"""Event store adapters for the shared contract suite."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore


def isolated_settings(unique: str, **overrides: object) -> EventStoreSettings:
    """A stream and subject space of its own, so tests share one server safely."""
    return EventStoreSettings(
        stream=f"CE_{unique}",
        subject_prefix=f"ce{unique}.events",
        retry_backoff_s=0.01,
        **overrides,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def store_pair(
    nc: NATS, unique: str
) -> AsyncIterator[tuple[JetStreamEventStore, JetStreamEventStore]]:
    """Two store instances on one stream: like two publisher processes."""
    settings = isolated_settings(unique)
    a, b = JetStreamEventStore(nc, registry, settings), JetStreamEventStore(nc, registry, settings)
    await a.ensure_streams()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def created(title: str = "story") -> NewEvent:
    return NewEvent(ev.ContextCreated(title=title, created_by="tester"))


def decision(n: int, body: str = "") -> NewEvent:
    return NewEvent(ev.DecisionAdded(decision_id=f"d{n}", title=f"decision {n}", body=body))


def message_class(proto: Any, full_name: str) -> Any:
    """The message class ``full_name`` of a test-built ``FileDescriptorProto``, the file
    added to the default pool once (a test module imported again finds it there)."""
    from google.protobuf import descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(full_name)
    except KeyError:
        pool.Add(proto)
        descriptor = pool.FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)
