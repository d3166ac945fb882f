"""A library's own extra fields on its log records: uvicorn adds ``color_message`` (its
message again, with ANSI colour codes around %-placeholders it never fills in) to its
lines; the ingest's JSON log carried it on every uvicorn line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from jetsource.core.logging import setup_logging


@pytest.mark.parametrize("as_json", [True, False])
def test_uvicorns_color_message_is_left_out(as_json: bool) -> None:
    out = io.StringIO()
    handler = setup_logging("ingest", json=as_json, stream=out)
    try:
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]",
            4242,
            extra={"color_message": "Started server process [\x1b[36m%d\x1b[0m]"},
        )
    finally:
        logging.getLogger().removeHandler(handler)
    line = out.getvalue().strip()
    assert "color_message" not in line
    assert "%d" not in line and "\\x1b" not in line and "\\u001b" not in line
    if as_json:
        record = json.loads(line)
        assert record["message"] == "Started server process [4242]"
        assert record["logger"] == "uvicorn.error"
    else:
        assert "Started server process [4242]" in line
