"""A reader of stdout that leaves (`jetsource ... | head -1`) ends any command with
exit 0 and nothing on stderr, as `ctx watch`, `process watch` and `sessions follow`
already ended. Every other command (and `--help`) exited 1, "refused by the server"
by the README's table, in silence: Click's and Rich's own answer to a broken pipe, so
`set -o pipefail` scripts failed on a read that had worked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import clean_environ

JETSOURCE = str(Path(sys.executable).parent / "jetsource")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ctx", "--help"],
        ["sessions", "catalog"],  # a table read from the package: no server needed
        ["-o", "json", "sessions", "catalog"],
    ],
    ids=" ".join,
)
def test_a_reader_that_left_is_exit_0(argv: list[str]) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: EPIPE on the first write
    try:
        done = subprocess.run(
            [JETSOURCE, *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            env={**clean_environ(), "COLUMNS": "100"},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, b""), done.stderr.decode()
