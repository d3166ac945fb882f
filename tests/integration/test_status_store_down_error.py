"""probe9b: `projector status` with a model's store down (Valkey refusing connections)
printed its report and exited 3 with nothing on stderr, in JSON mode too: a script saw
a failure and no error to show, where a missing stream or a leaderless one ends with
an error line. It now ends with `unavailable: the store of N read models did not
answer (...)`, naming each model and what its store said."""

from __future__ import annotations

import asyncio
import json

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.devstack.servers import free_port
from jetsource.projection.bootstrap import open_projection
from jetsource.projection.control import LIVE, ModelControl
from tests.cli_env import cli_env, jetsource
from tests.infra import Server
from tests.projector_fixtures import projector_settings

pytestmark = pytest.mark.integration


async def test_status_with_a_store_down_ends_with_an_error_naming_the_models(
    settings: JetsourceSettings, nats_server: Server, unique: str
) -> None:
    models = ["context", "timeline"]
    p = await open_projection(projector_settings(settings, unique, models=models))
    try:
        for name in models:  # a live version 1 of each, as after a projector ran them
            await p.control.save(name, ModelControl(1, {1: LIVE}))
    finally:
        await p.close()
    port = free_port()
    env = cli_env(
        nats_server.url,
        unique,
        valkey_url=f"redis://127.0.0.1:{port}/0",
        JETSOURCE_PROJECTOR__MODELS=json.dumps(models),
    )
    ensured = await asyncio.to_thread(jetsource, env, "streams", "ensure", "--json")
    assert ensured.returncode == 0, ensured.stderr
    for mode in ("json", "plain"):
        run = await asyncio.to_thread(jetsource, env, "-o", mode, "projector", "status")
        assert run.returncode == 3, run.stdout + run.stderr
        if mode == "json":
            rows = json.loads(run.stdout)
            assert {r["state"] for r in rows if r["model"] in models} == {"unavailable"}
            lines = run.stderr.splitlines()
            assert len(lines) == 1, run.stderr
            error = json.loads(lines[0])["error"]
            assert error["code"] == "unavailable" and error["exit_code"] == 3
            assert error["unavailable"] == models, error
            assert error["message"].startswith("the store of 2 read models did not answer")
            assert f"127.0.0.1:{port}" in error["message"]
        else:
            assert run.stderr.startswith("unavailable: the store of 2 read models"), run.stderr
