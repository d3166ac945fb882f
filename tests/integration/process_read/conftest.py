"""The process read tests' own ledger: a projection under the test's names (own_ledger)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import Projection
from tests.integration.process_read.ledger import own_ledger


@pytest.fixture
async def ledger(settings: JetsourceSettings, unique: str) -> AsyncIterator[Projection]:
    async with own_ledger(settings, unique) as p:
        yield p
