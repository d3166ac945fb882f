"""ListIdentities paged while identities change: an identity that holds a handle of the
provider for the whole scan is listed once, whatever links land meanwhile."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.server import Ingest
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration


async def scan(http: httpx.AsyncClient, provider: str, first: list[str], token: str) -> list[str]:
    seen = list(first)
    while token:
        page = (
            await http.get(
                "/api/v1/identities",
                params={"provider": provider, "page_size": 1, "page_token": token},
            )
        ).json()
        seen += [i["identity_id"] for i in page["identities"]]
        token = page["next_page_token"]
    return seen


async def test_a_scan_of_identities_misses_none_that_a_link_moves(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    """The provider's index was scored by each identity's latest link of one of its
    handles: a link during a scan moved an identity from below the page cursor to above
    it, and the scan never listed it (one of three missed). Each keeps the place of its
    first handle of the provider now."""
    ids = ingest.identities
    people = [await ids.create(f"P{i}", "t") for i in range(3)]
    for i, person in enumerate(people):
        await ids.link(person, "discord", f"99000000000000000{i}", "t")
    await caught_up(projection)
    first = (
        await http.get("/api/v1/identities", params={"provider": "discord", "page_size": 1})
    ).json()
    assert [i["identity_id"] for i in first["identities"]] == [people[2]]
    # while the scan goes on, the oldest gets another handle, then the newest
    await ids.link(people[0], "discord", "990000000000000008", "t")
    await ids.link(people[2], "discord", "990000000000000009", "t")
    await caught_up(projection)
    seen = await scan(http, "discord", [people[2]], first["next_page_token"])
    assert seen == people[::-1]
    # a merge's record moves the handles to the survivor: it keeps its place too
    await ids.merge(people[1], people[0], "t")
    await caught_up(projection)
    listed = (await http.get("/api/v1/identities", params={"provider": "discord"})).json()
    assert [i["identity_id"] for i in listed["identities"]] == [people[2], people[1]]
    # and a rebuild, which may apply in other batches, places them the same
    try:
        await admin.rebuild(projection, "omni_identities", 2)
        live, rebuilt = (projection.model("omni_identities", v) for v in (1, 2))
        assert await rebuilt.digest() == await live.digest()
    finally:
        await projection.model("omni_identities", 2).drop()
