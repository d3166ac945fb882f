"""fix10c2: a NATS that comes up 1 s after an admin command starts (a pod restarting
refuses connections for a few seconds). Since 11578ab the command ended at the first
refusal (exit 3), so the archive compact CronJob and the Helm admin Job (backoffLimit 0)
were lost to a NATS restart they rode out before. Run as a job (stdin not a terminal)
it waits as before, within JETSOURCE_ADMIN_CONNECT_TIMEOUT_S; run by a person (stdin a
terminal) it tries a refused connection again for 1.5 s, then says it at once."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetsource.devstack.servers import NatsServer, free_port
from tests.cli_env import clean_environ
from tests.infra import _embedded


@pytest.mark.skipif(
    bool(os.environ.get("JETSOURCE_TEST_NATS_URL")), reason="starts its own nats-server"
)
@pytest.mark.parametrize("stdin", ["job", "terminal"])
def test_an_admin_command_takes_a_nats_that_comes_up_a_second_later(
    stdin: str, tmp_path: Path
) -> None:
    port = free_port()
    server = NatsServer(tmp_path / "nats", port=port, monitor_port=free_port(), sync_interval=None)
    env = clean_environ() | {"JETSOURCE_NATS__URL": f"nats://127.0.0.1:{port}"}
    env.pop("JETSOURCE_ADMIN_REFUSED_WAIT_S", None)
    primary, secondary = pty.openpty()
    try:
        cli = subprocess.Popen(
            [sys.executable, "-m", "jetsource", "-o", "json", "archive", "list"],
            env=env,
            stdin=subprocess.DEVNULL if stdin == "job" else secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        started = _embedded(server)
        try:
            out, err = cli.communicate(timeout=30)
        finally:
            started.stop()
    finally:
        os.close(primary)
        os.close(secondary)
    assert cli.returncode == 0, err  # was 3: "NATS at ... is not reachable" at once
    assert out.strip() == "[]", out
