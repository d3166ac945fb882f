"""The REST reads' bearer token is read as the gRPC services read theirs: the scheme in
any case and spaces around the token (RFC 9110 11.1). ``bearer <token>`` was 401 here
and taken by OmniQueryService on the same process; the 401 said no WWW-Authenticate
(RFC 6750 3) and named no field."""

from __future__ import annotations

import httpx
import pytest

from jetsource.ingest.app import create_app
from jetsource.ingest.server import Ingest

TOKEN = "reader-token-5b1"


@pytest.mark.parametrize(
    ("given", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER  {TOKEN} ", 200),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        ("Bearer", 401),
        ("Bearer wrong", 401),
        (f"Bearer {TOKEN}x", 401),
    ],
)
async def test_the_bearer_scheme_is_read_in_any_case(
    ingest: Ingest, given: str, status: int
) -> None:
    app = create_app(ingest.intake, ingest.reads, ingest.store, [TOKEN])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as http:
        answer = await http.get("/api/v1/identities", headers={"authorization": given})
    assert answer.status_code == status, answer.text
    if status == 401:
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"]["field"] == "authorization"
        assert TOKEN not in answer.text
