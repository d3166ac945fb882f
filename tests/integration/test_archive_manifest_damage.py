"""`jetsource archive export | verify | list` over a manifest that is not all well: a
manifest entry that does not read (not JSON, or JSON but not an entry) is named and
reported under `corrupt` while every other segment is still verified and listed; an
export over a range partly sealed already seals only what no segment holds (the
manifest stays a set of segments each sealed once) and says what it left out."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jetsource.domains.context.events import registry
from jetsource.eventstore.jetstream import JetStreamEventStore
from tests.cli_env import cli_env, event_store_settings, jetsource
from tests.history_fixtures import append_history
from tests.infra import Server

pytestmark = pytest.mark.integration


def environment(url: str, unique: str, archive: Path) -> dict[str, str]:
    """The CLI's environment with this test's streams and archive (10-event segments)."""
    return cli_env(
        url,
        unique,
        JETSOURCE_ARCHIVE__URL=str(archive),
        JETSOURCE_ARCHIVE__SEGMENT_EVENTS="10",
    )


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return jetsource(env, "archive", *args, "--json", timeout=120)


def ok(env: dict[str, str], *args: str) -> Any:
    run = cli(env, *args)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines()]


async def test_overlapping_exports_and_damaged_entries(
    nats_server: Server, nc: Any, unique: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    env = environment(nats_server.url, unique, archive)
    store = JetStreamEventStore(nc, registry, event_store_settings(env))
    await store.ensure_streams()
    await append_history(store, "story", 30, seed=3)

    # An export over a range half sealed already seals the other half alone.
    first = ok(env, "export", "--to-seq", "20")
    assert [e["count"] for e in first] == [10, 10]
    run = cli(env, "export", "--from-seq", "11", "--to-seq", "30")
    assert run.returncode == 0, run.stderr
    assert [e["count"] for e in json.loads(run.stdout)] == [10]
    warning = lines(run.stderr)[0]["warning"]
    assert "sequences 11..20 left out: sealed already" in warning, warning
    listed = ok(env, "list")
    assert [(e["first_seq"], e["last_seq"]) for e in listed] == [(1, 10), (11, 20), (21, 30)]
    assert ok(env, "export") == []  # everything sealed: nothing again

    # Two manifest entries that do not read: named, the third segment still verified.
    entries = sorted((archive / "manifest" / f"CE_{unique}").iterdir())
    entries[0].write_text('{"bad')
    entries[1].write_text("[]")
    run = cli(env, "verify")
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] == [listed[2]["name"]]
    assert sorted(report["corrupt"]) == [
        f"manifest/CE_{unique}/{entries[0].name}",
        f"manifest/CE_{unique}/{entries[1].name}",
    ]
    assert "not a manifest entry" in report["corrupt"][f"manifest/CE_{unique}/{entries[1].name}"]
    assert report["orphans"] == []  # their segments are named by the entries' keys
    error = lines(run.stderr)[-1]["error"]
    assert entries[0].name in error["message"] and entries[1].name in error["message"], error

    run = cli(env, "list")
    assert run.returncode == 1, run.stdout + run.stderr
    assert [e["name"] for e in json.loads(run.stdout)] == [listed[2]["name"]]
    error = lines(run.stderr)[-1]["error"]
    assert sorted(error["unreadable"]) == sorted(report["corrupt"])
    assert entries[0].name in error["message"], error

    # Usage errors carry the option at fault.
    run = cli(env, "export", "--from-seq", "5", "--to-seq", "2")
    assert run.returncode == 2 and lines(run.stderr)[-1]["error"]["field"] == "--to-seq"
    await store.close()
