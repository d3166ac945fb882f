"""A max age longer than the years since 1678 (a policy meant as "keep it for
centuries"): the horizon, now less the max age, is before what int64 nanoseconds
hold. nats-server read such a start time wrapped round to the future, so the stream
looked wholly behind the horizon and compaction archived and purged all of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import Projection, open_projection
from tests.history_fixtures import append_history, save_snapshots
from tests.integration.archive.fixtures import compact_at, compacting_settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def projection(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> AsyncIterator[Projection]:
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    yield p
    await p.close()


async def test_a_horizon_before_1678_compacts_nothing(projection: Projection) -> None:
    p = projection
    records = await append_history(p.store, "old", 25, seed=1)
    await save_snapshots(p.snapshots, records, [10, 20])
    for year in (1500, 1000, 1):
        horizon = datetime(year, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        horizon_ns = (horizon.days * 86_400 + horizon.seconds) * 10**9
        report = (await compact_at(p, horizon_ns)).report
        assert (report.archived, report.purged) == (0, 0), (year, report)
        assert await p.store.horizon("old") is None
        assert len(await p.store.read_aggregate("old")) == 25
