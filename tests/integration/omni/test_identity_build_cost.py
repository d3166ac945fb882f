"""Building one identity out of many: every merge read the survivor's whole history
four times (is it merged? did someone finish this merge? does it close a cycle?), and
every link read the identity's whole history once, so building an identity of 800 merges
took 188 s (200: 10.5 s). An identity's merge facts are read on from where they were
left: a merge or a link reads the events recorded since, not the history."""

from __future__ import annotations

from typing import Any

import pytest

from jetsource.ingest.server import Ingest

pytestmark = pytest.mark.integration


async def test_a_merge_and_a_link_read_what_was_recorded_since_not_the_history(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = ingest.identities
    survivor = await ids.create("Survivor", "t")
    for i in range(30):
        other = await ids.create(f"O{i}", "t")
        await ids.link(other, "discord", f"9100{i:014d}", actor="t")
        await ids.merge(survivor, other, actor="t")
        await ids.link(survivor, "discord", f"9200{i:014d}", actor="t")
    read: list[int] = []
    read_aggregate = ingest.store.read_aggregate

    async def counted(aggregate_id: str, *args: Any, **kwargs: Any) -> Any:
        records = await read_aggregate(aggregate_id, *args, **kwargs)
        if aggregate_id == survivor:
            read.append(len(records))
        return records

    monkeypatch.setattr(ingest.store, "read_aggregate", counted)
    last = await ids.create("Last", "t")
    await ids.link(last, "discord", "91009999999999", actor="t")
    await ids.merge(survivor, last, actor="t")
    await ids.link(survivor, "discord", "92009999999999", actor="t")
    # the survivor holds 61 events: each read is of the one or two recorded since
    assert read and sum(read) <= 6, read
    handles = await ids.handles_of(survivor)
    assert len(handles) == 62
    assert (await ids.lookup("discord", "91009999999999")) == survivor
