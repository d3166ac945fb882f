"""Helpers for projector tests: isolated settings, seeded stories, model digests."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from jetsource._gen.context.v1 import events_pb2 as ev
from jetsource.core.envelope import AppendResult, NewEvent
from jetsource.core.settings import JetsourceSettings, SnapshotSettings
from jetsource.domains.context.model import ContextState, fold
from jetsource.domains.context.samples import story_events
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.host import ProjectorService
from jetsource.projection.settings import ProjectorOptions, ProjectorSettings
from tests.eventstore_fixtures import isolated_settings


def isolated_snapshots(unique: str, **overrides: Any) -> SnapshotSettings:
    return SnapshotSettings(
        stream=f"SN_{unique}", subject_prefix=f"sn{unique}.snapshots", **overrides
    )


def projector_settings(
    base: JetsourceSettings,
    unique: str,
    snapshots: dict[str, Any] | None = None,
    **options: Any,
) -> ProjectorSettings:
    """Every name a projector touches made unique: stream, subjects, snapshots, DLQ,
    control bucket, Valkey prefix and graph labels, so tests share the servers."""
    defaults: dict[str, Any] = {
        "http_port": 0,
        "dlq_stream": f"DLQ_{unique}",
        "dlq_subject_prefix": f"dlq{unique}",
        "control_bucket": f"RM_{unique}",
        "valkey_prefix": f"t{unique}",
        "graph_label_prefix": f"T{unique}",
        "backoff_s": [0.05, 0.05, 0.05, 0.05, 0.05],
        "waiting_delay_s": 0.02,
        "pull_expires_s": 1.0,
    }
    defaults.update(options)
    return ProjectorSettings(
        nats=base.nats,
        valkey=base.valkey,
        graph=base.graph,
        eventstore=isolated_settings(unique),
        snapshots=isolated_snapshots(unique, **(snapshots or {})),
        projector=ProjectorOptions(**defaults),
    )


@contextlib.asynccontextmanager
async def projection_of(
    settings: JetsourceSettings,
    unique: str,
    models: tuple[str, ...] = ("context",),
    versions: tuple[int, ...] = (1,),
) -> AsyncIterator[Projection]:
    """A projection under the test's names (``projector_settings``); each of ``versions``
    of each of ``models`` dropped after, then the projection closed."""
    p = await open_projection(projector_settings(settings, unique))
    try:
        yield p
    finally:
        for name in models:
            for version in versions:
                await p.model(name, version).drop()
        await p.close()


@contextlib.asynccontextmanager
async def context_projection(
    settings: JetsourceSettings, unique: str, versions: tuple[int, ...] = (1, 2, 3)
) -> AsyncIterator[Projection]:
    """A projection of the context model alone, the control bucket polled every 0.2 s
    (admin tests cut over and drop); ``versions`` of the model dropped after."""
    p = await open_projection(projector_settings(settings, unique, control_poll_s=0.2))
    p.settings.projector.models = ["context"]
    try:
        yield p
    finally:
        for version in versions:
            await p.model("context", version).drop()
        await p.close()


@contextlib.asynccontextmanager
async def running_projector(
    settings: JetsourceSettings, unique: str
) -> AsyncIterator[tuple[ProjectorSettings, Projection]]:
    """A projector service running every model under the test's names (as `jetsource
    projector run` would), and a projection of its own to append and read with: the
    settings and that projection. The models' first versions are dropped after."""
    base = projector_settings(settings, unique)
    service = ProjectorService(await open_projection(base))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    p = await open_projection(base, provision=False)
    try:
        yield base, p
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        for name in ("context", "timeline", "graph"):
            with contextlib.suppress(Exception):
                await service.projection.model(name, 1).drop()
        await service.projection.close()
        await p.close()


async def append_story(p: Projection, author: str, actor: bool = False) -> AppendResult:
    """Story s1, created by ``author`` (recorded as its actor too when ``actor``) with one
    decision of theirs: two events, appended to a new story."""
    metadata = {"actor": author} if actor else {}
    return await p.store.append(
        "s1",
        [
            NewEvent(ev.ContextCreated(title="T", created_by=author), metadata=metadata),
            NewEvent(ev.DecisionAdded(decision_id="d1", author=author, title="D")),
        ],
        0,
    )


async def create_contexts(p: Projection, actors: dict[str, str]) -> None:
    """Each story of ``actors`` created (title "t") through a real publisher on the
    projection's stream, over gRPC, by its actor (the command's ``options.actor``, its
    idempotency key "k" and the story's id), one after the other, in that order."""
    import grpc

    from jetsource._gen.context.v1 import commands_pb2 as pb
    from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
    from jetsource.core.settings import NatsSettings
    from jetsource.publisher.server import build
    from jetsource.publisher.settings import PublisherOptions, PublisherSettings

    publisher = await build(
        PublisherSettings(
            nats=NatsSettings(url=p.settings.nats_url()),
            eventstore=p.settings.eventstore,
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
            stub = pb_grpc.ContextCommandServiceStub(channel)
            for story, actor in actors.items():
                request = pb.CreateContextRequest(context_id=story, title="t")
                request.options.idempotency_key = f"k{story}"
                request.options.actor = actor
                await stub.CreateContext(request, timeout=10)
    finally:
        await publisher.stop(0)


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Ask ``check`` until it says yes (an AssertionError counts as not yet), every 0.05 s
    and 200 times at most; it fails nothing itself: the test's asserts after it do."""
    for _ in range(200):
        with contextlib.suppress(AssertionError):
            if await check():
                return
        await asyncio.sleep(0.05)


async def timeline_reached(p: Projection, seq: int) -> bool:
    """Whether the timeline model's (v1) checkpoint is at ``seq`` or past it."""
    return (await p.model("timeline", 1).checkpoint()).seq >= seq


async def build_context_v1(p: Projection) -> Any:
    """Version 1 of the context model, applied up to the stream's end: the model."""
    from jetsource.projection.runtime import Worker

    await p.control.ensure("context", 1)
    v1 = p.model("context", 1)
    await Worker(p.nc, p.store, v1, p.dead_letters, p.settings.projector).run(until_caught_up=True)
    return v1


async def two_live_context_versions(p: Projection) -> tuple[Any, Any]:
    """Context v1 built, v2 rebuilt beside it and cut over to: both live, v2 active."""
    from jetsource.projection import admin

    v1 = await build_context_v1(p)
    await admin.rebuild(p, "context", 2)
    await admin.cutover(p, "context", 2)
    return v1, p.model("context", 2)


def story_ids(n: int, tag: str = "s") -> list[str]:
    return [f"{tag}{i:04d}" for i in range(n)]


def process_query_settings(ps: ProjectorSettings, **options: Any) -> Any:
    """A process query service's settings on a projector's (unique names and servers
    shared), its gRPC and metrics ports picked by the system; ``options`` more of its own."""
    from jetsource.processquery.settings import ProcessQueryOptions, ProcessQuerySettings

    shared = {name: getattr(ps, name) for name in JetsourceSettings.model_fields}
    return ProcessQuerySettings(
        **shared,
        projector=ps.projector,
        process_query=ProcessQueryOptions(grpc_port=0, metrics_port=0, **options),
    )


async def seed(
    store: JetStreamEventStore, stories: list[str], events: int, seed: int = 0, batch: int = 1
) -> dict[str, list[Message]]:
    """Append a valid history of ``events`` events to each story (concurrently)."""
    histories = {s: story_events(s, events, seed) for s in stories}

    async def write(story: str) -> None:
        history = histories[story]
        for i in range(0, len(history), batch):
            chunk = [NewEvent(m) for m in history[i : i + batch]]
            await store.append(story, chunk, i)

    await asyncio.gather(*(write(s) for s in stories))
    return histories


def expected_state(story: str, history: list[Message]) -> ContextState:
    return fold(history, context_id=story)


async def drop_partition_mirrors(p: Any, count: int) -> None:
    """Delete the partition mirrors a partitioned projection made on the session's
    server, so later tests on the shared streams run without them (each mirror joins
    its stream's direct-get responders: reads stay right, see
    ``test_partitions.py::test_reads_of_a_partitioned_stream_are_answered_by_the_origin``,
    but a stream with mirrors costs the later tests' reads some retries)."""
    from jetsource.eventstore import jsapi
    from jetsource.projection.partitions import mirror_stream

    for store in p.stores.values():
        await store.start()
        name = mirror_stream(store.settings.stream, count)
        try:
            await jsapi.api(store._replies, f"STREAM.DELETE.{name}", {}, 5.0)
        except jsapi.JsApiError as exc:
            if exc.err_code != jsapi.ERR_STREAM_NOT_FOUND:
                raise


def start_projector(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The projector as its own process, as in production, its output appended to
    ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "jetsource.projector.server"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
