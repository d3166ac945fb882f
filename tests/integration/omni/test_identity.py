"""The identity service against real NATS: one identity per handle under concurrent
first contact (KV create as the claim), stable and cached resolution, admin link and
merge followed by every process's cache."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource._gen.omni.v1.lifecycle_pb2 import IdentitiesMerged, IdentityCreated
from jetsource.core.errors import ValidationError
from jetsource.domains.omni.events import IDENTITY_CREATED, first_contact_identity
from jetsource.domains.omni.identity import IdentityNotFoundError, IdentityService
from jetsource.ingest.server import Ingest
from jetsource.projection.bootstrap import Projection
from tests.integration.omni.harness import caught_up

pytestmark = pytest.mark.integration


async def second_service(ingest: Ingest) -> tuple[IdentityService, NATS]:
    """Another process's identity service: its own connection and cache."""
    url = ingest.nc.connected_url
    assert url is not None  # the ingest's connection is up
    nc = await nats.connect(url.geturl())
    from jetsource.eventstore.jetstream import JetStreamEventStore

    store = JetStreamEventStore(nc, ingest.store._registry, ingest.store.settings)
    service = IdentityService(nc, store, ingest.identities._o)
    await service.start()
    return service, nc


async def test_concurrent_first_contact_creates_one_identity(ingest: Ingest) -> None:
    other, nc = await second_service(ingest)
    try:
        services = [ingest.identities, other]
        ids = await asyncio.gather(
            *(
                services[i % 2].resolve(
                    "whatsapp", "4915100000001", "acme", {"display_name": "Ana"}
                )
                for i in range(40)
            )
        )
        assert len(set(ids)) == 1
        (identity,) = set(ids)
        assert identity == first_contact_identity("whatsapp", "4915100000001")
        history = await ingest.store.read_aggregate(identity)
        assert [r.event_type for r in history] == [IDENTITY_CREATED, "ExternalIdLinked"]
        created = [r async for r in ingest.store.read_all() if r.event_type == IDENTITY_CREATED]
        assert [r.aggregate_id for r in created] == [identity]
    finally:
        await other.close()
        await nc.drain()


async def test_resolution_is_stable_and_cached(ingest: Ingest) -> None:
    ids = ingest.identities
    first = await ids.resolve("discord", "80351110224678912", "bot")
    hits = ids.hits
    assert await ids.resolve("discord", "80351110224678912", "bot") == first
    assert ids.hits == hits + 1
    ids.forget()
    misses = ids.misses
    assert await ids.resolve("discord", "80351110224678912", "bot") == first  # from KV
    assert ids.misses == misses + 1
    assert len(await ingest.store.read_aggregate(first)) == 2  # nothing written again


async def test_link_and_merge_reach_other_processes_caches(ingest: Ingest) -> None:
    admin, nc = await second_service(ingest)
    try:
        phone = await ingest.identities.resolve("whatsapp", "4915100000002", "acme")
        user = await ingest.identities.resolve("discord", "111", "bot")
        assert phone != user
        moved = await admin.merge(phone, user, actor="test", reason="same person")
        assert moved == ["discord:111"]
        deadline = time.monotonic() + 5
        while await ingest.identities.resolve("discord", "111", "bot") != phone:
            assert time.monotonic() < deadline, "the ingress cache never followed the merge"
            await asyncio.sleep(0.02)
        assert set(await admin.handles_of(phone)) == {
            ("whatsapp", "4915100000002"),
            ("discord", "111"),
        }
        # Link a handle met elsewhere to another identity: it moves.
        other = await ingest.identities.resolve("discord", "222", "bot")
        previous = await admin.link(phone, "discord", "222", actor="test")
        assert previous == other
        deadline = time.monotonic() + 5
        while await ingest.identities.resolve("discord", "222", "bot") != phone:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(ValidationError) as merged_twice:
            await admin.merge(phone, user, actor="test")
        assert merged_twice.value.field == "merged_id"
    finally:
        await admin.close()
        await nc.drain()


async def test_bad_identity_input_is_refused_and_changes_nothing(ingest: Ingest) -> None:
    ids = ingest.identities
    before = (await ingest.store.stream_info())["state"]["messages"]
    with pytest.raises(ValidationError) as empty:
        await ids.resolve("whatsapp", "", "acme")
    assert empty.value.field == "external_id"
    with pytest.raises(ValidationError) as provider:
        await ids.resolve("what sapp", "1", "acme")
    assert provider.value.field == "provider"
    with pytest.raises(IdentityNotFoundError) as missing:
        await ids.link("idn-doesnotexist", "whatsapp", "1", actor="test")
    assert missing.value.field == "identity_id"
    someone = await ids.resolve("whatsapp", "4915100000003", "acme")
    with pytest.raises(ValidationError) as itself:
        await ids.merge(someone, someone, actor="test")
    assert itself.value.field == "merged_id"
    after = (await ingest.store.stream_info())["state"]["messages"]
    assert after == before + 2  # only the valid resolve wrote (created + linked)


async def test_an_identity_id_the_store_cannot_hold_is_refused_naming_its_argument(
    ingest: Ingest,
) -> None:
    """An id of dots or of 300 characters was refused by the store, naming
    ``aggregate_id``, a name no command or argument has; each names its argument now
    (the CLI passes the field through: `omni identity link idn-a.b ...`)."""
    ids = ingest.identities
    someone = await ids.resolve("whatsapp", "4915100000004", "acme")
    for bad in ("idn-a.b", "idn-" + "x" * 300, "idn-a b"):
        calls: list[tuple[Any, str]] = [
            (ids.link(bad, "whatsapp", "1", actor="test"), "identity_id"),
            (ids.merge(bad, someone, actor="test"), "survivor_id"),
            (ids.merge(someone, bad, actor="test"), "merged_id"),
            (ids.handles_of(bad), "identity_id"),
        ]
        for call, field in calls:
            with pytest.raises(ValidationError) as refused:
                await call
            assert refused.value.field == field, (bad, field, refused.value)


async def test_a_link_of_a_handle_no_webhook_carries_is_refused(ingest: Ingest) -> None:
    """A link of a provider the ingress does not serve ("telegram", "WhatsApp"), of a
    WhatsApp number written with "+" or as an Evolution JID, with spaces at its ends or
    control characters was recorded, and matched no webhook ever (and the reads refuse
    such a provider): refused naming the field, nothing written."""
    ids = ingest.identities
    person = await ids.create("someone", actor="test")
    before = (await ingest.store.stream_info())["state"]["messages"]
    for provider, handle, field in (
        ("telegram", "123", "provider"),
        ("WhatsApp", "16505550001", "provider"),
        ("", "16505550001", "provider"),
        ("whatsapp", "+16505550001", "external_id"),
        # an Evolution JID as its API shows it: the webhooks carry the digits, or the
        # JID kept whole with its server in lower case
        ("whatsapp", "16505550001@s.whatsapp.net", "external_id"),
        ("whatsapp", "16505550001:12@S.WHATSAPP.NET", "external_id"),
        ("whatsapp", "16505550001@c.us", "external_id"),
        ("whatsapp", "208916402933123@LID", "external_id"),
        ("whatsapp", " 16505550001", "external_id"),
        ("discord", "80351110224678912\n", "external_id"),
        ("discord", "8035\x1b[2J", "external_id"),
        ("discord", "8035\u202e", "external_id"),
    ):
        with pytest.raises(ValidationError) as refused:
            await ids.link(person, provider, handle, actor="test")
        assert refused.value.field == field, (provider, handle, refused.value)
    with pytest.raises(ValidationError) as unknown:
        await ids.resolve("telegram", "123", "acme")
    assert unknown.value.field == "provider"
    assert (await ingest.store.stream_info())["state"]["messages"] == before
    # What a webhook carries is linked as before.
    for provider, handle in (
        ("whatsapp", "16505550001"),
        ("discord", "80351110224678912"),
        ("whatsapp", "208916402933123@lid"),
    ):
        assert await ids.link(person, provider, handle, actor="test") == ""


async def test_a_merged_identity_takes_no_handle(ingest: Ingest) -> None:
    """Linking a handle to an identity merged into another was accepted: the handle then
    resolved to the merged identity, which its survivor neither lists nor moves in a
    later merge. Refused naming identity_id, as a merge of it is, and nothing written."""
    ids = ingest.identities
    survivor = await ids.resolve("whatsapp", "4915100000010", "acme")
    merged = await ids.resolve("discord", "310", "bot")
    await ids.merge(survivor, merged, actor="test")
    before = (await ingest.store.stream_info())["state"]["messages"]
    with pytest.raises(ValidationError) as refused:
        await ids.link(merged, "discord", "311", actor="test")
    assert refused.value.field == "identity_id"
    assert survivor in str(refused.value)  # names where to link it instead
    assert await ids.lookup("discord", "311") is None
    assert (await ingest.store.stream_info())["state"]["messages"] == before
    assert await ids.link(survivor, "discord", "311", actor="test") == ""


async def test_a_link_racing_a_merge_is_refused_not_lost(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A merge landing between a link's checks and its append: the link appended at any
    version and put the handle on the merged identity. It appends at the version it
    checked now, so it checks again and is refused (as a link to a merged identity)."""
    ids = ingest.identities
    survivor = await ids.resolve("whatsapp", "4915100000020", "acme")
    merged = await ids.resolve("discord", "330", "bot")
    checked = ids._refuse_merged
    merges: list[list[str]] = []
    racing = [True]

    async def merge_right_after_the_check(identity_id: str, field: str) -> None:
        await checked(identity_id, field)
        if racing.pop() if racing else False:  # the link's first check passed: merge now
            merges.append(await ids.merge(survivor, merged, actor="test"))

    monkeypatch.setattr(ids, "_refuse_merged", merge_right_after_the_check)
    with pytest.raises(ValidationError) as refused:
        await ids.link(merged, "discord", "331", actor="test")
    assert merges and refused.value.field == "identity_id"
    assert survivor in str(refused.value)
    assert await ids.lookup("discord", "331") is None
    history = await ingest.store.read_aggregate(merged)
    assert [r.event_type for r in history][-1] != "ExternalIdLinked"  # the merge ends it


async def test_identities_by_provider_hold_a_handle_of_it(
    ingest: Ingest, http: httpx.AsyncClient, projection: Projection
) -> None:
    """ListIdentities(provider) kept listing an identity whose handles of that provider
    had all been linked away (the provider's index is never trimmed): "only identities
    with a handle of this provider" (query.proto)."""
    ids = ingest.identities
    first = await ids.resolve("discord", "320", "bot")
    other = await ids.create("Other", actor="test")
    assert await ids.link(other, "discord", "320", actor="test") == first
    await caught_up(projection)
    cases: list[dict[str, Any]] = [{"provider": "discord"}, {"provider": "discord", "page_size": 1}]
    for params in cases:
        listed, token = [], None
        while token != "":
            page = (
                await http.get("/api/v1/identities", params={**params, "page_token": token or ""})
            ).json()
            listed += [i["identity_id"] for i in page["identities"]]
            token = page["next_page_token"]
        assert listed == [other], params
    everyone = (await http.get("/api/v1/identities")).json()["identities"]
    assert {i["identity_id"] for i in everyone} == {first, other}


async def test_a_webhook_display_name_keeps_to_one_line_and_is_not_refused(
    ingest: Ingest,
) -> None:
    """A provider's display name (a WhatsApp profile name, a Discord global_name) went
    into the identity's name with an ESC, a line break or U+2028 as it came, while
    `identity create --name` refuses them: the webhook is taken, each of those
    characters U+FFFD in the name, so the name is one line."""
    got = await ingest.identities.resolve_full(
        "discord", "90351110224678912", "bot", {"display_name": "Ev\x1b[2Jil\r\nX\u2028é\x85"}
    )
    created = (await ingest.store.read_aggregate(got.identity_id))[0].event
    assert isinstance(created, IdentityCreated)
    assert created.display_name == "Ev\ufffd[2Jil\ufffd\ufffdX\ufffdé\ufffd"


async def test_a_merge_reason_takes_a_lone_cr_or_cr_cr_lf_as_a_line_break(
    ingest: Ingest,
) -> None:
    """An operator's merge --reason with a lone CR (was: refused) or CR CR LF (was:
    refused at its first CR) holds line breaks: recorded with LF; an ESC is still refused."""
    survivor = await ingest.identities.resolve("whatsapp", "4915100000077", "acme")
    merged = await ingest.identities.resolve("discord", "777", "bot")
    with pytest.raises(ValidationError, match="control character") as refused:
        await ingest.identities.merge(survivor, merged, actor="ops", reason="a\x1b[2Jb")
    assert refused.value.field == "reason"
    await ingest.identities.merge(survivor, merged, actor="ops", reason="one\rtwo\r\r\nthree")
    done = (await ingest.store.read_aggregate(merged))[-1].event
    assert isinstance(done, IdentitiesMerged)
    assert done.reason == "one\ntwo\nthree"


async def test_a_merge_reason_refusal_names_the_position_the_user_typed(
    ingest: Ingest,
) -> None:
    """A refused merge --reason names the bad character at its position in the reason
    as given: it was checked after each CR LF was made LF, so past a CR LF (or a CR CR
    LF) the position named was one (two) before the character in what the user typed.
    The limit is still of the text stored: CR LF counts as the one LF kept."""
    survivor = await ingest.identities.resolve("whatsapp", "4915100000078", "acme")
    merged = await ingest.identities.resolve("discord", "778", "bot")
    for reason, at in (
        ("one\r\ntwo\x1b[2J", 8),
        ("a\r\nb\r\r\nc\x00", 8),
        ("a\rb\x07", 3),
    ):
        assert reason[at] in "\x1b\x00\x07"
        with pytest.raises(ValidationError) as refused:
            await ingest.identities.merge(survivor, merged, actor="ops", reason=reason)
        assert refused.value.field == "reason"
        assert f"U+{ord(reason[at]):04X} at position {at})" in str(refused.value)
    from jetsource.domains.omni.identity import MAX_REASON

    await ingest.identities.merge(
        survivor, merged, actor="ops", reason="x" * (MAX_REASON - 1) + "\r\n"
    )
    done = (await ingest.store.read_aggregate(merged))[-1].event
    assert isinstance(done, IdentitiesMerged)
    assert done.reason == "x" * (MAX_REASON - 1) + "\n"


async def test_an_operators_actor_with_a_bidi_control_is_refused_naming_it(
    ingest: Ingest,
) -> None:
    """identity create, link and merge --actor: a U+202E was kept (shown escaped); it is
    refused naming the field and the character now. A display name keeps it (text)."""
    survivor = await ingest.identities.resolve("whatsapp", "4915100000079", "acme")
    merged = await ingest.identities.resolve("discord", "779", "bot")
    actor = "ops\u202etoor"
    for call in (
        ingest.identities.create("\u05d3\u05e0\u05d4 \u200f", actor=actor),
        ingest.identities.link(survivor, "discord", "780", actor=actor),
        ingest.identities.merge(survivor, merged, actor=actor),
    ):
        with pytest.raises(ValidationError) as refused:
            await call
        assert refused.value.field == "actor"
        assert "a bidi control (U+202E at position 3)" in str(refused.value)
    assert await ingest.identities.create("\u05d3\u05e0\u05d4 \u200f", actor="ops")
