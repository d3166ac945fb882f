"""An atomic batch's messages put on the wire in one step (``Replies.send_batch``, issue
23): the same bytes as each message sent on its own with the batch's headers added after
its own (the plain client's way), and the batch stored whole, its commit last."""

from __future__ import annotations

import asyncio

import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import OutMessage, Replies
from tests.integration.test_jsapi_lean_requests import _collect

pytestmark = pytest.mark.integration


async def test_a_batch_sent_in_one_step_is_the_same_bytes_as_one_by_one(
    nc: NATS, unique: str
) -> None:
    shared = {"Nats-Expected-Last-Subject-Sequence": "0"}  # a batch's claims share one
    odd = {"Nats-Msg-Id": " id-1 ", " Spaced ": "v", "  ": "skipped", "Multi": "a\r\nb"}
    messages = [
        OutMessage(f"{{}}.{unique}.a", b"first", {"Nats-Msg-Id": "m1", "X": "1"}),
        OutMessage(f"{{}}.{unique}.b", b"", {}),
        OutMessage(f"{{}}.{unique}.c", b"shared-1", shared),
        OutMessage(f"{{}}.{unique}.c", b"shared-2", shared),
        OutMessage(f"{{}}.{unique}.d", b"odd", odd),
        OutMessage(f"{{}}.{unique}.e", b"x" * 3000, {"Nats-Msg-Id": "m6"}),
        OutMessage(f"{{}}.{unique}.f", b"commit", shared),
    ]
    lean, plain = Replies(nc), Replies(nc)
    assert lean._lean
    plain._lean = False  # the one-by-one path through nc.publish
    got: dict[str, list[Msg]] = {"lean": [], "plain": []}
    done = {"lean": asyncio.Event(), "plain": asyncio.Event()}
    subs = [
        await nc.subscribe(f"{way}.{unique}.>", cb=_collect(got[way], len(messages), done[way]))
        for way in ("lean", "plain")
    ]
    deadline = asyncio.get_running_loop().time() + 5
    counted = {}
    for way, replies in (("lean", lean), ("plain", plain)):
        mine = [OutMessage(m.subject.format(way), m.data, m.headers) for m in messages]
        before = (nc.stats["out_msgs"], nc.stats["out_bytes"])
        await replies.send_batch(mine, "batch-1", "first.reply", "commit.reply", deadline)
        counted[way] = (nc.stats["out_msgs"] - before[0], nc.stats["out_bytes"] - before[1])
    assert counted["lean"] == counted["plain"] == (7, sum(len(m.data) for m in messages))
    await nc.flush()
    async with asyncio.timeout(5):
        await done["lean"].wait()
        await done["plain"].wait()
    for sub in subs:
        await sub.unsubscribe()
    for a, b in zip(got["lean"], got["plain"], strict=True):
        assert a.subject.split(".", 1)[1] == b.subject.split(".", 1)[1]
        assert (a.data, a.reply, a.headers) == (b.data, b.reply, b.headers)
    first, middle, last = got["lean"][0], got["lean"][4], got["lean"][-1]
    assert first.reply == "first.reply" and middle.reply == "" and last.reply == "commit.reply"
    assert first.headers == {
        "Nats-Msg-Id": "m1",
        "X": "1",
        "Nats-Batch-Id": "batch-1",
        "Nats-Batch-Sequence": "1",
    }
    assert middle.headers == {
        "Nats-Msg-Id": "id-1",
        "Spaced": "v",
        "Multi": "a  b",
        "Nats-Batch-Id": "batch-1",
        "Nats-Batch-Sequence": "5",
    }
    assert last.headers == {
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Nats-Batch-Id": "batch-1",
        "Nats-Batch-Sequence": "7",
        "Nats-Batch-Commit": "1",
    }


async def test_a_batch_larger_than_the_free_buffer_waits_for_room_and_is_stored_whole(
    nc: NATS, unique: str
) -> None:
    """Part of the batch fits the client's buffer, the rest waits for room (the path a
    lone send takes): every message stored, in order, one commit."""
    replies = Replies(nc)
    await replies.start()
    name, prefix = f"BATCHSEND_{unique}", f"bs{unique}"
    config = {"name": name, "subjects": [f"{prefix}.>"], "allow_atomic": True, "allow_direct": True}
    await jsapi.api(replies, f"STREAM.CREATE.{name}", config, 5)
    bound = nc._max_pending_size
    try:
        nc._max_pending_size = 20_000  # room for a few of the 4 KB messages at a time
        messages = [OutMessage(f"{prefix}.{i}", bytes([65 + i % 26]) * 4000, {}) for i in range(40)]
        ack = await jsapi.publish_atomic_batch(replies, messages, f"b-{unique}", 5.0)
    finally:
        nc._max_pending_size = bound
    assert ack.seq == 40 and ack.count == 40
    for i in (1, 17, 40):
        stored = await jsapi.direct_get(replies, name, {"seq": i}, 5)
        assert stored is not None and stored.subject == f"{prefix}.{i - 1}"
        assert stored.data == bytes([65 + (i - 1) % 26]) * 4000
    await jsapi.api(replies, f"STREAM.DELETE.{name}", {}, 5)
    await replies.stop()


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("case", ["max_payload", "bad_subject", "deadline"])
async def test_the_messages_before_a_refused_one_go_out_counted(
    nc: NATS, unique: str, lean: bool, case: str
) -> None:
    """A batch refused part-way (a payload over the limit, a bad subject, the commit's
    deadline passed): those before it were put in the buffer, as one by one, and went
    out counted and flushed, not left for another send's flush (review11a)."""
    replies = Replies(nc)
    replies._lean = lean
    got: list[Msg] = []
    done = asyncio.Event()
    sub = await nc.subscribe(f"mb.{unique}.>", cb=_collect(got, 2, done))
    await nc.flush()
    third = {
        "max_payload": (f"mb.{unique}.c", b"x" * (nc._max_payload + 1)),
        "bad_subject": (f"mb.{unique}.c d", b"3"),
        "deadline": (f"mb.{unique}.c", b"3"),
    }[case]
    messages = [
        OutMessage(f"mb.{unique}.a", b"1", {}),
        OutMessage(f"mb.{unique}.b", b"2", {}),
        OutMessage(*third, {}),
    ]
    deadline = asyncio.get_running_loop().time() + (-1 if case == "deadline" else 5)
    before = (nc.stats["out_msgs"], nc.stats["out_bytes"])
    with pytest.raises((nats_errors.MaxPayloadError, nats_errors.BadSubjectError, TimeoutError)):
        await replies.send_batch(messages, "bid", "f.r", "c.r", deadline)
    assert (nc.stats["out_msgs"] - before[0], nc.stats["out_bytes"] - before[1]) == (2, 2)
    async with asyncio.timeout(1):  # no other send: its own flush took them out
        await done.wait()
    assert [m.data for m in got] == [b"1", b"2"]
    await sub.unsubscribe()


async def test_a_message_holding_a_batch_header_of_its_own_has_it_replaced(
    nc: NATS, unique: str
) -> None:
    """A message whose own headers name a batch header: replaced in place, as the
    merged header dict of one by one did. A second line of it made the server read the
    message's own and refuse the batch as incomplete (review11a)."""
    replies = Replies(nc)
    await replies.start()
    name, prefix = f"BATCHOWN_{unique}", f"bo{unique}"
    config = {"name": name, "subjects": [f"{prefix}.>"], "allow_atomic": True}
    await jsapi.api(replies, f"STREAM.CREATE.{name}", config, 5)
    own = {"Nats-Batch-Sequence": "9", "X": "y"}
    messages = [
        OutMessage(f"{prefix}.a", b"1", own),
        OutMessage(f"{prefix}.b", b"2", own),
        OutMessage(f"{prefix}.c", b"3", {"Nats-Batch-Commit": "0", "Nats-Batch-Id": "x"}),
    ]
    try:
        ack = await jsapi.publish_atomic_batch(replies, messages, f"b-{unique}", 5.0)
        assert (ack.seq, ack.count) == (3, 3)
    finally:
        await jsapi.api(replies, f"STREAM.DELETE.{name}", {}, 5)
        await replies.stop()
