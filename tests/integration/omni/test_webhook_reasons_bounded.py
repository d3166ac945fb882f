"""What a webhook's answer repeats of the body is bounded. Through the ingress on real
NATS and Valkey: a reason naming a list of the body's values (the kinds of keyless
protocol messages) names the first ten and how many more (every one was named: 20,000
kinds made an answer of 180 kB, 190,000 one of 1.8 MB); a value it quotes (an event's
name, a status) is its first 80 characters and its length; a reason or a field's path
(the keys on the way to it) is at most 2,000 and 500 characters and its length (a
presence's 100,000-character key was answered whole as the field)."""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_REJECTED, VERDICT_UNRECOGNISED
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration


def evolution(name: str, **changes: Any) -> bytes:
    body = copy.deepcopy(json.loads((HERE / f"whatsapp/evolution/{name}.json").read_text()))
    body.update(changes)
    return json.dumps(body).encode()


async def post(http: httpx.AsyncClient, instance: str, body: bytes) -> httpx.Response:
    return await http.post(route(instance), content=body, headers=headers_for(instance, body))


async def test_a_keyless_reason_names_ten_kinds_and_how_many_more(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    kinds = [{"type": f"T{i:05d}"} for i in range(20_000)]
    r = await post(http, "acme-evo", evolution("edit", data=kinds))
    assert r.status_code == 200, r.text[:300]
    answer = r.json()
    assert answer["status"] == "unrecognised"
    reason = answer["reason"]
    assert len(r.content) < 1000, len(r.content)
    assert reason.endswith(
        "(no key): t00000, t00001, t00002, t00003, t00004, t00005, t00006, t00007, "
        "t00008, t00009 and 19990 more"
    ), reason
    record = await ingest.raw.get(answer["raw_id"])
    assert record is not None and record.verdict == VERDICT_UNRECOGNISED
    assert record.reason == f"unrecognised: {reason}"
    # Twelve kinds, two of them twice: ten named (in order), two more.
    few = [{"type": f"K{i}"} for i in (*range(12), 0, 1)]
    r = await post(http, "acme-evo", evolution("edit", data=few))
    assert r.json()["reason"].endswith(": k0, k1, k10, k11, k2, k3, k4, k5, k6, k7 and 2 more")


async def test_a_quoted_value_is_cut_saying_its_length(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    name = "x" * 100_000
    r = await post(http, "acme-evo", evolution("text", event=name))
    assert r.status_code == 200, r.text[:300]
    assert r.json()["reason"] == (
        f"Evolution API event {'x' * 80!r}... (100000 characters) is not normalized"
    )
    dispatch = json.dumps({"t": name, "d": {}, "s": 1}).encode()
    r = await post(http, "acme-bot", dispatch)
    assert r.status_code == 200, r.text[:300]
    assert r.json()["reason"] == (
        f"Discord dispatch {'x' * 80!r}... (100000 characters) is not normalized"
    )
    status = json.loads(evolution("status_read"))
    status["data"]["status"] = "y" * 100_000
    r = await post(http, "acme-evo", json.dumps(status).encode())
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["message"] == (
        f"data.status: message status {'y' * 20!r}... (100000 characters): a message "
        "status is at most 64 characters"
    )


async def test_a_field_path_and_a_reason_are_bounded_in_the_answer(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    jid = "z" * 100_000
    presence = json.loads(evolution("presence_available"))
    presence["data"]["presences"] = {jid: "available"}
    r = await post(http, "acme-evo", json.dumps(presence).encode())
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    path = f"data.presences.{jid}"
    assert error["field"] == f"{path[:500]}... ({len(path)} characters)"
    message = f"{path}: must be an object"
    assert error["message"] == f"{message[:2000]}... ({len(message)} characters)"
    assert len(r.content) < 3000
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None and record.verdict == VERDICT_REJECTED
    assert record.field == error["field"]
