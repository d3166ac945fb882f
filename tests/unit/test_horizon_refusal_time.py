"""A refusal behind a compaction horizon (FAILED_PRECONDITION BEFORE_HORIZON, from a
reader that does not read the archive) names the time from which it answers: the
latest time an archived version was recorded (the horizon's ``latest_ns``, a881c8e).
Its ErrorInfo ``horizon_time`` showed the horizon's own last event's time, earlier than
that when stamps stepped back, while the message named the latest: a user asking at a
time between the two, after ``horizon_time``, was refused all the same."""

from __future__ import annotations

import grpc
import pytest

from jetsource.core.clock import format_rfc3339_ns
from jetsource.domains.context.command_service import _before_horizon
from jetsource.domains.context.query_service import _query_error
from jetsource.eventstore.horizon import BeyondHorizonError, Horizon

SECOND = 1_000_000_000
BASE = 1_700_000_000 * SECOND


@pytest.mark.parametrize(
    ("horizon", "answered_from"),
    [
        # v3 (the horizon's last event) stamped at 20 s, v2 at 30 s: a stepped-back
        # stamp; a time before 30 s may end before the horizon.
        (Horizon(3, 30, BASE + 20 * SECOND, ("s",), BASE + 30 * SECOND), BASE + 30 * SECOND),
        # A horizon recorded before latest_ns was kept: its last event's time.
        (Horizon(3, 30, BASE + 20 * SECOND, ("s",)), BASE + 20 * SECOND),
    ],
    ids=["stepped-back", "without-latest"],
)
def test_the_refusal_names_the_earliest_time_answered_without_the_archive(
    horizon: Horizon, answered_from: int
) -> None:
    exc = BeyondHorizonError("a", horizon)
    assert not horizon.covers(answered_from) and horizon.covers(answered_from - 1)
    said = format_rfc3339_ns(answered_from)
    for refusal in (_query_error(exc), _before_horizon(exc)):
        assert refusal is not None and refusal.code is grpc.StatusCode.FAILED_PRECONDITION
        assert refusal.reason == "BEFORE_HORIZON"
        assert refusal.metadata == {
            "horizon_version": "3",
            "horizon_stream_sequence": "30",
            "horizon_time": said,
        }
        assert f"recorded up to {said}" in refusal.message, refusal.message
