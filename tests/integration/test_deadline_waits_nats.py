"""A command's reads within its deadline on a real NATS server: a direct get nobody
answers (a listener on the subject and no stream behind it, as a stream that lost its
leader leaves it) waited the request timeout (5 s) per attempt, whatever the call's
deadline, and the call ended in a bare DEADLINE_EXCEEDED. It now ends before the
deadline, naming what it waited for (``tests/unit/test_deadline_waits.py`` for each
wait on a fake connection)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from nats.aio.client import Client as NATS

from jetsource.core import deadline
from jetsource.core.errors import DeadlineCutError, EventStoreUnavailableError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.eventstore_fixtures import isolated_settings


async def test_an_unanswered_read_ends_before_the_calls_deadline(nc: NATS, unique: str) -> None:
    settings = isolated_settings(unique)
    store = JetStreamEventStore(nc, registry, settings)
    silent = await nc.subscribe(f"$JS.API.DIRECT.GET.{settings.stream}")  # never answers
    try:
        await store.start()
        started = time.monotonic()
        with deadline.within(1.0), pytest.raises(DeadlineCutError) as cut:
            async with asyncio.timeout(2.0):  # the bare DEADLINE_EXCEEDED it was
                await store.read_aggregate("s1")
        assert time.monotonic() - started < 1.0
        assert not isinstance(cut.value, EventStoreUnavailableError)  # health not marked
        error = to_rpc_error(cut.value)
        assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert settings.stream in error.message and "DIRECT.GET" in error.message, error.message
    finally:
        await silent.unsubscribe()
        await store.close()
