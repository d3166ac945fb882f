"""Fixtures of the archive tests (helpers are in fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.projection.bootstrap import Projection, open_projection
from tests.integration.archive.fixtures import compacting_settings


@pytest.fixture
async def compacting(
    settings: JetsourceSettings, unique: str, tmp_path: Path
) -> AsyncIterator[Projection]:
    """A projection on a compacting stream of the test's own (``compacting_settings``),
    its archive in ``tmp_path / "archive"``; closed after the test."""
    p = await open_projection(compacting_settings(settings, unique, tmp_path / "archive"))
    try:
        yield p
    finally:
        await p.close()
