"""GetIdentity answered every handle of an identity in one answer, with no paging as the
other list calls have: an identity of many handles made an answer without bound (past
the gRPC message limit, some 10,000 handles, it was ANSWER_TOO_LARGE and the identity
could not be read at all). Now GetIdentity (and REST /api/v1/identities/{id}) takes
page_size and page_token and answers next_page_token: handles in the order of their
names, none skipped or repeated while handles are linked between pages; page_size 0 is
the server's max page size (a client that does not page sees all of an identity of up to
that many). Through the ingest's gRPC and REST on real NATS and Valkey."""

from __future__ import annotations

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.ingest.server import Ingest
from jetsource.ingest.settings import IngestSettings
from tests.integration.omni.harness import SMALL_PAGE as MAX_PAGE
from tests.integration.omni.harness import caught_up, handle_names, projector

pytestmark = pytest.mark.integration


async def test_handles_are_paged_none_skipped_or_repeated(
    small_pages: Ingest, isettings: IngestSettings
) -> None:
    ids = small_pages.identities
    person = await ids.create("Many", actor="test")
    other = await ids.create("Other", actor="test")
    numbers = [f"4915100000{i:03d}" for i in range(0, 50, 2)]  # 25 handles
    for n in numbers:
        await ids.link(person, "whatsapp", n, actor="test")
    await ids.link(other, "whatsapp", "4915199999999", actor="test")
    every = sorted(f"whatsapp:{n}" for n in numbers)
    async with projector(isettings) as p:
        await caught_up(p)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small_pages.grpc.port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)

            async def get(
                size: int = 0, token: str = "", who: str = person
            ) -> oq.GetIdentityResponse:
                request = oq.GetIdentityRequest(identity_id=who, page_size=size, page_token=token)
                answer: oq.GetIdentityResponse = await stub.GetIdentity(request, timeout=5)
                return answer

            # No page_size (a client written before paging): the max page, and a token.
            first = await get()
            assert handle_names(first.identity) == every[:MAX_PAGE] and first.next_page_token
            assert first.identity.display_name == "Many"

            # Pages of 7 while handles are linked between them (one before the cursor,
            # one after it): every handle held for the whole scan is seen once.
            seen: list[str] = []
            page = await get(7)
            seen += handle_names(page.identity)
            await ids.link(person, "whatsapp", "4915100000001", actor="test")  # before
            await ids.link(person, "whatsapp", "4915100000049", actor="test")  # after
            await caught_up(p)
            while page.next_page_token:
                page = await get(7, page.next_page_token)
                assert len(page.identity.handles) <= 7
                seen += handle_names(page.identity)
            assert len(seen) == len(set(seen)), seen
            assert set(every) <= set(seen) and "whatsapp:4915100000049" in seen
            assert "whatsapp:4915100000001" not in seen  # linked behind the cursor

            # An identity of fewer handles than a page: one page, no token.
            small = await get(who=other)
            assert handle_names(small.identity) == ["whatsapp:4915199999999"]
            assert not small.next_page_token

            # Bad paging is INVALID_ARGUMENT naming the field: a size over the max, a
            # token made up, one changed, one of another identity's handles.
            token = first.next_page_token
            changed = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
            for size, bad, who, field in (
                (MAX_PAGE + 1, "", person, "page_size"),
                (0, "bm90IGEgdG9rZW4", person, "page_token"),
                (0, changed, person, "page_token"),
                (0, token, other, "page_token"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await get(size, bad, who)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
                assert field in (caught.value.details() or ""), caught.value.details()
            # What 0 means here is the max page, as the refusal says (it said "(0: 50)").
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await get(MAX_PAGE + 1, "", person)
            details = caught.value.details() or ""
            assert f"page_size must be 0..{MAX_PAGE} (0: {MAX_PAGE})" in details, details
        # REST: the same pages.
        transport = httpx.ASGITransport(app=small_pages.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            got: list[str] = []
            token = ""
            while True:
                params: dict[str, str | int] = {"page_size": 4}
                if token:
                    params["page_token"] = token
                r = await http.get(f"/api/v1/identities/{person}", params=params)
                assert r.status_code == 200, r.text
                answer = r.json()
                got += [
                    f"{h['provider']}:{h['external_id']}" for h in answer["identity"]["handles"]
                ]
                token = answer["next_page_token"]
                if not token:
                    break
            assert got == sorted([*every, "whatsapp:4915100000001", "whatsapp:4915100000049"])
