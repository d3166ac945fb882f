"""An operator's void of an identity's link (`jetsource repair void`): the handles bucket,
written forward only, kept naming the voided link's identity for ever, so after the
rebuild that puts the read model right (README, repair void) FindIdentity named the first
contact while every webhook of the handle was still stored with the voided link's
identity. The services following the stream settle such an entry again to the latest
assignment that stands (or delete it when none does), as the void is heard and at start."""

from __future__ import annotations

import asyncio
import time

import nats
import pytest

from jetsource.domains.omni.events import first_contact_identity
from jetsource.domains.omni.identity import IdentityService
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.ingest.server import Ingest

pytestmark = pytest.mark.integration


async def fresh_lookup(ingest: Ingest, provider: str, external_id: str) -> str | None:
    """What the bucket says now, read by a service with no cache and no follower."""
    url = ingest.nc.connected_url
    assert url is not None
    nc = await nats.connect(url.geturl())
    try:
        store = JetStreamEventStore(nc, ingest.store._registry, ingest.store.settings)
        service = IdentityService(nc, store, ingest.identities._o)
        await service.start(follow=False)
        try:
            return await service.lookup(provider, external_id)
        finally:
            await service.close()
    finally:
        await nc.drain()


async def eventually(ingest: Ingest, handle: tuple[str, str], want: str | None) -> None:
    deadline = time.monotonic() + 5
    while True:
        got = (await fresh_lookup(ingest, *handle), await ingest.identities.lookup(*handle))
        if got == (want, want):
            return
        assert time.monotonic() < deadline, f"{handle}: (bucket, cache) {got}, not {want}"
        await asyncio.sleep(0.05)


async def link_seq(ingest: Ingest, identity_id: str) -> int:
    return (await ingest.store.read_aggregate(identity_id))[-1].stream_seq


async def test_a_voided_link_gives_the_handle_back(ingest: Ingest) -> None:
    ids = ingest.identities
    met = ("whatsapp", "4915100000071")
    first = await ids.resolve(*met, "acme-cloud")
    assert first == first_contact_identity(*met)
    admin = await ids.create("Op", "t")
    await ids.link(admin, *met, actor="t")
    earlier = await ids.create("Earlier", "t")
    other = ("discord", "80351110224670071")
    await ids.link(earlier, *other, actor="t")
    later = await ids.create("Later", "t")
    await ids.link(later, *other, actor="t")
    new = ("whatsapp", "4915100000072")  # never met by a webhook
    await ids.link(admin, *new, actor="t")
    await eventually(ingest, met, admin)

    # each link voided: the handle goes back to the assignment before it
    for identity, handle, back in (
        (admin, new, None),  # nobody: met again as new
        (later, other, earlier),  # the earlier link
    ):
        await ingest.store.void(await link_seq(ingest, identity), "wrong link", "t")
        await eventually(ingest, handle, back)
    # the first contact, once the admin's link of it is voided
    history = await ingest.store.read_aggregate(admin)
    link = next(r for r in history if getattr(r.event, "external_id", "") == met[1])
    await ingest.store.void(link.stream_seq, "wrong link", "t")
    await eventually(ingest, met, first)
    assert (await ids.resolve(*met, "acme-cloud")) == first  # what a webhook gets


async def test_a_void_recorded_while_no_ingress_ran_is_settled_at_the_next_start(
    ingest: Ingest,
) -> None:
    ids = ingest.identities
    handle = ("discord", "80351110224670073")
    before = await ids.create("Before", "t")
    await ids.link(before, *handle, actor="t")
    after = await ids.create("After", "t")
    await ids.link(after, *handle, actor="t")
    await eventually(ingest, handle, after)
    await ids.close()  # no follower hears the void
    await ingest.store.void(await link_seq(ingest, after), "wrong link", "t")
    assert await fresh_lookup(ingest, *handle) == after
    # a process started now: its own connection and store
    url = ingest.nc.connected_url
    assert url is not None
    nc = await nats.connect(url.geturl())
    store = JetStreamEventStore(nc, ingest.store._registry, ingest.store.settings)
    restarted = IdentityService(nc, store, ids._o)
    await restarted.start()
    try:
        deadline = time.monotonic() + 5
        while await fresh_lookup(ingest, *handle) != before:
            assert time.monotonic() < deadline, "the next start never settled it"
            await asyncio.sleep(0.05)
        assert await restarted.lookup(*handle) == before
    finally:
        await restarted.close()
        await nc.drain()
        await ids.start()  # for the fixture's stop
