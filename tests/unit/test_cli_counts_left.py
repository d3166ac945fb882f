"""fix10c2: three counts 2014276 left saying "1 ...s" in text output: ``archive
restore``'s "1 gaps kept", ``projector drop``'s "(1 keys/nodes)" and the demo's
"with 1 decisions" (and "(2 decision, 2 subtask)"). They use ``output.count`` now."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from jetsource.archive.restore import RestoreReport
from jetsource.cli import archive, infra, output, projector
from jetsource.cli.app import app
from tests.cli_env import clean_environ


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["-o", "plain", *args], env=clean_environ())
    output.set_mode(None)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_archive_restore_says_one_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    report = RestoreReport("CONTEXT_EVENTS", "RESTORED", 4, 1, 1, 1, 6)
    monkeypatch.setattr(archive, "_run", lambda *a, **k: report)
    said = _invoke(["archive", "restore", "RESTORED"])
    assert said == (
        "RESTORED: sequences 1..6 restored (4 from the archive, 1 from the live stream, "
        "1 gap kept)\n"
    )


@pytest.mark.parametrize(("removed", "words"), [(1, "1 key/node"), (3, "3 keys/nodes")])
def test_projector_drop_says_one_key(
    removed: int, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(projector, "_run", lambda *a, **k: removed)
    said = _invoke(["projector", "drop", "context", "--version", "2"])
    assert said == f"context v2 dropped ({words})\n"


class _Query:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def __aenter__(self) -> _Query:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def get_context(self, demo: str, min_version: int) -> Any:
        context = SimpleNamespace(version=3, decisions=["d1", "d2"], subtasks=["s1"])
        return SimpleNamespace(behind=False, context=context)

    async def at_version(self, demo: str, version: int) -> Any:
        return SimpleNamespace(context=SimpleNamespace(title="demo", decisions=["d1"]))

    async def graph(self, demo: str, depth: int) -> Any:
        return SimpleNamespace(version=3, edges=[])


def test_the_demo_says_one_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr("jetsource.client.QueryClient", _Query)
    monkeypatch.setattr(infra, "_say", said.append)
    asyncio.run(infra._demo_read_models("demo", 3, None))  # type: ignore[arg-type]
    assert "answered version 3 (2 decisions, 1 subtask) from the read model" in said[0]
    assert "GetContextAtVersion(1): 'demo' with 1 decision; graph: " in said[0]
