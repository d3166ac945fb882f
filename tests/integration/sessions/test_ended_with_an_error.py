"""A session that ended interrupted or completed naming an error: `sessions show` said
the error, `sessions list` said null (the list took only a failure's error from the
ledger's endings). Both say it now, in JSON and in text."""

from __future__ import annotations

import json
from pathlib import Path

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.ledger_input import imported, line
from tests.integration.sessions.test_cli import cli


async def test_list_says_the_error_show_says_for_every_ending(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    lines = []
    for sid, status, error in (
        ("cut", "interrupted", "SIGTERM"),
        ("done", "completed", {"warnings": 2}),
        ("fine", "completed", None),
        ("bad", "failed", "exit 3"),
    ):
        ended: dict[str, object] = {"status": status}
        if error is not None:
            ended["error"] = error
        lines += [
            line(sid, 1, "session_started", {"command": "deploy"}),
            line(sid, 2, "session_ended", ended),
        ]
    listed = await imported(app_settings, tmp_path, lines)
    rows = {r["session"]: (r["status"], r["error"]) for r in listed}
    assert rows == {
        "cut": ("interrupted", "SIGTERM"),
        "done": ("completed", '{"warnings":2}'),
        "fine": ("completed", None),
        "bad": ("failed", "exit 3"),
    }
    for sid, (status, error) in rows.items():
        shown = json.loads((await cli(app_settings, "show", sid, "-o", "json")).stdout)
        assert (shown["status"], shown["error"]) == (status, error), sid
    text = await cli(app_settings, "list", "-o", "plain")
    assert "SIGTERM" in text.stdout, text.stdout
