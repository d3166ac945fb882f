"""A dry run's count of a nested process's messages (``LedgerReader.held``, one
STREAM.INFO with a subject filter) goes through the store's retries and error
mapping, as ``stream_info`` does.

It called the JetStream API directly: one STREAM.INFO that timed out made the dry
run raise a bare TimeoutError ("INTERNAL: unexpected TimeoutError ... (a bug)",
exit 1). A timeout is now asked again; one that persists is UNAVAILABLE (exit 3)
with what NATS did not answer. Real NATS; the timeout injected."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.sessions import app
from jetsource.core.errors import EventStoreUnavailableError
from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.settings import SessionsAppSettings
from jetsource.eventstore import jsapi
from tests.integration.sessions.test_cli import env_of

from .test_prune import child_of, ended


def times_out(monkeypatch: pytest.MonkeyPatch, times: int) -> list[str]:
    """STREAM.INFO with a subject filter (``held``'s) times out ``times`` times."""
    original = jsapi.api
    failed: list[str] = []

    async def api(replies: Any, subject: str, body: Any = None, *args: Any, **kw: Any) -> Any:
        held = subject.startswith("STREAM.INFO.") and body and "subjects_filter" in body
        if held and len(failed) < times:
            failed.append(body["subjects_filter"])
            raise TimeoutError
        return await original(replies, subject, body, *args, **kw)

    monkeypatch.setattr(jsapi, "api", api)
    return failed


async def test_a_timed_out_count_is_asked_again(
    client: SessionsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = await ended(client, 2)
    nested = await child_of(client, done[0])
    failed = times_out(monkeypatch, 1)
    plan = await client.sessions.prune(None, older_than_s=0.001, keep=0, dry_run=True)
    assert len(failed) == 1  # it was raised: a bare TimeoutError
    assert plan.processes == 3 and plan.uncounted == []
    assert plan.events == 3 * 2 + 2  # the nested one's two counted once answered
    stream = client.sessions.stream
    assert stream is not None
    assert await stream.held(nested) == 2


async def test_a_count_that_keeps_timing_out_is_unavailable(
    client: SessionsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = await ended(client, 1)
    await child_of(client, done[0])
    times_out(monkeypatch, 10**6)
    with pytest.raises(EventStoreUnavailableError, match="did not answer"):
        await client.sessions.prune(None, older_than_s=0.001, keep=0, dry_run=True)


async def test_the_cli_says_unavailable_not_internal(
    client: SessionsClient, app_settings: SessionsAppSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = await ended(client, 1)
    await child_of(client, done[0])
    await asyncio.sleep(1.1)  # older than the CLI's least age, 1s
    times_out(monkeypatch, 10**6)
    env = env_of(app_settings)

    def prune() -> Any:
        result = CliRunner(env=env).invoke(
            app,
            ["prune", "--dry-run", "-o", "json", "--older-than", "1s", "--keep", "0"],
            catch_exceptions=False,
        )
        out.set_mode(None)
        return result

    result = await asyncio.to_thread(prune)
    error = json.loads(result.stderr.splitlines()[-1])["error"]
    assert error["code"] == "UNAVAILABLE", error  # was INTERNAL, "a bug", exit 1
    assert result.exit_code == out.UNAVAILABLE
    assert "TimeoutError" in error["message"]
