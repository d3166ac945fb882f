"""Hostile webhook bodies through the ingress on real NATS and Valkey: whatever a body
holds, the answer is never a 5xx, a refusal is a 4xx naming a field, every request is in
the raw archive with its verdict, and a refused body writes no event and no identity.

- A property test over every fixture that normalizes: each mutated at random fields
  (seeded; ``OMNI_HOSTILE_SEED`` picks another run) with a lone surrogate (as a JSON
  escape, in a value or a key, and as raw bytes), an integer literal of 400 digits,
  digits that are not ASCII, a 5,000-digit string, an overlong handle.
- The probe's examples one by one (signature headers that are not ASCII, numbers in
  float and integer fields, a protobufjs Long with a string half, an overlong sender in
  a batch, a fault of the code while checking and after the archive).
- What reaches the ingress before a body is read: a Content-Length far over the limit
  with a short body (413 at once, not when the client gives up), a client that
  disconnects mid-body (archived, logged without a traceback), compressed bodies.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from jetsource._gen.omni.v1.raw_pb2 import (
    VERDICT_ACCEPTED,
    VERDICT_REJECTED,
    VERDICT_UNRECOGNISED,
    RawPayload,
)
from jetsource.domains.omni.signatures import sign
from jetsource.eventstore import jsapi
from jetsource.ingest.server import Ingest
from tests.fixtures.omni import FIXTURES, HERE, Fixture
from tests.integration.omni.harness import SECRETS, headers_for, route
from tests.integration.omni.harness import archived as as_archived

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("OMNI_HOSTILE_SEED", "20261206"))
REFUSALS = {400, 401, 413, 415, 422}


# -- what the ingress wrote ---------------------------------------------------------------


async def written(ingest: Ingest) -> tuple[int, int]:
    """(last sequence of the events stream, of the handles bucket): an event or an
    identity (its events share the stream) or a handle claimed moves one of them."""
    events = int((await ingest.store.stream_info())["state"]["last_seq"])
    bucket = (await ingest.identities.kv())._name
    info = await ingest.nc.jetstream().stream_info(f"KV_{bucket}")
    return events, int(info.state.last_seq)


async def archived(ingest: Ingest) -> int:
    return int((await ingest.raw.info())["state"]["messages"])


async def last_record(ingest: Ingest) -> RawPayload:
    """The newest record of the raw archive (a request answered without a raw id)."""
    prefix = ingest.raw.subject("x").removesuffix(".x")
    message = await jsapi.last_for_subject(
        ingest.raw._replies, ingest.raw._o.raw_stream, f"{prefix}.>", 5.0
    )
    assert message is not None
    record = RawPayload()
    record.ParseFromString(message.data)
    return record


async def send(
    ingest: Ingest, http: httpx.AsyncClient, instance: str, body: bytes, **headers: Any
) -> dict[str, Any]:
    """POST a signed body and check what every answer owes: no 5xx, a refusal naming a
    field and archived as rejected with nothing else written, an acceptance archived
    with its verdict, one archive record per request. Returns the answer's JSON."""
    before, records = await written(ingest), await archived(ingest)
    response = await http.post(
        route(instance), content=body, headers={**headers_for(instance, body), **headers}
    )
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    assert "Traceback" not in response.text
    answer: dict[str, Any] = response.json()
    assert await archived(ingest) == records + 1, "one archive record per request"
    if status == 200:
        record = await ingest.raw.get(answer["raw_id"])
        assert record is not None and record.http_status == 200
        if answer["status"] == "accepted":
            assert record.verdict == VERDICT_ACCEPTED
            assert list(record.event_ids) == [e["id"] for e in answer["events"]]
        else:
            assert record.verdict == VERDICT_UNRECOGNISED, answer
        return answer
    assert status in REFUSALS, (status, answer)
    error = answer["error"]
    assert error["field"] and error["message"] and error["raw_id"], answer
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None
    assert (record.verdict, record.http_status, record.field) == (
        VERDICT_REJECTED,
        status,
        error["field"],
    )
    assert record.body == as_archived(body)
    assert await written(ingest) == before, f"a refused body wrote something: {answer}"
    return answer


# -- the mutations --------------------------------------------------------------------------

Path = tuple[str | int, ...]


def where(path: Path) -> str:
    """A path as the ingress names fields: ``entry[0].changes[0].value.messages[0].from``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def leaves(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))
    else:
        yield path, value


def replaced(body: Any, path: Path, value: Any) -> Any:
    out = copy.deepcopy(body)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return out


def key_renamed(body: Any, path: Path, new: str) -> Any:
    out = copy.deepcopy(body)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    parent[new] = parent.pop(path[-1])
    return out


HUGE = 10**400  # a JSON integer literal of 401 digits: json reads it, float() cannot
ODD_DIGITS = ["1796047200\u00b2", "\uff11\uff17\uff19\uff16", "\u0661\u0667", "1" * 5000]


def mutants(f: Fixture, rng: random.Random) -> Iterator[tuple[str, bytes, str | None]]:
    """(label, body bytes, the field a refusal must name or None: any field)."""
    body = f.body()
    found = list(leaves(body))
    strings = [(p, v) for p, v in found if isinstance(p[-1], str) and isinstance(v, str)]
    numbers = [
        (p, v)
        for p, v in found
        if (isinstance(v, int | float) and not isinstance(v, bool))
        or (isinstance(v, str) and v.isdigit())
    ]
    for path, value in rng.sample(strings, min(2, len(strings))):
        lone = value[:2] + "\ud800" + value[2:]
        yield (
            f"surrogate escape at {where(path)}",
            json.dumps(replaced(body, path, lone)).encode(),
            (where(path)),
        )
    path, value = rng.choice(strings)
    raw = json.dumps(replaced(body, path, value + "\udc80"), ensure_ascii=False)
    yield f"surrogate bytes at {where(path)}", raw.encode("utf-8", "surrogatepass"), "body"
    path, _ = rng.choice(strings)
    lone_key = f"{path[-1]}\udc00"
    yield (
        f"surrogate in the key {where(path)}",
        json.dumps(key_renamed(body, path, lone_key)).encode(),
        where((*path[:-1], lone_key)).encode("utf-8", "backslashreplace").decode(),
    )
    for path, _ in rng.sample(numbers, min(2, len(numbers))):
        number: object = rng.choice([HUGE, -HUGE, *ODD_DIGITS])
        yield (
            f"{str(number)[:12]!r} at {where(path)}",
            json.dumps(replaced(body, path, number)).encode(),
            None,
        )
    path, _ = rng.choice(strings)
    yield (
        f"a 300-character {where(path)}",
        json.dumps(replaced(body, path, "1" * 300)).encode(),
        None,
    )


NORMALIZED = [f for f in FIXTURES if f.outcome == "normalized"]


async def test_hostile_values_in_every_fixture_are_refused_cleanly_or_accepted(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    rng = random.Random(SEED)
    tried = refused = 0
    for f in NORMALIZED:
        for label, body, field in mutants(f, rng):
            tried += 1
            context = f"{f.path}: {label} (OMNI_HOSTILE_SEED={SEED})"
            try:
                answer = await send(ingest, http, f.instance, body)
            except AssertionError as exc:
                raise AssertionError(f"{context}: {exc}") from None
            if "error" in answer:
                refused += 1
                assert answer["error"]["field"] in answer["error"]["message"] or answer["error"][
                    "field"
                ] in ("body",), (context, answer)
            if field is not None:
                assert "error" in answer, (context, answer)
                error = answer["error"]
                assert (error["code"], error["field"]) == ("unparseable", field), (context, error)
                if field == "body":
                    assert "UTF-8" in error["message"], (context, error)
    assert tried > 5 * len(NORMALIZED) and refused > 3 * len(NORMALIZED), (tried, refused)


# -- the probe's examples -------------------------------------------------------------------

TEXT = "whatsapp/cloud/text.json"
MESSAGE = "entry[0].changes[0].value.messages[0]"


def body_of(path: str) -> Any:
    return json.loads((HERE / path).read_text())


def encoded(body: Any) -> bytes:
    return json.dumps(body).encode()


# (fixture, path in it, the value put there, the field a 422 names, a word of the message)
MALFORMED: list[tuple[str, Path, Any, str, str]] = [
    (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "timestamp"), "1796047200\u00b2",
     f"{MESSAGE}.timestamp", "ASCII digits"),
    (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "timestamp"), "\uff11\uff17\uff19",
     f"{MESSAGE}.timestamp", "ASCII digits"),
    (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "timestamp"), "1" * 5000,
     f"{MESSAGE}.timestamp", "ASCII digits"),
    (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "timestamp"), 10**30,
     f"{MESSAGE}.timestamp", "integer from"),
    (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "from"), "1" * 300,
     f"{MESSAGE}.from", "at most 256"),
    ("whatsapp/cloud/batch.json", ("entry", 0, "changes", 0, "value", "messages", 1, "from"),
     "1" * 300, "entry[0].changes[0].value.messages[1].from", "at most 256"),
    ("whatsapp/cloud/location.json", ("entry", 0, "changes", 0, "value", "messages", 0,
     "location", "latitude"), HUGE, f"{MESSAGE}.location.latitude", "finite number"),
    ("whatsapp/evolution/location.json", ("data", "message", "locationMessage",
     "degreesLatitude"), HUGE, "data.message.locationMessage.degreesLatitude", "finite number"),
    ("whatsapp/evolution/text.json", ("data", "messageTimestamp"), {"low": 1, "high": "x"},
     "data.messageTimestamp.high", "integer"),
    ("whatsapp/evolution/text.json", ("data", "key", "remoteJid"),
     "1" * 300 + "@s.whatsapp.net", "data.key.remoteJid", "at most 256"),
    ("whatsapp/evolution/text.json", ("sender",), "2" * 300 + "@s.whatsapp.net", "sender",
     "at most 256"),
    ("discord/voice_message.json", ("d", "attachments", 0, "duration_secs"), HUGE,
     "d.attachments[0].duration_secs", "finite number"),
    ("discord/text.json", ("d", "author", "id"), "3" * 300, "d.author.id", "at most 256"),
    ("discord/reaction_add.json", ("d", "user_id"), "4" * 300, "d.user_id", "at most 256"),
    ("discord/text.json", ("s",), 2**64, "s", "integer from"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "at", "value", "field", "word"), MALFORMED, ids=[f"{m[0]}:{m[3]}" for m in MALFORMED]
)
async def test_numbers_and_handles_a_normalizer_cannot_take_are_422_naming_the_field(
    ingest: Ingest,
    http: httpx.AsyncClient,
    path: str,
    at: Path,
    value: Any,
    field: str,
    word: str,
) -> None:
    f = next(f for f in FIXTURES if f.path == path)
    answer = await send(ingest, http, f.instance, encoded(replaced(body_of(path), at, value)))
    error = answer["error"]
    assert (error["code"], error["field"]) == ("malformed", field), error
    assert word in error["message"], error


@pytest.mark.parametrize(
    ("path", "at", "field"),
    [
        (TEXT, ("entry", 0, "changes", 0, "value", "messages", 0, "from"), f"{MESSAGE}.from"),
        ("whatsapp/evolution/text.json", ("data", "key", "remoteJid"), "data.key.remoteJid"),
    ],
)
async def test_a_handle_a_normalizer_let_through_is_still_refused_before_anything_is_written(
    ingest: Ingest,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    at: Path,
    field: str,
) -> None:
    """The guard behind the normalizers: the identity service's own rule, applied to
    every handle before anything is written (here with the normalizers' check off)."""
    from jetsource.domains.omni.normalize import common, evolution

    monkeypatch.setattr(common, "check_handle", lambda value, field: value)
    monkeypatch.setattr(evolution, "check_handle", lambda value, field: value)
    f = next(f for f in FIXTURES if f.path == path)
    body = replaced(body_of(path), at, "5" * 300 + ("@s.whatsapp.net" if "evo" in path else ""))
    error = (await send(ingest, http, f.instance, encoded(body)))["error"]
    assert (error["code"], error["field"]) == ("malformed", field), error
    assert "sender's handle" in error["message"] and "256" in error["message"], error


@pytest.mark.parametrize(
    ("instance", "header"),
    [("acme-cloud", "x-hub-signature-256"), ("acme-bot", "x-jetsource-signature")],
)
@pytest.mark.parametrize(
    "given",
    [b"sha256=\xe9", b"sha256=\xff\xfe", b"sha256=" + b"\xe9" * 64],
    ids=["one byte", "two bytes", "64 bytes"],
)
async def test_a_signature_header_that_is_not_ascii_is_401_naming_it(
    ingest: Ingest, http: httpx.AsyncClient, instance: str, header: str, given: bytes
) -> None:
    body = encoded(body_of(TEXT if instance == "acme-cloud" else "discord/text.json"))
    answer = await send(ingest, http, instance, body, **{header: given})
    assert (answer["error"]["code"], answer["error"]["field"]) == ("bad_signature", header)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\xff\xfe{}", ["UTF-16", "byte order mark"]),
        ('{"object": "x"}'.encode("utf-16"), ["UTF-16", "byte order mark"]),
        ('{"object": "x"}'.encode("utf-16-le"), ["UTF-16"]),  # no mark: NUL bytes
        ('{"object": "x"}'.encode("utf-32"), ["UTF-32", "byte order mark"]),
        (b'{"object": "\xed\xa0\x80"}', ["not UTF-8", "0xED"]),  # a surrogate, as bytes
    ],
    ids=["UTF-16 mark only", "UTF-16", "UTF-16 without a mark", "UTF-32", "surrogate bytes"],
)
async def test_a_body_not_in_utf8_is_400_saying_so(
    ingest: Ingest, http: httpx.AsyncClient, body: bytes, words: list[str]
) -> None:
    for instance in ("acme-cloud", "acme-evo", "acme-bot"):
        error = (await send(ingest, http, instance, body))["error"]
        assert (error["code"], error["field"]) == ("unparseable", "body"), error
        for word in words:
            assert word in error["message"], error


async def test_a_utf8_byte_order_mark_is_skipped(ingest: Ingest, http: httpx.AsyncClient) -> None:
    answer = await send(ingest, http, "acme-cloud", b"\xef\xbb\xbf" + encoded(body_of(TEXT)))
    assert answer["status"] == "accepted", answer


async def test_a_compressed_body_is_415_naming_content_encoding(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    import gzip

    body = gzip.compress(encoded(body_of(TEXT)))
    answer = await send(ingest, http, "acme-cloud", body, **{"content-encoding": "gzip"})
    error = answer["error"]
    assert (error["code"], error["field"]) == ("unsupported_encoding", "content-encoding"), error


async def test_a_discord_op_other_than_a_dispatch_is_unrecognised(
    ingest: Ingest, http: httpx.AsyncClient
) -> None:
    body = body_of("discord/text.json")
    body["op"] = 1
    answer = await send(ingest, http, "acme-bot", encoded(body))
    assert answer["status"] == "unrecognised" and "op 1" in answer["reason"], answer


async def test_a_fault_while_checking_is_archived_and_answered_without_a_traceback(
    ingest: Ingest,
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from jetsource.domains.omni import intake

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(intake, "normalize", boom)
    before, records = await written(ingest), await archived(ingest)
    body = encoded(body_of(TEXT))
    response = await http.post(
        route("acme-cloud"), content=body, headers=headers_for("acme-cloud", body)
    )
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("internal", "body"), error
    assert "secret internals" not in response.text and "Traceback" not in response.text
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None and await archived(ingest) == records + 1
    assert (record.verdict, record.http_status) == (VERDICT_REJECTED, 500)
    assert "RuntimeError: secret internals" in record.reason  # the archive keeps the fault
    assert await written(ingest) == before
    assert "secret internals" in caplog.text, "logged with its traceback"


async def test_a_fault_after_the_archive_rewrites_its_verdict(
    ingest: Ingest, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("identity fault")

    monkeypatch.setattr(ingest.identities, "resolve", boom)
    body = encoded(body_of("discord/text.json"))
    response = await http.post(
        route("acme-bot"), content=body, headers=headers_for("acme-bot", body)
    )
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "internal" and "identity fault" not in response.text
    record = await ingest.raw.get(error["raw_id"])
    assert record is not None
    assert (record.verdict, record.http_status) == (VERDICT_REJECTED, 500), record
    assert "resolving identities" in record.reason and "identity fault" in record.reason


# -- before the body is read ----------------------------------------------------------------


async def raw_request(port: int, head: bytes, body: bytes, close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        if close:
            return b""
        return await asyncio.wait_for(reader.read(65536), 5.0)
    finally:
        writer.close()


def post_head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "host: ingest", f"content-length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_content_length_over_the_limit_is_413_at_once(ingest: Ingest) -> None:
    await ingest.start_http("127.0.0.1", 0)
    records = await archived(ingest)
    started = time.monotonic()
    answer = await raw_request(
        ingest.http_port,
        post_head(
            route("acme-cloud"), 10**12, {"x-hub-signature-256": sign(SECRETS["acme-cloud"], b"{}")}
        ),
        b"{}",
    )
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < 2.0, f"answered after {elapsed:.1f} s"
    assert await archived(ingest) == records + 1
    record = await last_record(ingest)
    assert (record.verdict, record.http_status, record.field) == (VERDICT_REJECTED, 413, "body")
    assert record.body == b"{}" and record.body_truncated and record.body_size == 10**12


async def test_a_client_that_disconnects_mid_body_is_archived_and_logged_quietly(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    await ingest.start_http("127.0.0.1", 0)
    records = await archived(ingest)
    caplog.set_level(logging.INFO)
    await raw_request(
        ingest.http_port, post_head(route("acme-bot"), 1000, {}), b'{"op": 0', close=True
    )
    for _ in range(250):  # the server notices the disconnect a moment later
        if await archived(ingest) > records:
            break
        await asyncio.sleep(0.02)
    record = await last_record(ingest)
    assert (record.verdict, record.http_status) == (VERDICT_REJECTED, 400), record
    assert record.reason.startswith("incomplete_body"), record.reason
    assert b'{"op": 0'.startswith(record.body), record.body  # what came before it went
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
    assert any("disconnected" in r.getMessage() for r in caplog.records)
