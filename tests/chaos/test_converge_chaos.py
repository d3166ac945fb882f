"""Chaos rows for faults that empty a read model's store (`make chaos`).

`restart-valkey` restarts Valkey with its data (append-only file). These rows empty
it, under the load of every chaos row (8 writers, every command retried with its
idempotency key until confirmed):

- `flushall-valkey`: FLUSHALL twice, 3 s apart, while the projector writes;
- `flushall-valkey-projector-down`: the projector killed, Valkey emptied, the
  projector started again (a Valkey restarted without persistence).

Each row checks what every row checks (every model equals a clean rebuild and counts
each event once, nothing lost or doubled, no dead letters) and bounds the time from
the last wipe to every model at the stream head: the whole stream is the backlog of
the Valkey models (context, timeline), built again from the replay start at half the
row's clean rebuild rate at least, + 10 s. Before the birth mark the Valkey models
stayed partial for good and the row failed on the digests.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest
from valkey.asyncio import Valkey

from jetsource.core.settings import JetsourceSettings
from tests.chaos.harness import HEADER, Run, Stack, applied, line, scenario, start_stack
from tests.infra import Server

pytestmark = pytest.mark.e2e


async def _flushall(run: Run) -> None:
    client = Valkey.from_url(run.stack.valkey.address())
    try:
        await client.flushall()
    finally:
        await client.aclose()
    run.restarted_at = time.monotonic()
    run.applied_at_restart = await applied(run)
    run.since = "last wipe"


async def flushall_valkey(run: Run) -> str:
    for _ in range(2):
        await asyncio.sleep(3.0)
        await _flushall(run)
    return "valkey FLUSHALL x2 under load"


async def flushall_projector_down(run: Run) -> str:
    await asyncio.sleep(3.0)
    run.services.kill("projector", signal.SIGKILL)
    await asyncio.sleep(0.3)
    await _flushall(run)
    await asyncio.to_thread(run.services.start, "projector")
    return "projector killed, valkey FLUSHALL, projector started"


ROWS = {
    "flushall-valkey": flushall_valkey,
    "flushall-valkey-projector-down": flushall_projector_down,
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, graph_server: Server) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("converge-chaos"), graph_server)
    yield s
    s.stop()


@pytest.mark.chaos
@pytest.mark.timeout(480)
@pytest.mark.parametrize("name", list(ROWS))
async def test_converge_chaos(name: str, stack: Stack, settings: JetsourceSettings) -> None:
    row = await scenario(name, stack, settings, ROWS[name])
    print("\n" + "\n".join([HEADER, line(row)]), flush=True)
    assert row.passed, "\n".join([HEADER, line(row)])
