"""A raw publish whose Jetsource-Recorded-At header (a restored message's original
time) is no time: "²" (a digit to str.isdigit, not to int()) raised ValueError in
every reader, the projector's too, whose models stalled on it with the other
processes' events behind; 30 digits made a recorded_at no Timestamp holds. It is
poison now, named by every reader and dead-lettered once by each model; a header
of digits in range is still the event's time."""

from __future__ import annotations

import pytest

from jetsource.core.errors import CorruptEventError
from jetsource.domains.process.models import MODELS as PROCESS_MODELS
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import H_RECORDED_AT
from jetsource.eventstore.jsapi import OutMessage
from jetsource.projection.bootstrap import Projection
from tests.integration.test_poison_every_domain import (  # noqa: F401 (the fixture)
    Ledger,
    envelope,
    ledger,
    run_until_caught_up,
)

pytestmark = pytest.mark.integration


async def test_a_recorded_at_header_that_is_no_time_is_poison_and_nothing_stalls(
    ledger: Projection,  # noqa: F811
) -> None:
    p = ledger
    w = Ledger(p)

    async def publish(pid: str, header: str) -> int:
        message = OutMessage(
            f"{w.prefix}.{pid}.process_started",
            envelope(pid, "process_started", 1),
            {H_RECORDED_AT: header},
        )
        return int((await jsapi.publish(w.store._replies, message, 5.0)).seq)

    await w.started("before", 1)
    poison = {
        await publish("sup", "\u00b2"): "'²'",
        await publish("long", "9" * 30): "'" + "9" * 30 + "'",
    }
    restored = await publish("restored", "1700000000123456789")
    await w.started("after", 1)

    for seq, shown in poison.items():
        with pytest.raises(
            CorruptEventError, match=f"{H_RECORDED_AT} header {shown} is no time"
        ) as caught:
            await w.store.read_aggregate("sup" if "²" in shown else "long")
        assert caught.value.stream_seq == seq, shown
    (event,) = await w.store.read_aggregate("restored")
    assert event.recorded_at_ns == 1_700_000_000_123_456_789
    assert event.stream_seq == restored
    for name in PROCESS_MODELS:
        worker = await run_until_caught_up(p, name)
        letters = await p.dead_letters.list(worker.spec)
        assert sorted(d.original_seq for d in letters) == sorted(poison), name
        assert all("is no time" in d.reason for d in letters), name
        assert worker.stats.dead_letters == 2, name
    assert len(await w.store.read_aggregate("after")) == 2
