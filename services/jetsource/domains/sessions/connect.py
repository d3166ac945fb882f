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
from jetsource.domains.process.pruner import TreePruner
from jetsource.domains.sessions.ledger import LedgerReader, LedgerWriter, QueryReader, SessionReader
from jetsource.domains.sessions.service import Sessions
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import connect, release
from jetsource.eventstore.jetstream import JetStreamEventStore


@dataclass
class SessionsClient:
    nc: NATS
    store: JetStreamEventStore
    sessions: Sessions
    writer: LedgerWriter
    # The pruner's steps (tombstone, purge, completion). Purges need the pruner's NATS
    # user (JETSOURCE_NATS__USER...): the stream refuses every other one.
    purger: TreePruner


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
        replies = jsapi.Replies(nc)
        await replies.start()
        ledger = LedgerReader(
            store, nc.jetstream(), s.stream, s.subject_prefix, settings.client.timeout_s, replies
        )
        reader: SessionReader = ledger
        channel = None
        if s.reader == "query":
            channel, metadata = open_channel(s.process_query, settings.client)
            reader = QueryReader(
                ProcessQueryServiceStub(channel), settings.client.timeout_s, metadata=metadata
            )
        purger = TreePruner(
            store, replies, s.stream, s.subject_prefix, s.claims_bucket, s.purge_timeout_s
        )
        try:
            yield SessionsClient(
                nc, store, Sessions(reader, s, stream=ledger), LedgerWriter(store), purger
            )
        finally:
            if channel is not None:
                await channel.close()
    finally:
        await release(nc)
