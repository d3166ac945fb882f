"""`jetsource streams ensure|backup|restore` with a registry that is not the built-in
one (omni alone, JETSOURCE_PROJECTOR__DOMAINS naming a module): every command works on
the streams of the domains configured. The context stream was assumed: `ensure` looked
for ``JETSOURCE_EVENTSTORE__STREAM`` after making OMNI_EVENTS (exit 1, "missing right
after provisioning"), and `backup` listed that stream instead of omni's (refused: "no
event stream exists"), so an omni-only deployment had its events in no backup."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.settings import OmniOptions
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import cli_env, streams
from tests.infra import Server
from tests.stream_reads import stored

pytestmark = pytest.mark.integration

OMNI_ONLY = """\
from jetsource.domains.omni.descriptor import configured_domain
from jetsource.projection.domain import DomainRegistry

REGISTRY = DomainRegistry([configured_domain()])
"""


def omni_only(url: str, unique: str, tmp_path: Path, **settings: str) -> dict[str, str]:
    """An omni-only deployment: a registry module of omni alone; every other name this
    test's own (``settings``: more, the omni event stream moved, say)."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"omni_only_{unique}.py").write_text(OMNI_ONLY)
    return cli_env(
        url,
        unique,
        PYTHONPATH=str(modules),
        JETSOURCE_PROJECTOR__DOMAINS=f"omni_only_{unique}",
        JETSOURCE_EVENTSTORE__KEYS_BUCKET=f"OK_{unique}",
        JETSOURCE_OMNI__RAW_STREAM=f"OW_{unique}",
        JETSOURCE_OMNI__RAW_SUBJECT_PREFIX=f"ow{unique}.raw",
        JETSOURCE_OMNI__IDENTITY_BUCKET=f"OH_{unique}",
        JETSOURCE_OBSERVER__CLAIMS_BUCKET=f"OC_{unique}",
        **settings,
    )


def ok(env: dict[str, str], *args: str) -> Any:
    run = streams(env, *args, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


async def existing(url: str, *names: str) -> set[str]:
    """Which of ``names`` are streams on the server: asked one by one (a listing of all
    streams is paged, and the session's shared server holds hundreds)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    found = set()
    try:
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.stream_info(name)
                found.add(name)
        return found
    finally:
        await nc.close()


async def append_omni(env: dict[str, str], unique: str) -> str:
    """An omni identity's events on the omni stream (OMNI_EVENTS, made here if it is
    missing, not by `streams ensure`): the identity."""
    domain = omni_domain(OmniOptions())
    shared = type("S", (), {"eventstore": EventStoreSettings(keys_bucket=f"OK_{unique}")})
    nc = await nats.connect(env["JETSOURCE_NATS__URL"])
    try:
        store = JetStreamEventStore(nc, domain.registry, domain.eventstore(shared))
        await store.ensure_streams()
        await store.start()
        assert domain.sample_history is not None
        history = domain.sample_history(f"idn-{unique}", 2, 1)
        new = [m if isinstance(m, NewEvent) else NewEvent(m) for m in history]
        await store.append(f"idn-{unique}", new, NO_STREAM)
        await store.close()
        return f"idn-{unique}"
    finally:
        await nc.close()


async def test_omni_only_streams_are_ensured(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = omni_only(
        nats_server.url,
        unique,
        tmp_path,
        JETSOURCE_OMNI__EVENTS_STREAM=f"OE_{unique}",
        JETSOURCE_OMNI__EVENTS_SUBJECT_PREFIX=f"oe{unique}.events",
    )
    rows = {row["role"]: row for row in ok(env, "ensure")}
    # The configured domain's stream, and no context stream the registry does not hold.
    assert set(rows) == {"omni events", "snapshots", "dead letters", "read-models"}, rows
    assert rows["omni events"]["stream"] == f"OE_{unique}"
    assert rows["omni events"]["action"] == "created"
    assert rows["omni events"]["subjects"][0].startswith(f"oe{unique}.events")
    found = await existing(env["JETSOURCE_NATS__URL"], f"OE_{unique}", f"CE_{unique}")
    assert found == {f"OE_{unique}"}, found
    # Run again: nothing changes (safe on every deploy, as for the built-in registry).
    again = {row["role"]: row["action"] for row in ok(env, "ensure")}
    assert again["omni events"] == "unchanged", again


async def test_omni_only_streams_are_backed_up_and_restored(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    """The omni stream under its own name (OMNI_EVENTS, shared by the session's tests:
    what this test wrote is looked for in it)."""
    url = nats_server.url
    env = omni_only(url, unique, tmp_path)
    identity = await append_omni(env, unique)
    folder = tmp_path / "backup"
    backed = {row["stream"]: row for row in ok(env, "backup", str(folder))}
    assert backed["OMNI_EVENTS"]["role"] == "omni events", backed
    assert f"CE_{unique}" not in backed
    _, *rows = (folder / backed["OMNI_EVENTS"]["file"]).read_text().splitlines()
    ours = [row for row in map(json.loads, rows) if f".{identity}." in row["subject"]]
    assert ours, "the omni events written are not in the backup"

    # Restored beside the original (renamed, subjects moved): every message back.
    restored = ok(
        env,
        "restore",
        str(folder),
        "--stream=OMNI_EVENTS",
        f"--rename=OMNI_EVENTS=OR_{unique}",
        f"--subject-prefix=omni.events=or{unique}.events",
        f"--subject-prefix=omni.voids=or{unique}.voids",
    )
    assert [(r["role"], r["stream"], r["messages"]) for r in restored] == [
        ("omni events", f"OR_{unique}", backed["OMNI_EVENTS"]["messages"])
    ], restored
    back = await stored(url, f"OR_{unique}")
    mine = [m for m in back if f".{identity}." in m.subject]
    assert [m.data for m in mine] == [base64.b64decode(row["data"]) for row in ours]
    assert all(m.subject.startswith(f"or{unique}.events.") for m in mine)
