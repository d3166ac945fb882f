"""A ``process_started`` whose ``data.kind`` or ``data.name`` is not a string was
accepted and then read as no kind: now refused naming the field (observer, JSONL
import and the SDK at the call), while events stored before still read. And an SDK
``process()`` block left by KeyboardInterrupt or SystemExit was recorded as
``process_failed``; Ctrl-C is ``process_cancelled`` (with ``error_type``), as the
sessions emitter records it, ``sys.exit()`` ends it by its exit code (0: completed), and
the exception goes on unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jetsource._gen.process.v1.events_pb2 import CanonicalEvent, ProcessEventBody
from jetsource.core.errors import ValidationError
from jetsource.domains.process.adapters import JsonlAdapter
from jetsource.domains.process.models.common import lifecycle
from jetsource.domains.process.validation import Limits, parse_json_event, to_new_event
from jetsource.sdk import Observer

NOT_TEXT: list[Any] = [5, 0, 1.5, {"a": "b"}, [], ["x"], True, False, None]


@pytest.mark.parametrize("key", ["kind", "name"])
@pytest.mark.parametrize("value", NOT_TEXT, ids=repr)
def test_a_started_kind_or_name_that_is_not_text_is_refused_naming_it(key: str, value: Any) -> None:
    event = parse_json_event(
        {"process_id": "p1", "event_type": "process_started", "data": {key: value}},
        "events[0]",
    )
    with pytest.raises(ValidationError) as raised:
        to_new_event(event, Limits(), "events[0]")
    assert raised.value.field == f"events[0].data.{key}"
    assert f"events[0].data.{key} must be a string" in str(raised.value)


def test_text_absent_or_other_types_and_payloads_are_unchanged() -> None:
    for data in ({}, {"kind": "k", "name": "n"}, {"kind": ""}, {"other": 5}):
        e = CanonicalEvent(process_id="p1", event_type="process_started")
        e.data.update(data)
        to_new_event(e, Limits())
    # only process_started's kind and name are the registry's text
    e = CanonicalEvent(process_id="p1", event_type="step")
    e.data.update({"kind": 5, "name": None})
    to_new_event(e, Limits())
    typed = CanonicalEvent(process_id="p1", event_type="process_started")
    typed.typed.content_type, typed.typed.data = "application/x", b"\x01"
    to_new_event(typed, Limits())


def test_an_event_stored_before_the_rule_still_reads_as_no_kind() -> None:
    """Reads never refuse what is already in the ledger."""
    body = ProcessEventBody()
    body.data.update({"kind": 5, "name": {"a": 1}})
    got = lifecycle("process_started", body)
    assert (got.kind, got.name) == ("", "")


def test_the_jsonl_import_refuses_the_line_naming_it(tmp_path: Any) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"process_id": "p1", "event_type": "process_started", "data": {"kind": 7}}\n')
    adapter = JsonlAdapter("src")
    with open(path, "rb") as f:
        line = next(adapter.lines(f, follow_partial=False))
    with pytest.raises(ValidationError) as raised:
        adapter.normalize(line)
    assert raised.value.field == "line 1.data.kind"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": 5}, "event.data.kind"),
        ({"kind": None}, "event.data.kind"),
        ({"kind": 0}, "event.data.kind"),  # falsy: it skipped the check
        ({"name": 3}, "event.data.name"),
        ({"name": None}, "event.data.name"),
        ({"attributes": {"kind": [1]}}, "event.data.kind"),  # attributes override
        ({"attributes": {"name": False}}, "event.data.name"),
    ],
)
async def test_the_sdk_refuses_a_kind_or_name_that_is_not_text_at_the_call(
    kwargs: dict[str, Any], field: str
) -> None:
    observer = Observer("127.0.0.1:1")
    name = kwargs.pop("name", "job")
    with pytest.raises(ValidationError) as raised:
        observer.process(name, **kwargs)
    assert raised.value.field == field
    assert not observer._buffer and observer.stats.emitted == 0


async def test_a_process_started_emitted_by_hand_is_checked_at_the_call() -> None:
    observer = Observer("127.0.0.1:1")
    p = observer.process("job")
    with pytest.raises(ValidationError) as raised:
        p.emit("process_started", {"kind": 5})
    assert raised.value.field == "event.data.kind"
    assert not observer._buffer
    p.emit("process_started", {"kind": "k", "name": "n"})
    assert len(observer._buffer) == 1


def _ending(observer: Observer) -> tuple[str, dict[str, Any]]:
    last = observer._buffer[-1]
    return last.event_type, dict(last.data)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (KeyboardInterrupt(), ("process_cancelled", {"error_type": "KeyboardInterrupt"})),
        # sys.exit() ends the block by its exit code, as a shell sees it.
        (SystemExit(), ("process_completed", {"exit_code": 0})),
        (SystemExit(0), ("process_completed", {"exit_code": 0})),
        (
            SystemExit(2),
            (
                "process_failed",
                {"error": "SystemExit: 2", "error_type": "SystemExit", "exit_code": 2},
            ),
        ),
        (
            SystemExit("bad config"),
            (
                "process_failed",
                {"error": "SystemExit: bad config", "error_type": "SystemExit", "exit_code": 1},
            ),
        ),
        (GeneratorExit(), ("process_cancelled", {"error_type": "GeneratorExit"})),
        (asyncio.CancelledError(), ("process_cancelled", {})),
        (
            ValueError("boom"),
            ("process_failed", {"error": "ValueError: boom", "error_type": "ValueError"}),
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
async def test_an_interrupt_or_exit_in_a_block_is_cancelled_and_goes_on_unchanged(
    exc: BaseException, expected: tuple[str, dict[str, Any]]
) -> None:
    observer = Observer("127.0.0.1:1")
    with pytest.raises(type(exc)) as raised:
        async with observer.process("job", kind="tool"):
            raise exc
    assert raised.value is exc
    assert _ending(observer) == expected
