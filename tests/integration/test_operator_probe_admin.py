"""Operator commands on every domain's read models, and the local stack's data folder.

Found by probing the admin tools the way an outside operator runs them:

- `projector cutover | wait | reset | drop` of a process or omni model (any model of a
  domain other than the first registered) answered ``unavailable:`` with an empty
  message after the request timeout: the admin projection opened those domains' event
  stores without starting them, so their JetStream API requests had nobody listening
  for the reply. They now work as they do for the context models.
- `archive ... --domain NAME` with a misspelt domain was ``refused`` (exit 1, no field);
  it is a usage error (exit 2, ``"field": "--domain"``) before anything connects, as a
  misspelt model is for `projector`.
- `infra up | down` with a data folder that cannot be written (a file on the way,
  read-only) was ``INTERNAL: unexpected NotADirectoryError ... (a bug)``; it is
  ``refused`` naming the folder and ``JETSOURCE_DEVSTACK__HOME``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats
import pytest

from jetsource.core.envelope import NO_STREAM, NewEvent
from jetsource.core.settings import EventStoreSettings
from jetsource.devstack.servers import free_port
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import clean_environ, jetsource
from tests.infra import Server, start_nats

pytestmark = pytest.mark.integration


async def fill_process_and_omni(url: str) -> None:
    """Three processes and three omni identities in the registry's default streams."""
    from jetsource.domains.omni.descriptor import DOMAIN as OMNI
    from jetsource.domains.process.descriptor import DOMAIN as PROCESS

    def as_new(event: Any) -> NewEvent:
        return event if isinstance(event, NewEvent) else NewEvent(event)

    nc = await nats.connect(url)
    shared = SimpleNamespace(eventstore=EventStoreSettings())
    try:
        for domain, sample, prefix in ((PROCESS, 3, "p"), (OMNI, 2, "idn")):
            store = JetStreamEventStore(nc, domain.registry, domain.eventstore(shared))
            await store.ensure_streams()
            await store.start()
            assert domain.sample_history is not None
            for i in range(3):
                history = domain.sample_history(f"{prefix}-{i}", sample, 0 if sample == 3 else 1)
                await store.append(f"{prefix}-{i}", [as_new(e) for e in history], NO_STREAM)
            await store.close()
    finally:
        await nc.close()


def ok(env: dict[str, str], *args: str) -> Any:
    done = jetsource(env, *args, "--json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_cutover_wait_reset_and_drop_work_for_every_domains_models(
    tmp_path: Path, valkey_server: Server, unique: str
) -> None:
    fresh = start_nats(tmp_path / "nats")  # the default stream names, a server of its own
    try:
        asyncio.run(fill_process_and_omni(fresh.url))
        env = clean_environ() | {
            "JETSOURCE_NATS__URL": fresh.url,
            "JETSOURCE_VALKEY__URL": valkey_server.url,
            "JETSOURCE_PROJECTOR__VALKEY_PREFIX": f"op{unique}",
            "JETSOURCE_PROGRESS_EVERY_S": "60",
            # A reply nobody listens for times out in 2 s, not the default.
            "JETSOURCE_EVENTSTORE__REQUEST_TIMEOUT_S": "2",
        }
        ok(env, "streams", "ensure")  # status reads every domain's streams
        # v1 that no projector has run: "not started", with what builds it (it said
        # "already built and live and active" while status said not started).
        first = jetsource(env, "projector", "rebuild", "process_timeline", "--to-version", "1")
        assert first.returncode == 1, first.stderr
        assert "not started" in first.stderr and "reset process_timeline" in first.stderr
        assert "already built" not in first.stderr
        for model, events in (("processes", 9), ("omni_identities", 6)):
            built = ok(env, "projector", "rebuild", model, "--to-version", "2")
            assert (built["version"], built["applied"]) == (2, events)
            cut = ok(env, "projector", "cutover", model, "--to-version", "2")
            assert cut == {
                "model": model,
                "active": 2,
                "previous": 1,
                "lag": 0,
                "dead_letters": 0,
            }
            waited = ok(env, "projector", "wait", model, "--version", "2", "--timeout", "30")
            assert (waited["state"], waited["lag"]) == ("live", 0)
            assert ok(env, "projector", "drop", model, "--version", "1")["version"] == 1
        reset = ok(env, "projector", "reset", "process_timeline", "--yes")
        assert reset["reset"] is True and reset["applied"] == 9
        rows = {(r["model"], r["version"]): r for r in ok(env, "projector", "status")}
        assert rows[("processes", 2)]["active"] and rows[("omni_identities", 2)]["active"]
        assert ("processes", 1) not in rows and ("omni_identities", 1) not in rows
    finally:
        fresh.stop()


@pytest.mark.parametrize("command", ["export", "list", "verify", "compact"])
def test_an_unknown_archive_domain_is_a_usage_error_naming_the_option(
    tmp_path: Path, command: str
) -> None:
    # No NATS at this address: the domain is checked before anything connects.
    env = clean_environ() | {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{free_port()}",
        "JETSOURCE_ARCHIVE__URL": str(tmp_path / "archive"),
    }
    done = jetsource(env, "archive", command, "--domain", "sessions", "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["field"] == "--domain"
    assert "unknown domain 'sessions'" in error["message"]
    assert "context, process, omni" in error["message"]
    assert done.stdout == ""
    assert not (tmp_path / "archive").exists()


@pytest.mark.parametrize("args", [("infra", "up"), ("infra", "down"), ("up", "--no-demo")])
def test_a_data_folder_that_cannot_be_written_is_named_not_an_internal_error(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    home = blocker / "home"
    env = clean_environ() | {
        "JETSOURCE_DEVSTACK__HOME": str(home),
        "JETSOURCE_DEVSTACK__NATS_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__NATS_MONITOR_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__VALKEY_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__GRAPH_HTTP_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT": str(free_port()),
    }
    for mode in ((), ("-o", "json")):
        done = jetsource(env, *mode, *args, timeout=120)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "INTERNAL" not in done.stderr and "Traceback" not in done.stderr
        assert "JETSOURCE_DEVSTACK__HOME" in done.stderr
        assert str(home) in done.stderr
        if mode:
            error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
            assert (error["code"], error["field"]) == ("refused", "JETSOURCE_DEVSTACK__HOME")
    assert not os.path.isdir(home)


@pytest.fixture(scope="module")
def guarded_nats(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A nats-server that takes one user and password."""
    from jetsource.devstack.servers import NatsServer

    server = NatsServer(
        tmp_path_factory.mktemp("guarded") / "nats",
        port=free_port(),
        monitor_port=free_port(),
        extra_config='authorization { user: admin, password: "s3cret" }',
    )
    proc = server.start()
    try:
        server.wait_ready(proc, 60)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=20)


REFUSED_CREDENTIALS = [
    (("projector", "status", "--json"), "access denied"),
    (("archive", "list", "--json"), "access denied"),
    (("streams", "ensure", "--json"), "access denied"),
    (("streams", "backup", "{tmp}/backup", "--json"), "access denied"),
    (("-o", "json", "sessions", "list"), "UNAUTHENTICATED"),
    (("omni", "identity", "resolve", "whatsapp", "1", "--json"), "UNAUTHENTICATED"),
]


@pytest.mark.parametrize(("args", "code"), REFUSED_CREDENTIALS)
@pytest.mark.parametrize("password", [None, "wrong"])
def test_refused_nats_credentials_are_access_denied_naming_the_settings(
    guarded_nats: Any, tmp_path: Path, args: tuple[str, ...], code: str, password: str | None
) -> None:
    """Each group said it differently: `streams ensure` printed a repr, `archive` and
    `streams backup` called it refused, `sessions` INTERNAL (a bug), `omni`
    INVALID_ARGUMENT; none said which settings to check."""
    env = clean_environ() | {
        "JETSOURCE_NATS__URL": f"nats://127.0.0.1:{guarded_nats.port}",
        "JETSOURCE_ARCHIVE__URL": str(tmp_path / "archive"),
    }
    if password is not None:
        env |= {"JETSOURCE_NATS__USER": "admin", "JETSOURCE_NATS__PASSWORD": password}
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = jetsource(env, *argv, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == code, error
    assert "refused this client" in error["message"]
    assert "JETSOURCE_NATS__USER" in error["message"]
    assert "JETSOURCE_NATS__CREDS_FILE" in error["message"]
    assert "AccessDeniedError" not in error["message"]
    assert "wrong" not in error["message"]  # no secret is echoed


def test_infra_status_json_gives_pids_as_numbers_or_null(
    tmp_path: Path, nats_server: Server
) -> None:
    """`pid` was a string in JSON: "17129", "-" for none, "external"."""
    env = clean_environ() | {
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_NATS__URL": nats_server.url,  # external: probed, never started
        "JETSOURCE_DEVSTACK__VALKEY_PORT": str(free_port()),  # local, not running
        "JETSOURCE_DEVSTACK__GRAPH_HTTP_PORT": str(free_port()),
        "JETSOURCE_DEVSTACK__GRAPH_BOLT_PORT": str(free_port()),
    }
    done = jetsource(env, "-o", "json", "infra", "status", timeout=60)
    assert done.returncode == 1, done.stderr  # valkey and the graph store are down
    body = json.loads(done.stdout)
    servers = {r["name"]: r for r in body["servers"]}
    assert (servers["nats"]["pid"], servers["nats"]["external"]) == (None, True)
    assert servers["nats"]["healthy"] is True
    assert (servers["valkey"]["pid"], servers["valkey"]["external"]) == (None, False)
    assert all(r["pid"] is None or isinstance(r["pid"], int) for r in body["services"])


def test_a_cutover_to_a_version_holding_dead_letters_says_so(
    tmp_path: Path, valkey_server: Server, unique: str
) -> None:
    """It was silent: the stories parked in the new version stop at their dead letter
    in what queries read from then on."""
    fresh = start_nats(tmp_path / "nats")
    try:
        asyncio.run(fill_process_and_omni(fresh.url))

        async def poison() -> None:
            nc = await nats.connect(fresh.url)
            await nc.jetstream().publish("process.events.p-bad.process_started", b"garbage")
            await nc.close()

        asyncio.run(poison())
        env = clean_environ() | {
            "JETSOURCE_NATS__URL": fresh.url,
            "JETSOURCE_VALKEY__URL": valkey_server.url,
            "JETSOURCE_PROJECTOR__VALKEY_PREFIX": f"dl{unique}",
            "JETSOURCE_PROJECTOR__MAX_DELIVER": "2",
            "JETSOURCE_PROJECTOR__BACKOFF_S": "[0.1]",
            "JETSOURCE_PROGRESS_EVERY_S": "60",
        }
        ok(env, "streams", "ensure")
        ok(env, "projector", "rebuild", "processes", "--to-version", "2")
        done = jetsource(
            env, "projector", "cutover", "processes", "--to-version", "2", "--json", timeout=120
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert (result["active"], result["dead_letters"]) == (2, 1)
        warnings = [json.loads(line) for line in done.stderr.splitlines()]
        assert any("1 dead letters" in w.get("warning", "") for w in warnings), done.stderr
        assert any("dlq list" in w.get("warning", "") for w in warnings)
        # v1 was never run (no consumer): refused saying so, not "-1 events behind".
        back = jetsource(env, "projector", "cutover", "processes", "--to-version", "1", "--json")
        assert back.returncode == 1, back.stderr
        message = json.loads(back.stderr.splitlines()[-1])["error"]["message"]
        assert "no consumer" in message and "-1" not in message, message
    finally:
        fresh.stop()
