"""The processing lifecycle's rule, pure: what each step makes of each status."""

from __future__ import annotations

import pytest

from jetsource._gen.omni.v1.lifecycle_pb2 import (
    ProcessingCompleted,
    ProcessingFailed,
    ProcessingStarted,
)
from jetsource.domains.omni.identity import ASSIGNMENT_SEQ, entry_value, parse_entry
from jetsource.domains.omni.processing import (
    Status,
    StatusTransitionError,
    decide,
    fold,
)

RECEIVED = Status()
PROCESSING_1 = fold([ProcessingStarted(worker="w", attempt=1)])
RETRYING_1 = fold(
    [
        ProcessingStarted(worker="w", attempt=1),
        ProcessingFailed(worker="w", attempt=1, reason="x", will_retry=True),
    ]
)
FAILED_1 = fold(
    [ProcessingStarted(worker="w", attempt=1), ProcessingFailed(worker="w", attempt=1, reason="x")]
)
COMPLETED_1 = fold(
    [ProcessingStarted(worker="w", attempt=1), ProcessingCompleted(worker="w", attempt=1)]
)

# status, step (state, worker, attempt, reason, will_retry), what: 'append', 'none', a field
CASES = [
    (RECEIVED, ("processing", "w", 1, "", False), "append"),
    (RECEIVED, ("processing", "w", 4, "", False), "append"),
    (RECEIVED, ("completed", "w", 1, "", False), "state"),
    (RECEIVED, ("failed", "w", 1, "x", True), "state"),
    (PROCESSING_1, ("processing", "w", 1, "", False), "none"),
    (PROCESSING_1, ("processing", "v", 1, "", False), "attempt"),
    (PROCESSING_1, ("processing", "v", 2, "", False), "append"),
    (PROCESSING_1, ("completed", "v", 1, "ok", False), "append"),
    (PROCESSING_1, ("completed", "w", 2, "", False), "attempt"),
    (PROCESSING_1, ("failed", "w", 1, "x", False), "append"),
    (PROCESSING_1, ("failed", "w", 0, "x", False), "attempt"),
    (RETRYING_1, ("processing", "w", 2, "", False), "append"),
    (RETRYING_1, ("processing", "w", 1, "", False), "attempt"),
    (RETRYING_1, ("completed", "w", 1, "", False), "state"),
    (RETRYING_1, ("failed", "w", 1, "x", True), "none"),
    (RETRYING_1, ("failed", "w", 1, "x", False), "state"),
    (FAILED_1, ("processing", "w", 2, "", False), "state"),
    (FAILED_1, ("failed", "w", 1, "x", False), "none"),
    (COMPLETED_1, ("processing", "w", 2, "", False), "state"),
    (COMPLETED_1, ("completed", "w", 1, "", False), "none"),
    (COMPLETED_1, ("completed", "w", 1, "other", False), "state"),
    (COMPLETED_1, ("failed", "w", 1, "x", True), "state"),
]


@pytest.mark.parametrize(("status", "step", "what"), CASES)
def test_each_step_from_each_status(
    status: Status, step: tuple[str, str, int, str, bool], what: str
) -> None:
    if what in ("append", "none"):
        event = decide(status, *step)
        assert (event is None) == (what == "none")
        if event is not None:
            assert fold([event]).state == step[0]
    else:
        with pytest.raises(StatusTransitionError) as refused:
            decide(status, *step)
        assert refused.value.field == what


def test_terminal_states() -> None:
    assert COMPLETED_1.terminal and FAILED_1.terminal
    assert not (RECEIVED.terminal or PROCESSING_1.terminal or RETRYING_1.terminal)


def test_bucket_entries_carry_the_assignment_sequence_in_a_header() -> None:
    value, headers = entry_value("idn-abc", 42)
    assert value == b"idn-abc"  # what the previous release reads
    assert headers == {ASSIGNMENT_SEQ: "42"}
    assert parse_entry(value, headers) == ("idn-abc", 42)
    assert parse_entry(b"idn-abc") == ("idn-abc", 0)  # the previous release's plain put
    assert parse_entry(b"idn-abc", {ASSIGNMENT_SEQ: "x"}) == ("idn-abc", 0)
    assert parse_entry(b"idn-abc@17") == ("idn-abc", 17)  # development builds' encoding
    assert parse_entry(None) == ("", -1)
    assert parse_entry(b"", {"KV-Operation": "DEL"}) == ("", -1)
    assert parse_entry(b"", {"KV-Operation": "PURGE"}) == ("", -1)
