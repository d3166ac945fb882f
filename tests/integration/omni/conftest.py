from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection
from tests.infra import Server
from tests.integration.omni.harness import SMALL_PAGE, omni_settings, projector, running_ingest


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    return omni_settings(nats_server.url, valkey_server.url, unique)


@pytest.fixture
async def ingest(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    service = await build(isettings)
    yield service
    await service.stop(0)


@pytest.fixture
async def small_pages(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    """The ingest with its max page size lowered to SMALL_PAGE."""
    settings = isettings.model_copy(
        update={"ingest": isettings.ingest.model_copy(update={"max_page_size": SMALL_PAGE})}
    )
    async with running_ingest(settings) as service:
        yield service


@pytest.fixture
async def http(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ingest.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


@pytest.fixture
async def projection(isettings: IngestSettings, ingest: Ingest) -> AsyncIterator[Projection]:
    async with projector(isettings) as p:
        yield p
