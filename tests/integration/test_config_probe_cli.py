"""The CLI given a setting it cannot use: exit 2 and ``INVALID_ARGUMENT: bad setting:
JETSOURCE_...: <why>`` before it connects to anything. A list setting that is not JSON
was ``INTERNAL: unexpected SettingsError ... (a bug)``, exit 1; a validator's message
came with pydantic's ``Value error, `` before it; a NATS URL with a wrong scheme was
tried (the host ``http``) until the connect timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

JETSOURCE = Path(sys.executable).parent / "jetsource"


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("JETSOURCE_PROJECTOR__MODELS", "contexts,timeline", "Invalid JSON"),
        ("JETSOURCE_NATS__URL", "http://nats:4222", "the scheme must be one of nats://"),
        ("JETSOURCE_EVENTSTORE__STREAM", "CONTEXT EVENTS", "is not a stream name"),
        ("JETSOURCE_LOG_LEVEL", "verbose", "is not a level"),
    ],
)
@pytest.mark.parametrize("json_mode", [False, True])
def test_a_bad_setting_is_a_usage_error_naming_it(
    variable: str, value: str, why: str, json_mode: bool, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_SECRETS_DIR": str(tmp_path / "none"),
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        variable: value,
    }
    args = [str(JETSOURCE), *(["-o", "json"] if json_mode else []), "projector", "status"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Value error" not in done.stderr
    if json_mode:
        error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
        assert (error["code"], error["exit_code"]) == ("INVALID_ARGUMENT", 2)
        message = error["message"]
    else:
        message = done.stderr.strip().splitlines()[-1]
        assert message.startswith("INVALID_ARGUMENT: ")
    assert f"bad setting: {variable}" in message and why in message


@pytest.mark.parametrize("command", [["projector", "status"], ["ctx", "show", "c1"]])
def test_a_refused_url_is_shown_with_its_credentials_masked(
    command: list[str], tmp_path: Path
) -> None:
    """The CLI printed a refused URL as it came, password and all (the services mask
    it): both now show it through one function, ``core.settings.shown_input``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env |= {
        "JETSOURCE_SECRETS_DIR": str(tmp_path / "none"),
        "JETSOURCE_DEVSTACK__HOME": str(tmp_path / "home"),
        "JETSOURCE_NATS__URL": "http://ops:hunter2@nats:4222",
    }
    done = subprocess.run(
        [str(JETSOURCE), *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "hunter2" not in done.stderr, done.stderr
    assert "JETSOURCE_NATS__URL='http://***@nats:4222'" in done.stderr, done.stderr
