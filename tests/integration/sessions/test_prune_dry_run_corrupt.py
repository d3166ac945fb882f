"""A dry-run prune counts the events of a session whose last message is corrupt (a
hostile publish on its subject): what the prune removes, not a silent 0.

The list reads each session's tail; a corrupt one is listed with no count (and says
so), and the dry run added that 0 to its events. It now counts the messages the stream
holds on the process's subjects (what the purge removes); with no stream to count on
it names the process as not counted. Real NATS."""

from __future__ import annotations

from typing import Any, cast

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import session
from jetsource.domains.sessions.service import Sessions

from .test_prune import child_of


class NotTheStream:
    """The ledger reader behind another face (as the query reader is): the Sessions
    over it has no stream to count on."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


async def _poisoned(client: SessionsClient) -> tuple[str, str]:
    async with session(client.writer, "poisoned later") as s:
        s.emit("scan_started", {"root": "/"})
    nested = await child_of(client, s.id)
    prefix = client.store.settings.subject_prefix
    await client.nc.jetstream().publish(f"{prefix}.{s.id}.scan_progress", b"\xff")
    await client.nc.jetstream().publish(f"{prefix}.{nested}.process_progress", b"\xff")
    return s.id, nested


async def test_a_dry_run_counts_what_a_session_with_a_corrupt_event_holds(
    client: SessionsClient,
) -> None:
    sid, _nested = await _poisoned(client)
    listed = {r.session_id: r for r in await client.sessions.list_sessions()}
    assert listed[sid].event_count == 0 and "corrupt" in listed[sid].error  # listed, says so

    plan = await client.sessions.prune(None, older_than_s=0.001, keep=0, dry_run=True)
    assert [r.session_id for r in plan.pruned] == [sid]
    # started, scan_started, ended and the corrupt one; the child's two and its corrupt one
    assert plan.events == 7, plan.events  # was 0 (+0 for the child)
    assert plan.uncounted == []
    assert plan.to_dict()["uncounted"] == []

    report = await client.sessions.prune(client.purger, older_than_s=0.001, keep=0)
    assert [r.session_id for r in report.pruned] == [sid]
    assert report.events == plan.events  # what the dry run said is what went


async def test_with_no_stream_to_count_on_the_dry_run_names_what_it_did_not_count(
    client: SessionsClient,
) -> None:
    sid, nested = await _poisoned(client)
    s = Sessions(cast(Any, NotTheStream(client.sessions.reader)), client.sessions.settings)
    assert s.stream is None
    plan = await s.prune(None, older_than_s=0.001, keep=0, dry_run=True)
    assert [r.session_id for r in plan.pruned] == [sid]
    assert sorted(plan.uncounted) == sorted([sid, nested])  # was a silent 0
    assert plan.events == 0
    assert plan.to_dict()["uncounted"] == plan.uncounted
