"""``sessions list`` reads the tails of the sessions it lists, not of every session.

The list (50 by default) read each session's tail (its last seq and when it was
recorded: two round trips on the stream reader, one GetProcess on the query reader)
before it cut the newest ``limit``, one at a time, so a ledger of 50,000 sessions made
50,000 reads in a row for a list of 50. Tails are read newest first now, a batch at a
time, until ``limit`` sessions are listed; the list is the same."""

from __future__ import annotations

import asyncio

from jetsource.domains.sessions.format import SESSION_KIND
from jetsource.domains.sessions.ledger import ProcessSummary
from jetsource.domains.sessions.service import TAIL_BATCH, Sessions

N = 400


class Reader:
    def __init__(self) -> None:
        self.tails = 0
        self.running = 0
        self.most = 0

    async def processes(self) -> dict[str, ProcessSummary]:
        found = {
            f"s{i:04d}": ProcessSummary(
                f"s{i:04d}",
                kind=SESSION_KIND,
                name="generate" if i % 3 else "deploy",
                status="completed",
                started_ns=(i * 7 % N + 1) * 1_000_000,
                ended_ns=(i * 7 % N + 2) * 1_000_000,
            )
            for i in range(N)
        }
        found["child"] = ProcessSummary("child", parent="s0001", kind="task")
        return found

    async def sessions(self) -> list[ProcessSummary]:
        return [
            p for p in (await self.processes()).values() if p.kind == SESSION_KIND and not p.parent
        ]

    async def take_errors(self, roots: list[ProcessSummary]) -> None:
        pass  # the summaries hold their errors (as the stream reader's)

    async def tail(self, process_id: str) -> tuple[int, int]:
        self.tails += 1
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0)
        self.running -= 1
        # every fifth session has no event yet: not listed
        return (0, 0) if int(process_id[1:]) % 5 == 0 else (3, 1)


async def test_a_limited_list_reads_the_tails_it_needs_newest_first() -> None:
    reader = Reader()
    sessions = Sessions(reader)  # type: ignore[arg-type]
    everyone = await sessions.list_sessions()
    assert len(everyone) == N - N // 5
    assert [r.started_ns for r in everyone] == sorted(
        (r.started_ns for r in everyone), reverse=True
    )
    assert reader.tails == N and 1 < reader.most <= TAIL_BATCH

    for limit, search in ((10, ""), (50, ""), (7, "deploy")):
        reader.tails = 0
        listed = await sessions.list_sessions(limit=limit, search=search)
        want = [r for r in everyone if search in r.command][:limit]
        assert [r.session_id for r in listed] == [r.session_id for r in want]
        assert reader.tails <= 2 * limit + TAIL_BATCH, (limit, reader.tails)  # was N
