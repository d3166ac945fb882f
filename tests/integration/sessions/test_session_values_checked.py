"""What the caller gives a session is checked before anything is recorded, as emit()
checks data: ``Session(metadata=...)`` nested past the observer's 20 levels (as stored,
under data.session.metadata) was recorded on the ledger (the observer refuses it), from
40 levels export failed until an operator voided the event, and NaN was recorded then
unreadable. Now refused at construction naming the field. Text the emitter takes from
the system (argv, an exception's message) holding a lone surrogate is recorded escaped:
the session's ending was lost (real NATS)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from jetsource.domains.sessions.connect import SessionsClient
from jetsource.domains.sessions.emit import Session, session
from jetsource.domains.sessions.format import EventFormatError

pytestmark = pytest.mark.integration


def nested(objects: int) -> Any:
    value: Any = 1
    for _ in range(objects):
        value = {"a": value}
    return value


@pytest.mark.parametrize("objects", [19, 25, 40])
def test_metadata_nested_too_deep_is_refused_naming_the_field(
    client: SessionsClient, objects: int
) -> None:
    # metadata is the third level as stored (data, session, metadata): 18 more fit.
    with pytest.raises(EventFormatError) as caught:
        Session(client.writer, "scan", metadata=nested(objects))
    assert caught.value.field.startswith("metadata.a.a")
    assert "nested deeper than 20 levels" in str(caught.value)


async def test_metadata_as_deep_as_the_observer_takes_reads_back(client: SessionsClient) -> None:
    metadata = nested(18)
    async with session(client.writer, "scan", metadata=metadata) as s:
        s.emit("x_done", {})
    events = await client.sessions.export(s.id)
    assert events[0].data["metadata"] == metadata
    assert [e.type for e in events] == ["session_started", "x_done", "session_ended"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, 2**60])
def test_metadata_a_struct_would_change_is_refused(client: SessionsClient, bad: Any) -> None:
    with pytest.raises(EventFormatError) as caught:
        Session(client.writer, "scan", metadata={"m": [bad]})
    assert caught.value.field == "metadata.m[0]"


def test_heartbeat_that_is_not_a_duration_is_refused(client: SessionsClient) -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        Session(client.writer, "scan", heartbeat_s=math.nan)


async def test_undecodable_argv_and_error_text_are_recorded_escaped(
    client: SessionsClient,
) -> None:
    # sys.argv and an OSError's path hold an undecodable byte as a lone surrogate.
    name = b"f\xff.txt".decode("utf-8", "surrogateescape")
    with pytest.raises(FileNotFoundError):
        async with session(client.writer, "scan", argv=["scan", name]) as s:
            raise FileNotFoundError(2, "No such file", name)
    events = await client.sessions.export(s.id)
    assert [e.type for e in events] == ["session_started", "session_ended"]
    assert events[0].data["argv"] == ["scan", "f\\udcff.txt"]
    assert events[1].data["status"] == "failed"
    assert "f\\udcff.txt" in events[1].data["error"]
