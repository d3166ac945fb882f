"""A request refused before its signature was checked (a wrong or missing signature, an
unknown instance) is anybody's bytes: its body was archived whole, up to the 4 MiB a
webhook may carry, so anyone without the secret could fill the raw archive. It is
archived cut to INGEST__KEEP_REJECTED_BYTES (64 KiB), its size and the cut recorded; a
signed request refused later (a malformed body) is still archived whole."""

from __future__ import annotations

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_REJECTED
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration

PAD = b"x" * (300 * 1024)


def padded(fixture: str) -> bytes:
    body = (HERE / fixture).read_bytes().rstrip()
    assert body.endswith(b"}")
    return body[:-1] + b', "pad": "' + PAD + b'"}'


@pytest.mark.parametrize("case", ["wrong_signature", "unknown_instance", "signed_malformed"])
async def test_unsigned_refusals_are_archived_cut(
    ingest: Ingest, http: httpx.AsyncClient, case: str
) -> None:
    path = route("acme-cloud")
    if case == "signed_malformed":
        body = padded("malformed/whatsapp_cloud_message_without_from.json")
    else:
        body = padded("whatsapp/cloud/text.json")
    headers = headers_for("acme-cloud", body)
    if case == "wrong_signature":
        headers["x-hub-signature-256"] = "sha256=" + "0" * 64
    elif case == "unknown_instance":
        path = "/webhooks/whatsapp/nobody"
    response = await http.post(path, content=body, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    record = await ingest.raw.get(response.json()["error"]["raw_id"])
    assert record is not None and record.verdict == VERDICT_REJECTED
    assert record.body_size == len(body)
    if case == "signed_malformed":
        assert record.body == body and not record.body_truncated
    else:
        assert record.body == body[: 64 * 1024] and record.body_truncated
