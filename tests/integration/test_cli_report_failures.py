"""A command that prints its report and then fails (exit 1) says so in the standard
line on stderr, `refused: ...` (with --json / -o json one JSON error document there),
the report unchanged on stdout. `archive verify` of a damaged segment exited 1 with the
report alone: a script reading stderr saw nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.infra import Server
from tests.integration.test_admin_cli_output import environment, fill, run


async def test_archive_verify_of_a_damaged_segment_says_refused(
    nats_server: Server, unique: str, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    env = environment(nats_server.url, unique, archive)
    rc, out, err = run(env, tmp_path, "streams", "ensure", "--json")
    assert rc == 0, out + err
    await fill(env)
    rc, out, err = run(env, tmp_path, "archive", "export", "--json")
    assert rc == 0, out + err
    name = json.loads(out)[0]["name"]
    segment = archive / name
    blob = bytearray(segment.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    segment.write_bytes(bytes(blob))

    rc, out, err = run(env, tmp_path, "archive", "verify")
    assert rc == 1, out + err
    assert out.startswith("0 segments verified, 1 damaged"), out
    assert err == f"refused: 1 segment damaged: {name}\n", err

    rc, out, err = run(env, tmp_path, "archive", "verify", "--json")
    assert rc == 1, out + err
    assert list(json.loads(out)["corrupt"]) == [name], out  # the report, as before
    error = json.loads(err)["error"]
    assert error == {
        "code": "refused",
        "message": f"1 segment damaged: {name}",
        "exit_code": 1,
    }, err
