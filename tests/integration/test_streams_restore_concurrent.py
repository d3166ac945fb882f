"""Two `jetsource streams restore` of one backup into one stream at once: the second
found the first's stream marked ``running`` and went on from its last message while
the first went on too, both exit 0, the stream holding 5,590 messages for 3,000 backed
up. One restore (or backup) uses a folder at a time: the second is refused at once
naming the folder (exit 1), the first restores every message once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from tests.cli_env import streams as cli
from tests.cli_env import streams_json as ok
from tests.infra import Server
from tests.integration.test_streams_backup_safety import (
    MESSAGES,
    environment,
    last_error,
    letters,
)

pytestmark = pytest.mark.integration


def running(env: dict[str, str], args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "jetsource", "streams", *args],
        env=env | {"JETSOURCE_PROGRESS_EVERY_S": "1e-9"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def test_a_second_restore_of_a_folder_is_refused_while_one_runs(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    env = environment(nats_server.url, unique)
    stream = await letters(nats_server.url, unique, MESSAGES)
    folder = tmp_path / "b"
    ok(env, "backup", str(folder), f"--stream={stream}")
    target = f"R{stream}"
    args = ["restore", str(folder), f"--rename={stream}={target}"]
    args += [f"--subject-prefix=dlq{unique}=r{unique}", "--json"]
    first = running(env, args)
    try:
        assert first.stderr is not None
        read = b""  # progress lines left unread after these: it stops midway
        while read.count(b"\n") < 50:
            byte = os.read(first.stderr.fileno(), 1)
            assert byte, read
            read += byte
        second = cli(env, *args)
        backup = cli(env, "backup", str(folder), f"--stream={stream}", "--json")
    finally:
        _, err = first.communicate(timeout=60)
    for refused in (second, backup):
        assert refused.returncode == 1, refused.stderr[-2000:]
        error = last_error(refused.stderr)
        assert error["code"] == "refused" and str(folder) in error["message"], error
    assert first.returncode == 0, err[-2000:]
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info(target)
    finally:
        await nc.close()
    assert info.state.messages == MESSAGES
