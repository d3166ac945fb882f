"""A session that failed with no error text (a `session_ended` of status failed that
names no error, as `sessions import` takes from another tool): `sessions list` and
`sessions show` say the same error, none. The ledger's ending records the placeholder
"failed" for the registry; `show` read it back as none while `list` (the registry's
error) showed "failed", a text nobody wrote."""

from __future__ import annotations

import json
from pathlib import Path

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.settings import SessionsAppSettings
from tests.integration.sessions.ledger_input import imported, line
from tests.integration.sessions.test_cli import cli


async def test_list_and_show_agree_on_a_failure_with_no_error_text(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    lines = [
        line("quiet", 1, "session_started", {"command": "deploy"}),
        line("quiet", 2, "session_ended", {"status": "failed"}),
        line("told", 1, "session_started", {"command": "build"}),
        line("told", 2, "session_ended", {"status": "failed", "error": "exit 3"}),
    ]
    listed = await imported(app_settings, tmp_path, lines)
    rows = {r["session"]: (r["status"], r["error"]) for r in listed}
    assert rows == {"quiet": ("failed", None), "told": ("failed", "exit 3")}
    for sid, (status, error) in rows.items():
        shown = await cli(app_settings, "show", sid, "-o", "json")
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)
        assert (record["status"], record["error"]) == (status, error), sid


async def test_list_and_show_agree_on_a_failure_whose_error_is_failed(
    client: SessionsClient, app_settings: SessionsAppSettings, tmp_path: Path
) -> None:
    """A user's error "failed" is that error in `list` as in `show`: `list` read it as
    the ending's placeholder for none (the same string), so it said null."""
    lines = [
        line("literal", 1, "session_started", {"command": "deploy"}),
        line("literal", 2, "session_ended", {"status": "failed", "error": "failed"}),
    ]
    listed = await imported(app_settings, tmp_path, lines)
    rows = {r["session"]: (r["status"], r["error"]) for r in listed}
    assert rows["literal"] == ("failed", "failed")
    shown = json.loads((await cli(app_settings, "show", "literal", "-o", "json")).stdout)
    assert (shown["status"], shown["error"]) == ("failed", "failed")
