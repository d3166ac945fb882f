"""Composition root of the sessions tools (CLI, TUI, pruner, benchmark): settings in,
a connected ``Sessions`` (reader), a writer and the pruner's purger out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from jetsource._gen.process.v1.query_pb2_grpc import ProcessQueryServiceStub
from jetsource.client import open_channel
from jetsource.domains.process.events import AGGREGATE_TYPE, registry
from jetsource.domains.sessions.ledger import LedgerReader, LedgerWriter, QueryReader, SessionReader
from jetsource.domains.sessions.service import PruneDeniedError, Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.jetstream import JetStreamEventStore


class StreamPurger:
    """Purges one process's subjects (``$JS.API.STREAM.PURGE`` with a subject filter).

    The pruner is the only role that does this: the stream carrying sessions must be
    created without ``deny_purge`` and NATS permissions must grant
    ``$JS.API.STREAM.PURGE.<stream>`` to the pruner's user alone (every other user of
    the stream, the observer included, is denied it). A stream that denies purge
    refuses, and the pruner says so instead of doing anything else."""

    def __init__(self, replies: jsapi.Replies, stream: str, prefix: str, timeout: float) -> None:
        self._replies = replies
        self._stream = stream
        self._prefix = prefix
        self._timeout = timeout

    async def purge(self, process_id: str) -> int:
        try:
            body = await jsapi.api(
                self._replies,
                f"STREAM.PURGE.{self._stream}",
                {"filter": f"{self._prefix}.{process_id}.>"},
                self._timeout,
            )
        except jsapi.JsApiError as exc:
            raise PruneDeniedError(
                f"stream {self._stream} refused the purge ({exc.description}): its policy "
                "must allow purges for the pruner (see the sessions section of the README)"
            ) from exc
        return int(body.get("purged", 0))


@dataclass
class SessionsClient:
    nc: NATS
    store: JetStreamEventStore
    sessions: Sessions
    writer: LedgerWriter
    purger: StreamPurger


def event_store(nc: NATS, settings: SessionsAppSettings) -> JetStreamEventStore:
    cfg = settings.eventstore.model_copy(
        update={
            "stream": settings.sessions.stream,
            "subject_prefix": settings.sessions.subject_prefix,
            "aggregate_type": AGGREGATE_TYPE,
        }
    )
    return JetStreamEventStore(nc, registry, cfg)


@contextlib.asynccontextmanager
async def open_sessions(settings: SessionsAppSettings) -> AsyncIterator[SessionsClient]:
    nc = await connect(settings)
    try:
        store = event_store(nc, settings)
        await store.start()
        s = settings.sessions
        reader: SessionReader = LedgerReader(store, nc.jetstream(), s.stream, s.subject_prefix)
        channel = None
        if s.reader == "query":
            channel, metadata = open_channel(s.process_query, settings.client)
            reader = QueryReader(
                ProcessQueryServiceStub(channel), settings.client.timeout_s, metadata=metadata
            )
        replies = jsapi.Replies(nc)
        await replies.start()
        purger = StreamPurger(replies, s.stream, s.subject_prefix, 10.0)
        try:
            yield SessionsClient(nc, store, Sessions(reader, s), LedgerWriter(store), purger)
        finally:
            if channel is not None:
                await channel.close()
    finally:
        await release(nc)
