"""A refusal behind a compaction horizon (FAILED_PRECONDITION BEFORE_HORIZON, from a
reader that does not read the archive) names the time from which it answers: the
latest time an archived version was recorded (the horizon's ``latest_ns``, a881c8e).
Its ErrorInfo ``horizon_time`` is the horizon's own last event's time, as it always
was (6e01b53 changed its meaning to the latest time; a client reading it as the last
event's time was misled); ``recorded_until_time`` names the time the message names, later
than ``horizon_time`` when stamps stepped back: a user asking at a time between the
two is refused all the same."""

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
    ("horizon", "last_event", "answered_from"),
    [
        # v3 (the horizon's last event) stamped at 20 s, v2 at 30 s: a stepped-back
        # stamp; a time before 30 s may end before the horizon.
        (
            Horizon(3, 30, BASE + 20 * SECOND, ("s",), BASE + 30 * SECOND),
            BASE + 20 * SECOND,
            BASE + 30 * SECOND,
        ),
        # A horizon recorded before latest_ns was kept: its last event's time.
        (Horizon(3, 30, BASE + 20 * SECOND, ("s",)), BASE + 20 * SECOND, BASE + 20 * SECOND),
    ],
    ids=["stepped-back", "without-latest"],
)
def test_the_refusal_names_the_earliest_time_answered_without_the_archive(
    horizon: Horizon, last_event: int, answered_from: int
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
            "horizon_time": format_rfc3339_ns(last_event),
            "recorded_until_time": said,
        }
        assert f"recorded up to {said}" in refusal.message, refusal.message
