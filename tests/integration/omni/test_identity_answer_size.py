"""An identity whose answer is past the gRPC message limit (grpc.max_message_bytes,
4 MiB by default: hundreds of thousands of handles) was answered RESOURCE_EXHAUSTED
"Sent message larger than max" by GetIdentity and FindIdentity, naming neither the call
nor the setting, with grpc's traceback in the ingest's log. Now FAILED_PRECONDITION,
reason ANSWER_TOO_LARGE, naming the call, the size, the limit and its setting. Built
cheaply: the ingest's message limit lowered to 1 KiB, an identity of a few handles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from tests.calls import answer_too_large
from tests.integration.omni.harness import caught_up, ingest_with_limit, projector

pytestmark = pytest.mark.integration

LIMIT = 1024


@pytest.fixture
async def small(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    async with ingest_with_limit(isettings, LIMIT) as service:
        yield service


async def test_an_identity_past_the_message_limit_is_refused_naming_call_size_and_limit(
    small: Ingest, isettings: IngestSettings, caplog: pytest.LogCaptureFixture
) -> None:
    few = await small.identities.create("Few", actor="test")
    await small.identities.link(few, "whatsapp", "4915100000000", actor="test")
    many = await small.identities.create("Many", actor="test")
    for i in range(60):
        await small.identities.link(many, "whatsapp", f"49151{i:08d}", actor="test")
    async with projector(isettings) as p:
        await caught_up(p)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small.grpc.port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)
            got = await stub.GetIdentity(oq.GetIdentityRequest(identity_id=few), timeout=5)
            assert got.identity.identity_id == few
            for name, call in (
                ("GetIdentity", stub.GetIdentity(oq.GetIdentityRequest(identity_id=many))),
                (
                    "FindIdentity",
                    stub.FindIdentity(
                        oq.FindIdentityRequest(provider="whatsapp", external_id="4915100000007")
                    ),
                ),
            ):
                await answer_too_large(call, name, LIMIT)
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
