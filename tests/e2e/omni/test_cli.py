"""`jetsource omni ...` as an operator runs it (a process, settings from the
environment), against the state a real ingress wrote."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestSettings
from tests.fixtures.omni import HERE
from tests.infra import Server
from tests.integration.omni.harness import headers_for, omni_settings, route
from tests.stack import environment

pytestmark = pytest.mark.e2e


@pytest.fixture
def isettings(nats_server: Server, valkey_server: Server, unique: str) -> IngestSettings:
    return omni_settings(nats_server.url, valkey_server.url, unique)


@pytest.fixture
async def ingest(isettings: IngestSettings) -> AsyncIterator[Ingest]:
    service = await build(isettings)
    yield service
    await service.stop(0)


def cli(settings: IngestSettings, *args: str) -> subprocess.CompletedProcess[str]:
    s = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"instances": {}})})
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env.update(environment(s))
    return subprocess.run(
        [sys.executable, "-m", "jetsource", "omni", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def post(ingest: Ingest, instance: str, path: str, **extra: str) -> httpx.Response:
    body = (HERE / path).read_bytes()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest"
    ) as http:
        return await http.post(
            route(instance), content=body, headers={**headers_for(instance, body), **extra}
        )


async def test_raw_show_prints_the_request_as_received(
    isettings: IngestSettings, ingest: Ingest
) -> None:
    accepted = (await post(ingest, "acme-cloud", "whatsapp/cloud/text.json")).json()
    shown = cli(isettings, "raw", "show", accepted["raw_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    doc: dict[str, Any] = json.loads(shown.stdout)
    assert doc["verdict"] == "VERDICT_ACCEPTED"
    assert doc["event_ids"] == [e["id"] for e in accepted["events"]]
    assert json.loads(doc["body_text"]) == json.loads(
        (HERE / "whatsapp/cloud/text.json").read_text()
    )
    body = cli(isettings, "raw", "show", accepted["raw_id"], "--body")
    assert body.stdout.encode() == (HERE / "whatsapp/cloud/text.json").read_bytes()

    rejected = (
        await post(
            ingest, "acme-cloud", "whatsapp/cloud/text.json", **{"x-hub-signature-256": "sha256=00"}
        )
    ).json()
    text = cli(isettings, "raw", "show", rejected["error"]["raw_id"])
    assert text.returncode == 0
    assert "VERDICT_REJECTED (HTTP 401): bad_signature" in text.stdout

    missing = cli(isettings, "raw", "show", "0000-not-there")
    assert missing.returncode == 1 and "no raw payload" in missing.stderr
    bad = cli(isettings, "raw", "show", "a.b")
    assert bad.returncode == 1 and "raw_id" in bad.stderr


async def test_identity_link_and_merge_from_the_command_line(
    isettings: IngestSettings, ingest: Ingest
) -> None:
    await post(ingest, "acme-cloud", "whatsapp/cloud/text.json")
    await post(ingest, "acme-bot", "discord/text.json")
    ids = ingest.identities
    wa = await ids.resolve("whatsapp", "16505551234", "acme-cloud")
    handles = json.loads(cli(isettings, "identity", "handles", wa, "--json").stdout)
    assert handles == {"identity_id": wa, "handles": ["whatsapp:16505551234"]}  # docs/omni.md

    person = json.loads(cli(isettings, "identity", "create", "--name", "Sheena", "--json").stdout)
    linked = cli(
        isettings, "identity", "link", person["identity_id"], "whatsapp", "16505551234", "--json"
    )
    assert linked.returncode == 0, linked.stderr
    assert json.loads(linked.stdout) == {
        "identity_id": person["identity_id"],
        "handle": "whatsapp:16505551234",
        "previous": wa,
    }
    await eventually(ids, "whatsapp", "16505551234", person["identity_id"])

    refused = cli(isettings, "identity", "merge", person["identity_id"], wa)
    assert refused.returncode == 2  # no --yes
    merged = cli(isettings, "identity", "merge", person["identity_id"], wa, "--yes", "--json")
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout) == {
        "survivor_id": person["identity_id"],
        "merged_id": wa,
        "handles": [],
    }
    again = cli(isettings, "identity", "merge", person["identity_id"], wa, "--yes")
    assert again.returncode == 1 and "merged into" in again.stderr
    unknown = cli(isettings, "identity", "link", "idn-nobody", "discord", "1")
    assert unknown.returncode == 1 and "identity_id" in unknown.stderr
    found = cli(isettings, "identity", "resolve", "whatsapp", "16505551234", "--json")
    assert json.loads(found.stdout) == {
        "handle": "whatsapp:16505551234",
        "identity_id": person["identity_id"],
    }
    # An identity never recorded is not found (exit 1), not one with no handle (it
    # answered an empty list, exit 0); one with none answers its empty list.
    nobody = cli(isettings, "identity", "handles", "idn-nobody", "--json")
    assert nobody.returncode == 1, nobody.stdout
    error = json.loads(nobody.stderr)["error"]
    assert (error["code"], error["field"]) == ("NOT_FOUND", "identity_id")
    assert set(error) == {"code", "message", "exit_code", "field"}
    empty = json.loads(cli(isettings, "identity", "create", "--json").stdout)["identity_id"]
    listed = cli(isettings, "identity", "handles", empty, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["handles"] == []


async def eventually(ids: Any, provider: str, external_id: str, want: str) -> None:
    """The ingress's cache follows the bucket within moments."""
    deadline = asyncio.get_running_loop().time() + 5
    while await ids.lookup(provider, external_id) != want:
        assert asyncio.get_running_loop().time() < deadline, "the cache never followed"
        await asyncio.sleep(0.02)


def test_nats_away_is_exit_3(isettings: IngestSettings) -> None:
    from jetsource.core.settings import NatsSettings
    from jetsource.devstack.servers import free_port

    away = isettings.model_copy(
        update={"nats": NatsSettings(url=f"nats://127.0.0.1:{free_port()}", connect_timeout_s=1)}
    )
    result = cli(away, "raw", "show", "x")
    assert result.returncode == 3, (result.returncode, result.stderr)


async def test_raw_show_never_sends_a_bodys_terminal_escapes_raw(
    isettings: IngestSettings, ingest: Ingest
) -> None:
    """Anyone who can reach the webhooks gets a body archived (refused ones too): its
    ESC and OSC sequences and bidi overrides reached the operator's terminal raw
    (`raw show` set the terminal's title). Text output shows them as escapes; --body
    and --json keep the bytes and the characters."""
    hostile = '{"a": "\x1b[2J\x1b]0;owned\x07 \u202e tail"}'.encode()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ingest.app), base_url="http://ingest"
    ) as http:
        refused = await http.post(
            route("acme-cloud"), content=hostile, headers={"x-hub-signature-256": "sha256=00"}
        )
    raw_id = refused.json()["error"]["raw_id"]
    shown = cli(isettings, "raw", "show", raw_id)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\u202e" not in shown.stdout
    assert "\\x1b[2J\\x1b]0;owned\\x07 \\u202e tail" in shown.stdout
    body = cli(isettings, "raw", "show", raw_id, "--body")
    assert body.stdout.encode() == hostile
    doc = json.loads(cli(isettings, "raw", "show", raw_id, "--json").stdout)
    assert doc["body_text"] == hostile.decode()


# The CLI as a container runs it under a uid with no password entry and no $USER:
# getpass.getuser() raises KeyError there.
NO_USER = """
import getpass, sys
def no_user():
    raise KeyError("getpwuid(): uid not found: 43210")
getpass.getuser = no_user
sys.argv = ["jetsource", *sys.argv[1:]]
from jetsource.cli.app import main
main()
"""


def test_identity_commands_without_a_user_name(isettings: IngestSettings, ingest: Ingest) -> None:
    """`--actor` defaults to $USER: a process with no user name (a container's uid with
    no password entry) was answered INTERNAL "unexpected KeyError (a bug)" by create,
    link and merge (and `repair void`); the actor is left empty there instead."""
    s = isettings.model_copy(
        update={"ingest": isettings.ingest.model_copy(update={"instances": {}})}
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("JETSOURCE_") and k not in ("USER", "LOGNAME", "LNAME", "USERNAME")
    }
    env.update(environment(s))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", NO_USER, "omni", "identity", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = run("create", "--name", "Kim")  # link and merge share the default
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["identity_id"].startswith("idn-")


def test_user_name_is_empty_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass

    from jetsource.cli import output

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 43210")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert output.user_name() == ""
    monkeypatch.setattr(getpass, "getuser", lambda: "ana")
    assert output.user_name() == "ana"
