"""One owner per handle, whatever races and faults: against real NATS and Valkey.

Two links of one handle to different identities at the same moment were both recorded
and then ``kv.put`` last-wins: the bucket said one identity, the read models (which
moved the handle from the ``previous_identity_id`` each link read) said both. Now the
latest assignment in the stream holds the handle, the bucket is written forward only
(compare-and-set, by stream sequence) and the read model takes the same rule, so every
read agrees. A writer stopped between its append and the bucket write is finished by
the services following the stream, by the next link or merge of the handle, or by any
service that starts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked, IdentitiesMerged
from jetsource.core.errors import ConcurrencyError, ValidationError
from jetsource.domains.omni.events import first_contact_identity
from jetsource.domains.omni.identity import IdentityService, assignments
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.ingest.server import Ingest
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.calls import Counted
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration
MODEL = "omni_identities"


async def service(
    ingest: Ingest, follow: bool = False, **options: Any
) -> tuple[IdentityService, NATS]:
    """Another process's identity service: its own connection and cache (the ingress's
    omni options, but ``options``)."""
    url = ingest.nc.connected_url
    assert url is not None
    nc = await nats.connect(url.geturl())
    store = JetStreamEventStore(nc, ingest.store._registry, ingest.store.settings)
    ids = IdentityService(nc, store, ingest.identities._o.model_copy(update=options))
    await ids.start(follow=follow)
    return ids, nc


@pytest.fixture
async def services(ingest: Ingest) -> AsyncIterator[list[IdentityService]]:
    made = [await service(ingest) for _ in range(3)]
    yield [s for s, _ in made]
    for s, nc in made:
        await s.close()
        await nc.drain()


async def owner_in_stream(ingest: Ingest, provider: str, external_id: str) -> str:
    """The identity of the handle's latest explicit assignment in the stream, else of
    its first contact (which any explicit link outranks, landed before or after it)."""
    latest, owner = -1, ""
    prefix = ingest.store.settings.subject_prefix
    for event_type in ("ExternalIdLinked", "IdentitiesMerged"):
        async for r in ingest.store.read_all(subject_filter=f"{prefix}.*.{event_type}"):
            e = r.event
            automatic = (
                isinstance(e, ExternalIdLinked)
                and e.linked_by == "first_contact"
                and r.aggregate_id == first_contact_identity(e.provider, e.external_id)
            )
            order = 0 if automatic else r.stream_seq
            for p, x, identity in assignments(r):
                if (p, x) == (provider, external_id) and order > latest:
                    latest, owner = order, identity
    return owner


async def fresh_lookup(ingest: Ingest, provider: str, external_id: str) -> str | None:
    ids, nc = await service(ingest)
    try:
        return await ids.lookup(provider, external_id)
    finally:
        await ids.close()
        await nc.drain()


async def eventually(what: str, check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def assert_agree(
    ingest: Ingest,
    projection: Projection,
    handles: list[tuple[str, str]],
    identities: list[str],
    rebuild_to: int = 2,
) -> dict[tuple[str, str], str]:
    """Bucket, handles_of, the ingress's cache, gRPC GetIdentity / FindIdentity /
    ListIdentities and a side-by-side rebuild of the read model all say the owner the
    stream says."""
    owners = {h: await owner_in_stream(ingest, *h) for h in handles}
    reader, nc = await service(ingest)
    try:
        for h, owner in owners.items():
            assert owner, h
            assert await reader.lookup(*h) == owner, (h, "bucket")
            for identity in identities:
                held = h in await reader.handles_of(identity)
                assert held == (identity == owner), (h, identity, owner, "handles_of")

            async def cached(h: tuple[str, str] = h, owner: str = owner) -> bool:
                return await ingest.identities.lookup(*h) == owner

            await eventually(f"the ingress cache never followed {h}", cached)
    finally:
        await reader.close()
        await nc.drain()
    await caught_up(projection)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        stub = query_pb2_grpc.OmniQueryServiceStub(channel)
        for h, owner in owners.items():
            found = await stub.FindIdentity(
                pb.FindIdentityRequest(provider=h[0], external_id=h[1]), timeout=10
            )
            assert found.identity.identity_id == owner, (h, "FindIdentity")
        for identity in identities:
            view = (await stub.GetIdentity(pb.GetIdentityRequest(identity_id=identity))).identity
            got = {(x.provider, x.external_id) for x in view.handles}
            want = {h for h, o in owners.items() if o == identity}
            assert got & set(owners) == want, (identity, "GetIdentity")
        for provider in {p for p, _ in handles}:
            listed: set[str] = set()
            token = ""
            while True:
                page = await stub.ListIdentities(
                    pb.ListIdentitiesRequest(provider=provider, page_token=token)
                )
                listed |= {i.identity_id for i in page.identities}
                token = page.next_page_token
                if not token:
                    break
            holders = {o for (p, _), o in owners.items() if p == provider}
            assert listed == holders, (provider, "ListIdentities")
    try:
        report = await admin.rebuild(projection, MODEL, rebuild_to)
        assert report.applied > 0
        rebuilt, live = projection.model(MODEL, rebuild_to), projection.model(MODEL, 1)
        assert await rebuilt.digest() == await live.digest(), "rebuilt differs from live"
    finally:
        await projection.model(MODEL, rebuild_to).drop()
    return owners


async def test_concurrent_links_of_one_handle_leave_one_owner_everywhere(
    ingest: Ingest, projection: Projection, services: list[IdentityService]
) -> None:
    rnd = random.Random(7)
    identities = [await services[0].create(f"person {k}", actor="test") for k in range(4)]
    handles = []
    for round_ in range(6):
        handle = ("discord", f"9{round_:03d}")
        handles.append(handle)
        if round_ % 2:  # met before: the links move it from its first-contact identity
            identities.append(await ingest.identities.resolve(*handle, "bot"))
        calls = []
        for k in range(12):
            target = rnd.choice(identities[:4])
            calls.append(services[k % 3].link(target, *handle, actor=f"admin{k}"))
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for a in answers:  # an identity moved by another link: retried, else a conflict
            assert isinstance(a, str | ConcurrencyError), a
    # A merge moving a handle while links move it elsewhere: the latest in the stream
    # holds it (the merge's survivor record, or a link after it).
    for round_ in range(3):
        handle = ("discord", f"8{round_:03d}")
        handles.append(handle)
        merged = await ingest.identities.resolve(*handle, "bot")
        survivor = await services[0].create(f"survivor {round_}", actor="test")
        identities += [merged, survivor]
        racing = [
            services[1].merge(survivor, merged, actor="test"),
            *(services[k % 3].link(identities[k % 4], *handle, actor="x") for k in range(4)),
        ]
        outcomes = await asyncio.gather(*racing, return_exceptions=True)
        assert isinstance(outcomes[0], list | ConcurrencyError), outcomes[0]
    await assert_agree(ingest, projection, handles, identities)


async def test_a_link_whose_bucket_write_failed_converges(
    ingest: Ingest,
    projection: Projection,
    services: list[IdentityService],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer = services[0]
    a = await writer.create("A", actor="test")
    b = await writer.create("B", actor="test")
    handle = ("whatsapp", "4915100000777")
    first = await ingest.identities.resolve(*handle, "acme")
    settle = writer._settle

    async def nats_away(*args: Any) -> str:
        raise NatsTimeoutError

    # 1. The link's append landed, its bucket write did not: the started services
    # (the ingress) follow the stream and settle the bucket.
    monkeypatch.setattr(writer, "_settle", nats_away)
    with pytest.raises(NatsTimeoutError):
        await writer.link(a, *handle, actor="test")

    async def repaired() -> bool:
        return await fresh_lookup(ingest, *handle) == a

    await eventually("the bucket never caught up with the link", repaired)
    await assert_agree(ingest, projection, [handle], [first, a, b])

    # 2. With nobody following: the same link again finishes it, writing nothing twice.
    await ingest.identities.close()  # the ingress stops following (and caching)
    with pytest.raises(NatsTimeoutError):
        await writer.link(b, *handle, actor="test")
    assert await fresh_lookup(ingest, *handle) == a  # behind the stream now
    monkeypatch.setattr(writer, "_settle", settle)
    before = len(await ingest.store.read_aggregate(b))
    assert await writer.link(b, *handle, actor="test") == a
    assert len(await ingest.store.read_aggregate(b)) == before  # not linked twice
    assert await fresh_lookup(ingest, *handle) == b

    # 3. A merge stopped after its first append (the survivor's record missing) and
    # after its appends (the bucket behind): the same merge again finishes it and is
    # refused, as any merge of a merged identity, naming merged_id.
    c = await writer.create("C", actor="test")
    other = ("discord", "777")
    await writer.link(b, *other, actor="test")
    store = writer._store
    real_append = store.append

    async def survivor_append_fails(aggregate_id: str, *args: Any, **kw: Any) -> Any:
        if aggregate_id == c:
            raise NatsTimeoutError
        return await real_append(aggregate_id, *args, **kw)

    monkeypatch.setattr(store, "append", survivor_append_fails)
    with pytest.raises(NatsTimeoutError):
        await writer.merge(c, b, actor="test")
    monkeypatch.setattr(store, "append", real_append)
    assert await fresh_lookup(ingest, *other) == b
    with pytest.raises(ValidationError) as again:
        await writer.merge(c, b, actor="test")
    assert again.value.field == "merged_id"
    merged_records = [
        r for r in await ingest.store.read_aggregate(c) if isinstance(r.event, IdentitiesMerged)
    ]
    assert len(merged_records) == 1  # the survivor's record, once
    assert await fresh_lookup(ingest, *other) == c
    assert await fresh_lookup(ingest, *handle) == c

    # 4. A writer gone with the bucket behind, nobody following: a service that starts
    # (an ingress) settles it from the stream.
    d = await writer.create("D", actor="test")
    monkeypatch.setattr(writer, "_settle", nats_away)
    with pytest.raises(NatsTimeoutError):
        await writer.link(d, *other, actor="test")
    assert await fresh_lookup(ingest, *other) == c
    starting, nc = await service(ingest, follow=True)
    try:

        async def settled() -> bool:
            return await fresh_lookup(ingest, *other) == d

        await eventually("a starting service never settled the bucket", settled)
    finally:
        await starting.close()
        await nc.drain()
    await ingest.identities.start()  # following again, for the reads below
    await assert_agree(ingest, projection, [handle, other], [first, a, b, c, d], rebuild_to=3)


@pytest.mark.parametrize("watching", [True, False])
async def test_followers_settle_only_what_writers_left(
    ingest: Ingest, services: list[IdentityService], watching: bool
) -> None:
    """Every service following the stream settled each link into the bucket as it came,
    re-reading (and racing to write) the handle its writer was writing that moment: a
    first contact cost the bucket twice its work per follower. A follower now waits
    ``identity_settle_delay_s`` and settles only what the watched bucket has not shown
    settled by then. One that does not watch the bucket (no cache) is told nothing and
    reads each one at once (the count below can fail)."""
    delay = 1.0  # the default; a bucket update heard later than this is read again
    follower, nc = await service(
        ingest,
        follow=True,
        identity_settle_delay_s=delay,
        identity_cache_size=200 if watching else 0,
    )
    reads = Counted(follower, "_read")
    writer = services[0]
    try:
        tag = f"{random.randrange(10**6):06d}"
        handles = [("discord", f"8{tag}{k:011d}") for k in range(20)]
        for h in handles:
            await writer.resolve(*h, "bot")
        a = await writer.create("A", actor="test")
        await writer.link(a, *handles[0], actor="test")
        await asyncio.sleep(delay + 1.0)  # the follower has heard and judged them all
        if watching:
            assert reads.calls == 0, f"the follower read {reads.calls} handles its writer settled"
        else:
            assert reads.calls >= len(handles) + 1
        # A writer stopped between its append and the bucket: still settled, in a bound.
        b = await writer.create("B", actor="test")
        settle = writer._settle

        async def nats_away(*args: Any) -> str:
            raise NatsTimeoutError

        writer._settle = nats_away  # type: ignore[method-assign,assignment]
        with pytest.raises(NatsTimeoutError):
            await writer.link(b, *handles[1], actor="test")
        writer._settle = settle  # type: ignore[method-assign]
        t0 = time.monotonic()

        async def settled() -> bool:
            return await fresh_lookup(ingest, *handles[1]) == b

        await eventually("the bucket never caught up with the link", settled)
        took = time.monotonic() - t0
        assert took < delay + 3.0
        if watching:  # every follower waited the delay, for this link too (not the first)
            assert took >= 0.8 * delay, f"settled after {took:.2f}s"
    finally:
        await follower.close()
        await nc.drain()
