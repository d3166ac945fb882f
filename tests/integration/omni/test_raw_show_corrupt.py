"""`jetsource omni raw show` of a raw archive record no reader takes (bytes published
raw that do not parse): the DecodeError left the command as a traceback; it is one
line naming the record and its stream sequence, DATA_LOSS, exit 1."""

from __future__ import annotations

import asyncio
import json

import pytest

from jetsource.cli.omni import app as omni_app
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage
from jetsource.ingest.server import build
from jetsource.ingest.settings import IngestSettings
from tests.integration.sessions.test_bad_input_cli import invoke
from tests.stack import environment

pytestmark = pytest.mark.integration


async def _publish_garbage(settings: IngestSettings) -> int:
    ingest = await build(settings)
    try:
        raw = ingest.reads.raw
        assert raw is not None
        await raw.start()
        message = OutMessage(raw.subject("raw-garbage"), b"\xff\xff\xff\x00garbage", {})
        return int((await jsapi.publish(raw._replies, message, 5.0)).seq)
    finally:
        await ingest.stop(0)


def test_raw_show_of_a_record_no_reader_takes_is_data_loss_in_one_line(
    isettings: IngestSettings,
) -> None:
    seq = asyncio.run(_publish_garbage(isettings))
    ingest = isettings.ingest.model_copy(update={"instances": {}})
    env = environment(isettings.model_copy(update={"ingest": ingest}))
    code, stdout, stderr = invoke(omni_app, env, ["raw", "show", "raw-garbage", "--json"])
    assert code == 1, (stdout, stderr)
    assert "Traceback" not in stdout + stderr
    error = json.loads([line for line in stderr.splitlines() if line.startswith("{")][-1])["error"]
    assert error["code"] == "DATA_LOSS", error
    named = f"raw payload 'raw-garbage' (stream sequence {seq} of the raw archive)"
    assert named in error["message"]
