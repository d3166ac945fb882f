"""ListIdentities costs its page, not the identities it passes over: every identity
looked at was its own round trip, and a page went on without bound past identities it
does not list (merged ones, without include_merged), so one page over 800 merged
identities made 801 reads (a page over 50,000 of them, 50,000 in a row). Identities are
read a batch per round trip now, a page looks at no more than SCAN_LIMIT of them (it
ends early with a token to go on, as a filtered event page does), and it ends by its
bytes as event pages do (identities with many handles)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource._gen.omni.v1.lifecycle_pb2 import IdentitiesMerged, IdentityCreated
from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.domains.omni import reads as reads_module
from jetsource.ingest.server import Ingest
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration

MERGED = 150


async def scan(ingest: Ingest, include_merged: bool, size: int) -> tuple[list[str], int]:
    listed: list[str] = []
    token, pages = "", 0
    while True:
        page, token = await ingest.reads.identities("", include_merged, size, token)
        listed += [v.identity_id for v in page]
        pages += 1
        if not token:
            return listed, pages


async def test_a_page_reads_identities_in_batches_and_looks_at_a_bounded_number(
    ingest: Ingest, projection: Projection, monkeypatch: pytest.MonkeyPatch
) -> None:
    survivor = await ingest.identities.create("S", "t")
    gate = asyncio.Semaphore(32)

    async def merged(i: int) -> str:
        identity_id = f"idn-{i:026d}"
        async with gate:
            await ingest.store.append(
                identity_id,
                [NewEvent(IdentityCreated(identity_id=identity_id, display_name=f"m{i}"))],
                NO_STREAM,
            )
            await ingest.store.append(
                identity_id,
                [NewEvent(IdentitiesMerged(survivor_id=survivor, merged_id=identity_id))],
                1,
            )
        return identity_id

    gone = await asyncio.gather(*[merged(i) for i in range(MERGED)])
    await caught_up(projection)

    calls = 0
    io = reads_module.valkey_io  # type: ignore[attr-defined]

    def counted(work: Any) -> Any:
        nonlocal calls
        calls += 1
        return io(work)

    monkeypatch.setattr(reads_module, "valkey_io", counted)
    listed, _ = await scan(ingest, False, 1)
    assert listed == [survivor]
    assert calls <= 12, calls  # was one round trip per identity passed over (150 and more)

    # Each page looks at SCAN_LIMIT at most: pages end early and the scan lists the same.
    monkeypatch.setattr(reads_module, "SCAN_LIMIT", 40)
    listed, pages = await scan(ingest, False, 1)
    assert listed == [survivor] and pages >= 3, pages
    everyone, _ = await scan(ingest, True, 7)
    assert sorted(everyone) == sorted([survivor, *gone]) and len(set(everyone)) == len(everyone)

    # A page ends by its bytes too, one identity at least, each listed once.
    monkeypatch.setattr(ingest.reads, "max_page_bytes", 300)
    small, pages = await scan(ingest, True, 50)
    assert small == everyone and pages > len(everyone) // 50 + 1, pages
