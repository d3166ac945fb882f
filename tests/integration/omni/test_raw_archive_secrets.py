"""Evolution API sends its instance's ``apikey`` in every webhook body, and the raw archive
kept it verbatim: a credential at rest, answered again by ``GetEvent`` with
``include_raw``, ``/api/v1/raw/{id}`` and ``jetsource omni raw show``. Through the
ingress on real NATS and Valkey: the value of a credential's key (``apikey``, ``token``,
... at any depth; a query parameter of such a name) is archived as ``"[redacted]"``,
``body_redacted`` says where, and the rest of the body is the one received byte for
byte, so that a record replayed is the same events; whatever the verdict (accepted,
rejected, a body cut short); a key spelt with escapes is found as well."""

from __future__ import annotations

import json

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import (
    VERDICT_ACCEPTED,
    VERDICT_REJECTED,
    VERDICT_UNRECOGNISED,
    RawPayload,
)
from jetsource.domains.omni import redact
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import HERE
from tests.integration.omni.harness import headers_for, route

pytestmark = pytest.mark.integration

KEY = "B6D711FCDE4D4FD5936544120E713976"  # the fixtures' apikey
SECRET = 's3cr3t-\u00e9-\\"quoted\\"'  # as JSON text: escapes of its own


def evolution(name: str = "text") -> str:
    return (HERE / f"whatsapp/evolution/{name}.json").read_text()


async def post(
    http: httpx.AsyncClient, body: bytes, query: str = "", instance: str = "acme-evo"
) -> httpx.Response:
    url = route(instance) + (f"?{query}" if query else "")
    return await http.post(url, content=body, headers=headers_for(instance, body))


async def record_of(ingest: Ingest, r: httpx.Response) -> RawPayload:
    answer = r.json()
    raw_id = answer.get("raw_id") or answer["error"]["raw_id"]
    record = await ingest.raw.get(raw_id)
    assert record is not None
    return record


async def test_the_apikey_in_an_evolution_body_is_not_archived_and_the_rest_is_as_sent(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    text = evolution()
    assert f'"apikey": "{KEY}"' in text
    # Spacing, key order and escapes of the provider's own: kept as they came.
    sent = text.replace('"apikey": ', '"apikey" :\t').replace('"text"', '"te\\u0078t"')
    sent = sent.replace("}", ', "nested": {"Token": "' + SECRET + '", "n": 1.50}}', 1)
    r = await post(http, sent.encode(), query="a=1&apikey=" + KEY)
    assert r.status_code == 200, r.text
    record = await record_of(ingest, r)
    assert record.verdict == VERDICT_ACCEPTED
    assert KEY.encode() not in record.body and b"s3cr3t" not in record.body
    expected = sent.replace(KEY, "[redacted]").replace(SECRET, "[redacted]")
    assert record.body == expected.encode()
    assert record.query == "a=1&apikey=[redacted]"
    assert KEY not in str(record)
    # In the order they come in the body, then the query's.
    assert list(record.body_redacted) == ["data.key.nested.Token", "apikey", "?apikey"], (
        record.body_redacted
    )
    assert record.body_size == len(sent.encode())  # the size received

    # Replayed from the archive: the same events (stored before).
    again = await post(http, record.body)
    assert again.status_code == 200, again.text
    assert [(e["id"], e["stored"]) for e in again.json()["events"]] == [
        (e["id"], False) for e in r.json()["events"]
    ]


async def test_a_refused_or_unrecognised_body_is_redacted_too(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    body = json.loads(evolution())
    body["data"].pop("key")
    r = await post(http, json.dumps(body).encode())
    assert r.status_code == 422, r.text
    record = await record_of(ingest, r)
    assert record.verdict == VERDICT_REJECTED and KEY.encode() not in record.body
    assert list(record.body_redacted) == ["apikey"]

    body = json.loads(evolution())
    body["event"] = "connection.update"
    r = await post(http, json.dumps(body).encode())
    assert r.status_code == 200 and r.json()["status"] == "unrecognised", r.text
    record = await record_of(ingest, r)
    assert record.verdict == VERDICT_UNRECOGNISED and KEY.encode() not in record.body

    # No JSON at all (refused 400): the value after the key is still not kept.
    cut = b'{"event": "messages.upsert", "apikey": "' + KEY.encode() + b'", "data": {'
    r = await post(http, cut)
    assert r.status_code == 400, r.text
    record = await record_of(ingest, r)
    assert KEY.encode() not in record.body and list(record.body_redacted) == ["apikey"]
    # Cut short inside the value: what came of it is not kept either.
    r = await post(http, cut[: cut.index(KEY.encode()) + 10])
    record = await record_of(ingest, r)
    assert KEY[:10].encode() not in record.body and record.body.endswith(b'"apikey": "[redacted]"')


async def test_a_key_spelt_with_escapes_is_found(ingest: Ingest, http: httpx.AsyncClient) -> None:
    sent = evolution().replace('"apikey"', '"api\\u006bey"')
    r = await post(http, sent.encode())
    assert r.status_code == 200, r.text
    record = await record_of(ingest, r)
    assert KEY.encode() not in record.body
    assert json.loads(record.body) == {**json.loads(sent), "apikey": "[redacted]"}
    assert list(record.body_redacted) == ["apikey"]


async def test_a_body_without_credentials_is_archived_as_sent(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    sent = (HERE / "whatsapp/cloud/text.json").read_bytes()
    r = await post(http, sent, instance="acme-cloud")
    assert r.status_code == 200, r.text
    record = await record_of(ingest, r)
    assert record.body == sent and not record.body_redacted


async def test_a_key_holding_a_lone_surrogate_is_archived_and_answered(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """A path of body_redacted holding "\\ud800" (no UTF-8) made protobuf refuse the
    record, built before the checks: 500, nothing archived, a traceback per request."""
    for sent, path in (
        (b'{"\\ud800": {"token": "x"}}', "\\ud800.token"),
        (b'{"\\ud800x": {"to\\u006ben": "x"}}', "\\ud800x.token"),
    ):
        r = await post(http, sent)
        assert r.status_code == 400 and r.json()["error"]["code"] == "unparseable", r.text
        record = await record_of(ingest, r)
        assert record.verdict == VERDICT_REJECTED and list(record.body_redacted) == [path]
        assert b'"x"' not in record.body
        record.body.decode("utf-8")  # written as UTF-8 (an escape), not surrogate bytes
    # Whatever redaction raises, the record is built: the body withheld and said so.
    body = evolution().encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(redact, "body", _raises)
        r = await post(http, body)
    assert r.status_code == 200, r.text
    record = await record_of(ingest, r)
    assert record.verdict == VERDICT_ACCEPTED and record.body == b"" and not record.query
    assert KEY.encode() not in record.SerializeToString()
    assert list(record.body_redacted) == ["(the whole body and query: not archived, RuntimeError)"]


def _raises(raw: bytes) -> tuple[bytes, list[str]]:
    raise RuntimeError("a redaction fault")


async def test_any_value_of_any_credentials_name_is_redacted_in_body_and_headers(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """One rule of names for headers, query and body: a `token` or `x-webhook-secret`
    header, camelCase keys, a list or a number under a secret key, a form-encoded body
    were archived as they came; an escaped key made the body be written again."""
    body = json.loads(evolution())
    body["data"]["accessToken"] = "sEcReT-one"
    body["data"]["authorization"] = ["Bearer sEcReT-two"]
    body["clientSecret"] = 987654321987654321
    sent = json.dumps(body, indent=1).replace('"apikey"', '"api\\u006bey"')
    sent = sent.replace("{", '{"n": 1e400, "d": 1, "d": 2,', 1)
    url = route("acme-evo")
    headers = {
        **headers_for("acme-evo", sent.encode()),
        "token": "sEcReT-three",
        "x-webhook-secret": "sEcReT-four",
    }
    r = await http.post(url, content=sent.encode(), headers=headers)
    assert r.status_code == 200, r.text
    record = await record_of(ingest, r)
    for secret in (KEY, "sEcReT", "987654321987654321"):
        assert secret.encode() not in record.SerializeToString(), secret
    assert record.headers["token"] == record.headers["x-webhook-secret"] == "[redacted]"
    assert sorted(record.body_redacted) == sorted(
        ["apikey", "data.accessToken", "data.authorization", "clientSecret"]
    )
    # Only the values' spans changed: the number beyond a double, the key sent twice.
    assert record.body.startswith(b'{"n": 1e400, "d": 1, "d": 2,')
    assert len(record.body) == len(sent.encode()) - sum(
        len(v) - len('"[redacted]"')
        for v in (
            f'"{KEY}"',
            '"sEcReT-one"',
            '[\n   "Bearer sEcReT-two"\n  ]',
            "987654321987654321",
        )
    )

    form = b"event=messages.upsert&apikey=" + KEY.encode()
    r = await post(http, form)
    assert r.status_code == 400, r.text
    record = await record_of(ingest, r)
    assert record.body == b"event=messages.upsert&apikey=[redacted]"
    assert list(record.body_redacted) == ["apikey"]


async def test_an_evolution_record_carries_no_digest_of_the_body_holding_its_apikey(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    """body_sha256 was the unsalted SHA-256 of every body as received: with the archived
    body (its apikey "[redacted]") anyone reading the record could put guesses back,
    hash them and find the apikey offline. Only a Discord interaction's record carries
    it (test_discord_interactions); an Evolution record none."""
    sent = evolution().replace(KEY, "hunter2").encode()
    r = await post(http, sent)
    record = await record_of(ingest, r)
    assert list(record.body_redacted) == ["apikey"]
    assert b"hunter2" not in record.body
    assert record.body_sha256 == b""
    guess = record.body.replace(b'"[redacted]"', b'"hunter2"')
    assert guess == sent  # what a digest would have confirmed
