"""Every event type the sessions code records is in the catalog, each data field it
writes described there. ``event_too_large`` (the marker the emitter records in place
of an event the ledger cannot hold) was recorded but not cataloged: `sessions catalog`
never said it, nor its data (type, bytes, error); session_ended's ``dropped`` was
written and not described."""

from __future__ import annotations

import ast
import asyncio
import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import jetsource.domains.sessions as sessions_pkg
from jetsource._gen.process.v1 import events_pb2
from jetsource.core.errors import EventTooLargeError
from jetsource.domains.sessions.catalog import load_catalog
from jetsource.domains.sessions.emit import Session
from jetsource.domains.sessions.format import SessionEvent, from_stored

# Calls that record an event of a session, and the place of the event's type in them.
_TYPE_ARG = {"_canonical": 0, "SessionEvent": 3, "emit": 0}


def _modules() -> list[tuple[Any, ast.Module]]:
    found = []
    for info in pkgutil.walk_packages(sessions_pkg.__path__, sessions_pkg.__name__ + "."):
        module = importlib.import_module(info.name)
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            found.append((module, ast.parse(Path(path).read_text(encoding="utf-8"))))
    return found


def _types_the_code_records() -> tuple[set[str], list[str]]:
    """The event types the sessions package writes (constants and module names bound
    to them) and the calls whose type is neither a constant nor one of the enclosing
    function's parameters (which pass a caller's type on). Conversions (``from_*``,
    ``to_*``: an event read from the ledger, a message or a line, as it is) record
    nothing of their own."""
    types: set[str] = set()
    unknown: list[str] = []
    for module, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if fn.name.startswith(("from_", "to_")):
                continue  # a conversion: the type of an event read elsewhere, as it is
            params = {a.arg for a in (*fn.args.args, *fn.args.kwonlyargs, *fn.args.posonlyargs)}
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                func = call.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in _TYPE_ARG:
                    continue
                keyword = {"SessionEvent": "type", "_canonical": "event_type", "emit": "event_type"}
                arg = next((k.value for k in call.keywords if k.arg == keyword[name]), None)
                if arg is None and len(call.args) > _TYPE_ARG[name]:
                    arg = call.args[_TYPE_ARG[name]]
                if arg is None:
                    continue
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    types.add(arg.value)
                elif isinstance(arg, ast.Name) and arg.id in params:
                    continue
                elif isinstance(arg, ast.Name) and isinstance(getattr(module, arg.id, None), str):
                    types.add(getattr(module, arg.id))
                else:
                    where = f"{module.__name__}:{call.lineno}"
                    unknown.append(f"{where} {ast.unparse(call)[:80]}")
    return types, unknown


def test_every_type_the_sessions_code_records_is_cataloged() -> None:
    types, unknown = _types_the_code_records()
    # the enumeration finds the emitter's own records (a guard on the walk itself)
    assert {"session_started", "session_ended", "session_heartbeat"} <= types, types
    assert unknown == [], "a recorded type the test cannot tell: name it by a constant"
    catalog = load_catalog()
    missing = sorted(t for t in types if t not in catalog)
    assert missing == [], f"recorded but not in the catalog: {missing}"


class _Refusing:
    """A writer that refuses, as the ledger does, an append holding an event over
    ``limit`` bytes (naming its index) and records the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.recorded: list[events_pb2.CanonicalEvent] = []

    async def record(
        self, events: Sequence[events_pb2.CanonicalEvent]
    ) -> list[events_pb2.Position]:
        for i, e in enumerate(events):
            if e.ByteSize() > self.limit:
                raise EventTooLargeError(f"event {i} is {e.ByteSize()} bytes", index=i)
        self.recorded += events
        return [events_pb2.Position() for _ in events]


def _as_read(recorded: list[events_pb2.CanonicalEvent]) -> list[SessionEvent]:
    return [
        from_stored(events_pb2.StoredEvent(event=e, process_seq=i + 1))
        for i, e in enumerate(recorded)
    ]


async def _a_session_of_every_kind() -> list[SessionEvent]:
    writer = _Refusing(limit=10_000)
    s = Session(writer, "probe", argv=["probe", "-x"], metadata={"k": 1}, heartbeat_s=0.05)
    await s.__aenter__()
    s.emit("custom_note", {"blob": "x" * 20_000})  # replaced by the marker
    s.emit("custom_note", {"n": 1})
    await s.flush()
    await asyncio.sleep(0.2)  # quiet: heartbeats
    await s.close(SystemExit(3))  # status, error, exit_code, duration_ms, dropped
    return _as_read(writer.recorded)


async def test_every_field_the_emitter_writes_is_described_and_fits_its_schema() -> None:
    events = await _a_session_of_every_kind()
    catalog = load_catalog()
    seen = {e.type for e in events}
    assert {"session_started", "event_too_large", "session_heartbeat", "session_ended"} <= seen
    for e in events:
        if e.type == "custom_note":
            continue
        assert e.type in catalog, e.type
        spec = catalog.events[e.type]
        assert catalog.problems(e.type, e.data) == [], (e.type, e.data)
        undescribed = sorted(set(e.data) - set(spec.schema["properties"]))
        assert undescribed == [], f"{e.type} writes fields the catalog does not name"
        for name in e.data:
            assert spec.schema["properties"][name].get("description"), (e.type, name)
    (marker,) = [e for e in events if e.type == "event_too_large"]
    assert marker.data["type"] == "custom_note" and marker.data["bytes"] > 20_000
    assert marker.data["error"].startswith("event 0 is ")


@pytest.mark.parametrize("output", [["--output", "json"], []])
def test_the_catalog_command_says_the_marker(output: list[str]) -> None:
    from typer.testing import CliRunner

    from jetsource.cli import output as out
    from jetsource.cli.sessions import app

    result = CliRunner().invoke(app, ["catalog", *output])
    out.set_mode(None)
    assert result.exit_code == 0, result.stderr
    assert "event_too_large" in result.stdout
    if output:
        import json

        events = json.loads(result.stdout)["groups"]["session"]["events"]
        assert events["event_too_large"]["required"] == ["type", "bytes", "error"]
