"""The environment a test runs the `jetsource` command in, against the session's
servers: the caller's environment without any ``JETSOURCE_*`` setting (a developer's
shell must not reach the test), plus the servers and stream names of the test's own.

One copy for the CLI tests that each built the same dict (repair, streams, admin
output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from jetsource.core.settings import EventStoreSettings


def clean_environ() -> dict[str, str]:
    """``os.environ`` without any ``JETSOURCE_*`` setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}


def cli_env(
    nats_url: str, unique: str, *, valkey_url: str | None = None, **settings: str
) -> dict[str, str]:
    """``clean_environ()`` with NATS (and Valkey), and names of this test's own: the
    event stream ``CE_<unique>`` (subjects ``ce<unique>.events``), snapshots
    ``CS_<unique>`` (``cs<unique>.snapshots``), dead letters ``DLQ_<unique>``
    (``dlq<unique>``) and the read models' control bucket ``RM_<unique>``. ``settings``
    are more ``JETSOURCE_*`` variables (or other names for these)."""
    env = clean_environ() | {
        "JETSOURCE_NATS__URL": nats_url,
        "JETSOURCE_EVENTSTORE__STREAM": f"CE_{unique}",
        "JETSOURCE_EVENTSTORE__SUBJECT_PREFIX": f"ce{unique}.events",
        "JETSOURCE_SNAPSHOTS__STREAM": f"CS_{unique}",
        "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX": f"cs{unique}.snapshots",
        "JETSOURCE_PROJECTOR__DLQ_STREAM": f"DLQ_{unique}",
        "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX": f"dlq{unique}",
        "JETSOURCE_PROJECTOR__CONTROL_BUCKET": f"RM_{unique}",
    }
    if valkey_url is not None:
        env["JETSOURCE_VALKEY__URL"] = valkey_url
    return env | settings


def event_store_settings(env: dict[str, str]) -> EventStoreSettings:
    """The event stream ``env`` names, for appending to it directly."""
    return EventStoreSettings(
        stream=env["JETSOURCE_EVENTSTORE__STREAM"],
        subject_prefix=env["JETSOURCE_EVENTSTORE__SUBJECT_PREFIX"],
    )


def jetsource(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m jetsource ARGS`` in ``env``, stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "jetsource", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def streams(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``jetsource streams ARGS`` in ``env`` (a backup or restore may take a while)."""
    return jetsource(env, "streams", *args, timeout=180)


def streams_json(env: dict[str, str], *args: str) -> Any:
    """``jetsource streams ARGS --json``, which must succeed: its JSON document."""
    run = streams(env, *args, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)
