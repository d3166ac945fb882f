"""`sessions import` and `sessions prune` said "1 events", "1 sessions (1 processes,
...)" in text; one is singular now, and their JSON is as it was."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.ledger_input import line
from tests.integration.sessions.test_cli import cli

OLD = "2020-12-01T10:00:00.000Z"  # older than the prune's --older-than 1d


async def test_one_is_singular_in_import_and_prune_text(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    source = tmp_path / "one.jsonl"
    await asyncio.to_thread(
        source.write_text, line("one", 1, "session_started", {"command": "x"}, OLD) + "\n"
    )
    imported = await cli(app_settings, "import", str(source), "-o", "plain")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "1 event, 1 appended, 0 already recorded"
    ended = tmp_path / "ended.jsonl"
    await asyncio.to_thread(
        ended.write_text, line("one", 2, "session_ended", {"status": "completed"}, OLD) + "\n"
    )
    again = await cli(app_settings, "import", str(ended), "-o", "json")
    assert json.loads(again.stdout) == {"events": 1, "appended": 1}  # JSON as it was

    pruned = await cli(
        app_settings, "prune", "--older-than", "1d", "--keep", "0", "--dry-run", "-o", "plain"
    )
    assert pruned.returncode == 0, pruned.stderr
    first = pruned.stdout.splitlines()[0]
    assert first == "would remove 1 session (1 process, 2 events); kept 0", pruned.stdout
