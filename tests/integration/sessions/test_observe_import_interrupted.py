"""`jetsource observe import FILE` stopped by Ctrl-C before the end of the file, against a
real observer on a real NATS server: it printed its report and exited 0, as if the
file were done, so a script could not tell. Now the report (what was recorded and saved)
is on stdout, then `CANCELLED: ... run the same command again to resume`, exit 130; the
same command then goes on from the saved line to the end."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jetsource.core.settings import JetsourceSettings
from jetsource.observer.server import Observer
from jetsource.observer.server import build as build_observer
from jetsource.observer.settings import ObserverOptions, ObserverSettings
from tests.cli_env import cli_env

pytestmark = pytest.mark.integration

LINES = 4_000  # enough that Ctrl-C, sent after the first batch is saved, comes before the end


@pytest.fixture
async def observer(settings: JetsourceSettings, unique: str) -> AsyncIterator[Observer]:
    shared = {name: getattr(settings, name) for name in JetsourceSettings.model_fields}
    server = await build_observer(
        ObserverSettings(
            **shared,
            observer=ObserverOptions(grpc_port=0, metrics_port=0, claims_bucket=f"CL_{unique}"),
        )
    )
    yield server
    await server.stop(0)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_ctrl_c_before_the_end_says_so_exit_130_and_the_same_command_resumes(
    observer: Observer,
    settings: JetsourceSettings,
    unique: str,
    tmp_path: Path,
    stop: signal.Signals,
) -> None:
    """The observer serves from this test's event loop: the command runs beside it.
    SIGTERM the same, its line naming SIGTERM (it said "(Ctrl-C)")."""
    path = tmp_path / "run.jsonl"
    with path.open("w") as f:
        for i in range(LINES):
            pid = f"p{unique}-{i % 20}"
            kind = "process_started" if i < 20 else "note"
            f.write(json.dumps({"process_id": pid, "event_type": kind, "data": {"i": i}}) + "\n")
    state = tmp_path / "run.jsonl.jetsource-position"
    env = cli_env(settings.nats_url(), unique)
    args = ["-m", "jetsource", "observe", "import", str(path), "-o", "json",
            "--observer", f"127.0.0.1:{observer.port}", "--batch", "5"]  # fmt: skip
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=pipe, stderr=pipe
    )
    try:
        deadline = time.monotonic() + 60
        while not state.exists():  # saved after its first recorded batch
            assert proc.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        proc.send_signal(stop)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, (stdout, stderr)
    report = json.loads(stdout)
    assert 0 < report["line"] < LINES, report
    error = json.loads(stderr.decode().strip().splitlines()[-1])["error"]
    assert error["code"] == "CANCELLED" and error["exit_code"] == 130, error
    assert f"line {report['line']}" in error["message"], error
    assert "run the same command again" in error["message"], error
    said = "(Ctrl-C)" if stop == signal.SIGINT else "(SIGTERM)"
    assert said in error["message"], error

    again = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env, stdout=pipe, stderr=pipe
    )
    stdout, stderr = await asyncio.wait_for(again.communicate(), 300)
    assert again.returncode == 0, (stdout, stderr)
    rest = json.loads(stdout)
    assert rest["line"] == LINES and rest["recorded"] >= LINES - report["line"], rest
