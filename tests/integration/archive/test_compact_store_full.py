"""`jetsource archive compact` on a server whose JetStream store is full (``max_file_store``
standing in for a full disk): named and exit 3, then done on its own once space is back.

Before the fix the horizon bucket's refusal came out as exit 1 ``refused: JetStream
error 503/10023: insufficient resources``: no stream, no way out, and exit 1 says a
retry will not help, while freeing space and running it again does. Now it is exit 3
``unavailable`` naming the stream (``KV_HORIZONS_<stream>``) and what to do; run again
once space is freed, it seals the same segment (nothing archived twice) and purges.
Every admin group answers an unnamed refusal of the server's own the same way
(``output.refusal``; ``tests/unit/test_cli_refusals.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.archive import app
from jetsource.devstack.servers import NatsServer, free_port
from tests.history_fixtures import append_history, save_snapshots
from tests.infra import Server, _embedded
from tests.integration.archive.test_cli import environment, stores

pytestmark = pytest.mark.integration


def compact(env: dict[str, str]) -> tuple[int, str, str]:
    """`jetsource archive compact --json` in this process (it runs its own loop: call it
    in a thread), with only ``env``'s JETSOURCE_ settings."""
    settings = {k: v for k, v in env.items() if k.startswith("JETSOURCE_")}
    cleared = {k: None for k in os.environ if k.startswith("JETSOURCE_") and k not in settings}
    runner = CliRunner(env={**cleared, **settings})
    try:
        result = runner.invoke(app, ["compact", "--json"], catch_exceptions=False)
    finally:
        out.set_mode(None)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[Server]:
    server = _embedded(
        NatsServer(
            tmp_path / "nats", port=free_port(), monitor_port=free_port(), max_file_store="256KB"
        )
    )
    yield server
    server.stop()


async def test_compact_on_a_full_store_is_named_exit_3_and_done_once_freed(
    small_nats: Server, unique: str, tmp_path: Path
) -> None:
    nc = await nats.connect(small_nats.url)
    try:
        env = environment(small_nats.url, unique, tmp_path / "archive")
        store, snapshots = await stores(nc, unique)
        records = await append_history(store, "full1", 25, seed=1)
        await save_snapshots(snapshots, records, [20])
        await asyncio.sleep(1.1)  # past the one-second horizon

        js = nc.jetstream()
        await js.add_stream(name=f"FILL_{unique}", subjects=[f"fill{unique}.>"])
        with pytest.raises(nats.js.errors.APIError):
            for _ in range(10_000):
                await js.publish(f"fill{unique}.x", b"x" * 16_384)

        code, stdout, stderr = await asyncio.to_thread(compact, env)
        assert code == 3, stdout + stderr
        error = json.loads(stderr.strip().splitlines()[-1])["error"]
        assert error["code"] == "unavailable", error
        assert f"KV_HORIZONS_AE_{unique}" in error["message"], error
        assert "insufficient storage" in error["message"], error
        assert "To recover: free space" in error["message"], error
        assert (await js.stream_info(f"AE_{unique}")).state.messages == 25  # nothing purged

        await js.delete_stream(f"FILL_{unique}")
        code, stdout, stderr = await asyncio.to_thread(compact, env)
        assert code == 0, stdout + stderr
        report = json.loads(stdout)
        assert report["purged"] == 20 and len(report["segments"]) == 1, report
        assert len(list((tmp_path / "archive").rglob("*.seg"))) == 1  # sealed once
    finally:
        await nc.close()
