"""The omni reads (gRPC OmniQueryService and REST /api/v1/) given an id, a handle, a
conversation id or a filter holding a control character: INVALID_ARGUMENT / 400
naming the field and the character (escaped, U+0000), never an empty page or a
NOT_FOUND echoing it raw; an id merely unknown stays NOT_FOUND."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as oq
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.ingest.server import Ingest

pytestmark = pytest.mark.integration

# What no stored handle, conversation id or id of ours holds (the ingress refuses a
# webhook carrying one): C0, DEL, C1 (NEL, a one-byte CSI), the line separator.
CONTROLS = ("\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u2028")
# Refused in ids of ours (event, identity, instance, provider) too.
BIDI = ("\u202e", "\u2066")
# Any of these raw in an answer is a defect.
RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
async def api(ingest: Ingest) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=ingest.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        yield client


@pytest.fixture
async def stub(ingest: Ingest) -> AsyncIterator[query_pb2_grpc.OmniQueryServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc.port}") as channel:
        yield query_pb2_grpc.OmniQueryServiceStub(channel)


def _requests(s: query_pb2_grpc.OmniQueryServiceStub, ch: str) -> list[tuple[str, Any, Any, str]]:
    """(name, call, request, field) of every read that takes the field, ``ch`` in it."""
    return [
        (
            "conversation id",
            s.GetConversation,
            oq.GetConversationRequest(
                provider="whatsapp", instance="acme-cloud", conversation_id=f"55{ch}1"
            ),
            "conversation_id",
        ),
        (
            "conversation instance",
            s.GetConversation,
            oq.GetConversationRequest(
                provider="whatsapp", instance=f"acme{ch}", conversation_id="1"
            ),
            "instance",
        ),
        (
            "conversation provider",
            s.GetConversation,
            oq.GetConversationRequest(provider=f"whatsapp{ch}", instance="a", conversation_id="1"),
            "provider",
        ),
        (
            "find external id",
            s.FindIdentity,
            oq.FindIdentityRequest(provider="whatsapp", external_id=f"55{ch}1"),
            "external_id",
        ),
        (
            "find provider",
            s.FindIdentity,
            oq.FindIdentityRequest(provider=f"{ch}whatsapp", external_id="1"),
            "provider",
        ),
        ("event", s.GetEvent, oq.GetEventRequest(event_id=f"ev{ch}1"), "event_id"),
        ("identity", s.GetIdentity, oq.GetIdentityRequest(identity_id=f"idn-{ch}"), "identity_id"),
        (
            "timeline",
            s.GetIdentityTimeline,
            oq.GetIdentityTimelineRequest(identity_id=f"idn-1{ch}"),
            "identity_id",
        ),
        (
            "recent instance",
            s.ListRecentEvents,
            oq.ListRecentEventsRequest(instance=f"acme-cloud{ch}"),
            "instance",
        ),
        (
            "recent provider",
            s.ListRecentEvents,
            oq.ListRecentEventsRequest(provider=f"discord{ch}"),
            "provider",
        ),
        (
            "identities provider",
            s.ListIdentities,
            oq.ListIdentitiesRequest(provider=f"discord{ch}"),
            "provider",
        ),
    ]


async def test_grpc_reads_refuse_a_control_character_naming_the_field_and_character(
    stub: query_pb2_grpc.OmniQueryServiceStub,
) -> None:
    """GetConversation with a NUL in conversation_id was an empty OK, FindIdentity's
    NOT_FOUND echoed the NUL raw; every read taking an id, a handle or a filter now
    refuses each control character (and a bidi control in an id of ours)."""
    wrong: list[tuple[Any, ...]] = []
    for ch in CONTROLS + BIDI:
        for name, call, request, field in _requests(stub, ch):
            if ch in BIDI and field in ("conversation_id", "external_id"):
                continue  # the provider's text: see the next test
            try:
                await call(request, timeout=10)
                wrong.append((name, repr(ch), "answered"))
                continue
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if (
                    exc.code() != grpc.StatusCode.INVALID_ARGUMENT
                    or not details.startswith(field)
                    or f"U+{ord(ch):04X}" not in details
                    or RAW.search(details)
                ):
                    wrong.append((name, repr(ch), exc.code(), details))
    assert not wrong, "\n".join(map(str, wrong))


async def test_a_handle_or_conversation_with_a_bidi_control_is_looked_up_and_shown_escaped(
    stub: query_pb2_grpc.OmniQueryServiceStub,
) -> None:
    """A handle's or a conversation's bidi controls are the provider's text (a webhook
    carrying one is stored as it came, and must be readable): looked up, an unknown one
    NOT_FOUND with the control escaped, never raw; an unknown plain one is NOT_FOUND."""
    for ext in ("55\u202e1", "5512345"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.FindIdentity(
                oq.FindIdentityRequest(provider="whatsapp", external_id=ext), timeout=10
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value
        details = caught.value.details() or ""
        assert not RAW.search(details), repr(details)
        assert ("55\\u202e1" if "\u202e" in ext else ext) in details, details
    got = await stub.GetConversation(
        oq.GetConversationRequest(
            provider="whatsapp", instance="acme-cloud", conversation_id="55\u202e1"
        ),
        timeout=10,
    )
    assert list(got.events) == []


def _paths(ch: str) -> dict[str, str]:
    """A REST read's path (and query) with ``ch`` in one parameter -> the parameter."""
    c = quote(ch, safe="")
    return {
        f"/api/v1/conversations/whatsapp/acme-cloud/55{c}1": "conversation_id",
        f"/api/v1/conversations/whatsapp/acme{c}/1": "instance",
        f"/api/v1/conversations/wa{c}/acme-cloud/1": "provider",
        f"/api/v1/handles/whatsapp/55{c}1": "external_id",
        f"/api/v1/handles/{c}whatsapp/1": "provider",
        f"/api/v1/events/ev{c}1": "event_id",
        f"/api/v1/raw/raw{c}1": "raw_id",  # 5e348c1 left it to the store's id rule
        f"/api/v1/identities/idn-{c}": "identity_id",
        f"/api/v1/identities/idn-{c}/timeline": "identity_id",
        f"/api/v1/events?instance=acme{c}": "instance",
        f"/api/v1/events?provider=discord{c}": "provider",
        f"/api/v1/identities?provider=discord{c}": "provider",
    }


async def test_rest_reads_refuse_a_control_character_naming_the_parameter(
    api: httpx.AsyncClient,
) -> None:
    wrong: list[tuple[Any, ...]] = []
    for ch in CONTROLS + BIDI:
        for path, field in _paths(ch).items():
            if ch in BIDI and field in ("conversation_id", "external_id"):
                continue
            response = await api.get(path)
            error = response.json().get("error", {}) if response.status_code == 400 else {}
            message = error.get("message", "")
            if (
                error.get("field") != field
                or f"U+{ord(ch):04X}" not in message
                or RAW.search(response.text)
            ):
                wrong.append((path, response.status_code, response.text[:300]))
    assert not wrong, "\n".join(map(str, wrong))
    missing = await api.get(f"/api/v1/handles/whatsapp/{quote(chr(0x202E), safe='')}1")
    assert missing.status_code == 404, missing.text
    assert "\\u202e" in missing.json()["error"]["message"], missing.text


async def test_no_route_and_method_refusals_show_the_path_escaped(api: httpx.AsyncClient) -> None:
    """The 404 "no route" and 405 answers named the path as it came: an ESC, a NUL or a
    U+202E sent percent-encoded was in the message raw (JSON escapes a NUL, not what a
    client prints once it reads the message)."""
    for method, path in (
        ("GET", "/api/v1/no%1b%5b2Jpe%00"),
        ("GET", "/api/v1/no%E2%80%AEpe%E2%80%A8"),
        ("PUT", "/api/v1/events/ev%E2%80%AE/status"),
    ):
        response = await api.request(method, path)
        assert response.status_code in (404, 405), response.text
        message = response.json()["error"]["message"]
        assert not RAW.search(message), ascii(message)
        assert "\\x1b" in message or "\\u202e" in message, ascii(message)
