"""FindIdentity, ListIdentities and GetIdentityTimeline answered every handle (and every
merged identity) of each identity they held, after GetIdentity was paged (22eb0ed): an
identity of tens of thousands of handles bloated each of those answers, past the gRPC
message limit broke them. Now they hold the first handles by name and the first merged
identities by id, min(100, the max page size) of each, as GetIdentity's first page
starts; IdentityView.handle_count and merged_from_count say how many there are (on
GetIdentity too) and GetIdentity pages through the rest. Through the ingest's gRPC and
REST on real NATS and Valkey, the max page size lowered to 10."""

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


async def test_list_find_and_timeline_hold_the_first_handles_and_say_how_many(
    small_pages: Ingest, isettings: IngestSettings
) -> None:
    ids = small_pages.identities
    person = await ids.create("Many", actor="test")
    numbers = [f"4915100000{i:03d}" for i in range(25)]
    for n in numbers:
        await ids.link(person, "whatsapp", n, actor="test")
    merged = []
    for i in range(12):
        other = await ids.create(f"Merged {i}", actor="test")
        await ids.link(other, "discord", f"7000{i:02d}", actor="test")
        await ids.merge(person, other, actor="test")
        merged.append(other)
    few = await ids.create("Few", actor="test")
    await ids.link(few, "whatsapp", "4915199999999", actor="test")
    every = sorted(
        [*(f"whatsapp:{n}" for n in numbers), *(f"discord:7000{i:02d}" for i in range(12))]
    )
    async with projector(isettings) as p:
        await caught_up(p)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{small_pages.grpc.port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)

            def bounded(view: oq.IdentityView) -> None:
                assert view.identity_id == person and view.display_name == "Many"
                assert handle_names(view) == every[:MAX_PAGE], handle_names(view)
                assert view.handle_count == len(every)
                assert list(view.merged_from) == sorted(merged)[:MAX_PAGE]
                assert view.merged_from_count == len(merged)

            # A handle sorting past the first MAX_PAGE: the first MAX_PAGE - 1 and it
            # (see test_find_identity_lists_the_handle_it_was_asked_about).
            found = await stub.FindIdentity(
                oq.FindIdentityRequest(provider="whatsapp", external_id=numbers[3]), timeout=5
            )
            assert handle_names(found.identity) == [
                *every[: MAX_PAGE - 1],
                f"whatsapp:{numbers[3]}",
            ]
            assert found.identity.handle_count == len(every)
            assert list(found.identity.merged_from) == sorted(merged)[:MAX_PAGE]
            # A merged identity's handle finds its survivor, bounded alike.
            found = await stub.FindIdentity(
                oq.FindIdentityRequest(provider="discord", external_id="700005"), timeout=5
            )
            bounded(found.identity)
            timeline = await stub.GetIdentityTimeline(
                oq.GetIdentityTimelineRequest(identity_id=person), timeout=5
            )
            bounded(timeline.identity)
            listed = await stub.ListIdentities(
                oq.ListIdentitiesRequest(provider="whatsapp", page_size=MAX_PAGE), timeout=5
            )
            by_id = {i.identity_id: i for i in listed.identities}
            bounded(by_id[person])
            # An identity of fewer: whole, its counts its lengths.
            small = by_id[few]
            assert handle_names(small) == ["whatsapp:4915199999999"] and small.handle_count == 1
            assert not small.merged_from and small.merged_from_count == 0

            # GetIdentity says the same counts and pages through every handle.
            got: list[str] = []
            token = ""
            while True:
                page = await stub.GetIdentity(
                    oq.GetIdentityRequest(identity_id=person, page_token=token), timeout=5
                )
                assert page.identity.handle_count == len(every)
                assert page.identity.merged_from_count == len(merged)
                assert sorted(page.identity.merged_from) == sorted(merged)
                got += handle_names(page.identity)
                token = page.next_page_token
                if not token:
                    break
            assert got == every
        # REST: the same bound and counts.
        transport = httpx.ASGITransport(app=small_pages.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as http:
            for path in (
                f"/api/v1/handles/whatsapp/{numbers[0]}",
                f"/api/v1/identities/{person}/timeline",
            ):
                r = await http.get(path)
                assert r.status_code == 200, r.text
                view = r.json()["identity"]
                assert len(view["handles"]) == MAX_PAGE and view["handle_count"] == len(every)
                assert len(view["merged_from"]) == MAX_PAGE
                assert view["merged_from_count"] == len(merged)
            r = await http.get("/api/v1/identities", params={"provider": "whatsapp"})
            assert r.status_code == 200, r.text
            view = next(i for i in r.json()["identities"] if i["identity_id"] == person)
            assert len(view["handles"]) == MAX_PAGE and view["handle_count"] == len(every)


async def test_find_identity_lists_the_handle_it_was_asked_about(
    small_pages: Ingest, isettings: IngestSettings
) -> None:
    """FindIdentity cut an identity's handles to the first by name, so a handle sorting
    past them found its identity without itself (the differential check's FindIdentity
    "lists the handle" failed for an identity of more handles than the cut). Now the
    looked-up handle is always listed: the first MAX_PAGE - 1 and it when it sorts past
    them, still in name order; the first MAX_PAGE when it is among them. gRPC and REST
    alike, for a handle of the identity and one of an identity merged into it."""
    ids = small_pages.identities
    person = await ids.create("Long", actor="test")
    numbers = [f"4917600000{i:03d}" for i in range(25)]
    for n in numbers:
        await ids.link(person, "whatsapp", n, actor="test")
    other = await ids.create("Merged late", actor="test")
    await ids.link(other, "whatsapp", "4919900000000", actor="test")
    await ids.merge(person, other, actor="test")
    every = sorted([*(f"whatsapp:{n}" for n in numbers), "whatsapp:4919900000000"])
    cases = {
        # provider, external_id -> the handles the answer lists
        ("whatsapp", numbers[0]): every[:MAX_PAGE],
        ("whatsapp", numbers[MAX_PAGE - 1]): every[:MAX_PAGE],
        ("whatsapp", numbers[MAX_PAGE]): [*every[: MAX_PAGE - 1], f"whatsapp:{numbers[MAX_PAGE]}"],
        ("whatsapp", numbers[-1]): [*every[: MAX_PAGE - 1], f"whatsapp:{numbers[-1]}"],
        ("whatsapp", "4919900000000"): [*every[: MAX_PAGE - 1], "whatsapp:4919900000000"],
    }
    async with projector(isettings) as p:
        await caught_up(p)
        transport = httpx.ASGITransport(app=small_pages.app)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{small_pages.grpc.port}") as channel,
            httpx.AsyncClient(transport=transport, base_url="http://ingest") as http,
        ):
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)
            for (provider, external_id), expected in cases.items():
                found = (
                    await stub.FindIdentity(
                        oq.FindIdentityRequest(provider=provider, external_id=external_id),
                        timeout=5,
                    )
                ).identity
                assert found.identity_id == person
                assert handle_names(found) == expected, (provider, external_id, handle_names(found))
                assert found.handle_count == len(every)
                r = await http.get(f"/api/v1/handles/{provider}/{external_id}")
                assert r.status_code == 200, r.text
                view = r.json()["identity"]
                assert view["identity_id"] == person
                assert [f"{h['provider']}:{h['external_id']}" for h in view["handles"]] == expected
                assert view["handle_count"] == len(every)
            # The other reads keep the first MAX_PAGE by name.
            timeline = await stub.GetIdentityTimeline(
                oq.GetIdentityTimelineRequest(identity_id=person), timeout=5
            )
            assert handle_names(timeline.identity) == every[:MAX_PAGE]
