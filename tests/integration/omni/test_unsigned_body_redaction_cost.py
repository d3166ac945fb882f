"""The raw archive's record of a request was built, its credentials redacted, before the
request's signature was checked: anyone could post a 4 MiB body of ~360k keys naming a
credential and hold the ingest's event loop ~1 s for it (the redaction reads the whole
body), with no secret. A request refused before its signature held (UNSIGNED: a wrong
signature, an unknown instance, ...) is archived cut to keep_rejected_bytes; now only
that much of it is redacted, after the checks, and a credential the cut ends in is
redacted as any (nothing of it archived). A signed body is redacted whole, as before.
Real NATS and Valkey, the ingest's ASGI app; redact.body watched for what it reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import VERDICT_ACCEPTED, VERDICT_REJECTED
from jetsource.domains.omni import redact
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import archived, headers_for, route

pytestmark = pytest.mark.integration

KEEP = 64 * 1024  # INGEST__KEEP_REJECTED_BYTES' default
SECRET = "S3CR3T" * 40  # an Evolution-like token straddling the cut


def hostile() -> bytes:
    """~4 MiB of keys after an apikey, a token whose value the cut at KEEP ends in."""
    head = '{"apikey":"hunter2-the-key"'
    pad = "".join(f',"k{i}":1' for i in range(6000))
    to_cut = KEEP - len(head) - len(pad) - len(',"token":"') - 100
    filler = ',"f":"' + "y" * (to_cut - 7) + '"'
    start = head + pad + filler + ',"token":"'
    assert len(start) < KEEP < len(start) + len(SECRET)
    tail = "".join(f',"k{i}":1' for i in range(6000, 355_000))
    return (start + SECRET + '"' + tail + "}").encode()


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the bodies redact.body is given."""
    lengths: list[int] = []
    real: Callable[[bytes], Any] = redact.body

    def watched(body: bytes) -> Any:
        lengths.append(len(body))
        return real(body)

    monkeypatch.setattr(redact, "body", watched)
    return lengths


@pytest.mark.parametrize("case", ["wrong_signature", "unknown_instance"])
async def test_an_unauthenticated_body_is_redacted_only_as_far_as_it_is_kept(
    ingest: Ingest, http: httpx.AsyncClient, read: list[int], case: str
) -> None:
    body = hostile()
    assert len(body) <= 4 * 1024 * 1024
    path, headers = route("acme-evo"), {"apikey": "not-the-key"}
    if case == "unknown_instance":
        path, headers = "/webhooks/whatsapp/nobody", {}
    r = await http.post(path, content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code in (401, 404), r.text
    assert read and max(read) <= KEEP, read  # the whole body was read: 4 MiB
    record = await ingest.raw.get(r.json()["error"]["raw_id"])
    assert record is not None and record.verdict == VERDICT_REJECTED
    assert record.body_size == len(body) and record.body_truncated
    assert len(record.body) <= KEEP
    assert b"hunter2" not in record.body and b"S3CR3T" not in record.body
    assert list(record.body_redacted) == ["apikey", "token"], record.body_redacted
    assert record.body.startswith(b'{"apikey":"[redacted]","k0":1')


async def test_a_signed_body_is_still_redacted_whole(
    ingest: Ingest, http: httpx.AsyncClient, read: list[int]
) -> None:
    body = (HERE / "whatsapp/evolution/text.json").read_bytes()
    r = await http.post(route("acme-evo"), content=body, headers=headers_for("acme-evo", body))
    assert r.status_code == 200, r.text
    assert read == [len(body)]
    record = await ingest.raw.get(r.json()["raw_id"])
    assert record is not None and record.verdict == VERDICT_ACCEPTED
    assert record.body == archived(body) and not record.body_truncated
    assert list(record.body_redacted) == ["apikey"]
