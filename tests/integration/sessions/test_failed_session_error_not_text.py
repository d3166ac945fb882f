"""A failed session whose error is JSON but no string (a number, an object, a list, a
boolean: the format takes any JSON in ``data``, and `sessions import` takes another
tool's ending): `sessions list` and `sessions show` say the same error, the one
rendering of format.error_text (a string as written, other JSON as compact JSON with
sorted keys), as `export` writes it in the event. Both said none: the registry's
error was read only when a string (list), the fold kept only a string (show)."""

from __future__ import annotations

import json
from pathlib import Path

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.ledger_input import imported, line
from tests.integration.sessions.test_cli import cli


async def test_list_and_show_agree_on_a_failure_whose_error_is_no_string(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    errors: dict[str, tuple[object, str | None]] = {
        "number": (42, "42"),
        "fraction": (2.5, "2.5"),
        "object": ({"message": "disk full", "code": 7}, '{"code":7,"message":"disk full"}'),
        "list": (["a", 1], '["a",1]'),
        "flag": (True, "true"),
        "text": ("exit 3", "exit 3"),
        "null": (None, None),
    }
    lines = []
    for sid, (error, _) in errors.items():
        lines.append(line(sid, 1, "session_started", {"command": "deploy"}))
        lines.append(line(sid, 2, "session_ended", {"status": "failed", "error": error}))
    rows = {r["session"]: r["error"] for r in await imported(app_settings, tmp_path, lines)}
    assert rows == {sid: text for sid, (_, text) in errors.items()}
    for sid, (error, text) in errors.items():
        shown = await cli(app_settings, "show", sid, "-o", "json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["error"] == text, sid
        exported = await cli(app_settings, "export", sid)
        ended = json.loads(exported.stdout.splitlines()[-1])
        assert ended["data"].get("error") == error, sid  # the event as written
