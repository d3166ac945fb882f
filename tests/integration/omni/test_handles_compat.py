"""The handles bucket stays readable by the previous release: against real NATS and Valkey.

The previous release writes and reads an ``OMNI_HANDLES`` entry as the identity id
alone; during a rolling upgrade (two ingress replicas) or after a rollback it reads what
this release wrote. So the entry's value stays the identity id, and the stream sequence
of the assignment travels in the entry's header. An entry the previous release wrote
(a plain ``kv.put``, no header) is read as sequence 0 and settled forward by the next
link, and an earlier owner it puts back over a later assignment is settled forward
again by the services following the stream."""

from __future__ import annotations

import pytest
from nats.js.kv import KeyValue

from jetsource._gen.omni.v1.lifecycle_pb2 import ExternalIdLinked
from jetsource.domains.omni.events import handle_key
from jetsource.domains.omni.identity import ASSIGNMENT_SEQ, IdentityService
from jetsource.ingest.server import Ingest
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.test_identity_races import (
    assert_agree,
    eventually,
    fresh_lookup,
    service,
    services,
)

pytestmark = pytest.mark.integration
__all__ = ["services"]  # the fixture, shared with the race tests


async def link_seq(ingest: Ingest, identity_id: str, external_id: str) -> int:
    """The stream sequence of the identity's latest link of the handle."""
    return [
        r.stream_seq
        for r in await ingest.store.read_aggregate(identity_id)
        if isinstance(r.event, ExternalIdLinked) and r.event.external_id == external_id
    ][-1]


async def stored(kv: KeyValue, ingest: Ingest, key: str) -> tuple[bytes, str | None]:
    """What the previous release reads (``kv.get``'s value), and the entry's header
    (the last message on its subject, as the stream's leader holds it)."""
    value = (await kv.get(key)).value
    bucket = ingest.identities._o.identity_bucket
    msg = await ingest.nc.jetstream().get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}")
    return value or b"", (msg.headers or {}).get(ASSIGNMENT_SEQ)


async def test_the_entry_is_the_plain_identity_id_with_its_sequence_in_a_header(
    ingest: Ingest, services: list[IdentityService]
) -> None:
    handle = ("whatsapp", "4915100000888")
    key = handle_key(*handle)
    kv = await ingest.identities.kv()
    first = await ingest.identities.resolve(*handle, "acme")
    assert await stored(kv, ingest, key) == (
        first.encode(),
        str(await link_seq(ingest, first, handle[1])),
    )
    writer = services[0]
    a = await writer.create("A", actor="test")
    assert await writer.link(a, *handle, actor="test") == first
    assert await stored(kv, ingest, key) == (a.encode(), str(await link_seq(ingest, a, handle[1])))

    # A deleted entry is none until it is settled again from the stream: A's explicit
    # link is there, and outranks the first contact whatever a resolve meanwhile wrote.
    await kv.delete(key)
    assert await fresh_lookup(ingest, *handle) is None
    assert await writer.resolve(*handle, "acme") in (first, a)

    async def back() -> bool:
        return await fresh_lookup(ingest, *handle) == a

    await eventually("the entry never went back to the explicit link", back)
    assert (await stored(kv, ingest, key))[0] == a.encode()


async def test_an_entry_written_by_the_previous_release_is_settled_forward(
    ingest: Ingest, projection: Projection, services: list[IdentityService]
) -> None:
    writer = services[0]  # follows nothing: only the ingress settles from the stream
    handle = ("discord", "4242")
    key = handle_key(*handle)
    kv = await writer.kv()
    old = await writer.create("old", actor="test")
    a = await writer.create("A", actor="test")

    # 1. The previous release's entry: the identity id alone, sequence 0.
    await kv.put(key, old.encode())
    assert await fresh_lookup(ingest, *handle) == old

    async def ingress_says(owner: str) -> bool:
        return await ingest.identities.lookup(*handle) == owner

    await eventually("the ingress cache never heard the plain entry", lambda: ingress_says(old))

    # The next link settles it forward, in the new encoding.
    assert await writer.link(a, *handle, actor="test") == old
    at = await link_seq(ingest, a, handle[1])
    assert await stored(kv, ingest, key) == (a.encode(), str(at))

    # 2. A previous release's writer finishing late puts an earlier owner back over the
    # later assignment: the ingress, following the stream, settles it forward again.
    await kv.put(key, old.encode())

    async def repaired() -> bool:
        return await stored(kv, ingest, key) == (a.encode(), str(at))

    await eventually("the plain entry was never settled forward", repaired)
    await eventually("the ingress cache never followed", lambda: ingress_says(a))

    # 3. A service that starts reads the entries' sequences from their headers.
    starting, nc = await service(ingest, follow=False)
    try:
        await starting._load_known()
        assert starting._known[key] == at
    finally:
        await starting.close()
        await nc.drain()
    await assert_agree(ingest, projection, [handle], [old, a])
