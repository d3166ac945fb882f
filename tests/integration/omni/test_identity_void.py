"""An operator's void of an identity's link (`jetsource repair void`): the handles bucket,
written forward only, kept naming the voided link's identity for ever, so after the
rebuild that puts the read model right (README, repair void) FindIdentity named the first
contact while every webhook of the handle was still stored with the voided link's
identity. The services following the stream settle such an entry again to the latest
assignment that stands (or delete it when none does), as the void is heard and at start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

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


async def test_a_voided_merge_settles_all_its_handles_in_one_read(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge moves every handle of the merged identity; its void settled each handle
    with its own read of every link and merge in the stream (6 handles: 6 reads)."""
    ids = ingest.identities
    survivor = await ids.create("Survivor", "t")
    merged = await ids.create("Merged", "t")
    handles = [("discord", f"8035111022467{n:04d}") for n in range(6)]
    for handle in handles:
        await ids.link(merged, *handle, actor="t")
    await ids.merge(survivor, merged, actor="t")
    for handle in handles:
        await eventually(ingest, handle, survivor)
    reads: list[int] = []
    standing = ids._standing

    async def counted(keys: set[str]) -> dict[str, tuple[str, int, int]]:
        reads.append(len(keys))
        return await standing(keys)

    monkeypatch.setattr(ids, "_standing", counted)
    merge_seq = (await ingest.store.read_aggregate(survivor))[-1].stream_seq
    history = await ingest.store.read_aggregate(merged)
    await ingest.store.void(merge_seq, "wrong merge", "t")
    await ingest.store.void(history[-1].stream_seq, "wrong merge", "t")
    for handle in handles:
        await eventually(ingest, handle, merged)
    assert sum(reads) == len(handles) and len(reads) <= 2, reads


async def test_a_void_is_settled_after_more_failures_than_it_used_to_try(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settling after a void gave up after five failed tries (NATS away ~9 s), and the
    handle named the voided link's identity until the next start."""
    ids = ingest.identities
    handle = ("discord", "80351110224670090")
    before = await ids.create("Before", "t")
    await ids.link(before, *handle, actor="t")
    after = await ids.create("After", "t")
    await ids.link(after, *handle, actor="t")
    await eventually(ingest, handle, after)
    failures = 0
    standing = ids._standing

    async def failing(keys: set[str]) -> dict[str, tuple[str, int, int]]:
        nonlocal failures
        if failures < 8:
            failures += 1
            raise TimeoutError("nats away")
        return await standing(keys)

    monkeypatch.setattr(ids, "_standing", failing)
    monkeypatch.setattr(asyncio, "sleep", _quick(asyncio.sleep))
    await ingest.store.void(await link_seq(ingest, after), "wrong link", "t")
    await eventually(ingest, handle, before)
    assert failures == 8


def _quick(sleep: Callable[..., Awaitable[object]]) -> Callable[..., Awaitable[object]]:
    async def quick(delay: float, *args: object) -> object:
        return await sleep(min(delay, 0.01), *args)

    return quick
