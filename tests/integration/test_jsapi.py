"""The raw $JS.API helpers against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.client import Client as NATS

from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError, OutMessage, Replies
from tests.infra import Server

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream(nc: NATS, unique: str) -> AsyncIterator[tuple[Replies, str, str]]:
    replies = Replies(nc)
    await replies.start()
    name, prefix = f"JS_{unique}", f"js{unique}"
    config = {"name": name, "subjects": [f"{prefix}.>"], "allow_direct": True, "allow_atomic": True}
    await jsapi.api(replies, f"STREAM.CREATE.{name}", config, 5)
    yield replies, name, prefix
    await jsapi.api(replies, f"STREAM.DELETE.{name}", {}, 5)
    await replies.stop()


def out(subject: str, data: bytes, **headers: str) -> OutMessage:
    return OutMessage(subject, data, headers)


async def test_atomic_batch_stores_all_at_consecutive_sequences(
    stream: tuple[Replies, str, str],
) -> None:
    replies, name, p = stream
    await jsapi.publish(replies, out(f"{p}.x", b"0"), 5)
    ack = await jsapi.publish_atomic_batch(
        replies, [out(f"{p}.a.{i}", str(i).encode()) for i in range(7)], "b1", 5
    )
    assert (ack.seq, ack.batch, ack.count) == (8, "b1", 7)
    got = [m async for m in jsapi.direct_get_batch(replies, name, f"{p}.a.>", 1, 5)]
    assert [(m.seq, m.data) for m in got] == [(i + 2, str(i).encode()) for i in range(7)]


async def test_atomic_batch_failing_its_guard_stores_nothing(
    stream: tuple[Replies, str, str],
) -> None:
    replies, name, p = stream
    await jsapi.publish(replies, out(f"{p}.a.0", b"first"), 5)
    guard = {
        "Nats-Expected-Last-Subject-Sequence": "0",  # wrong: a.0 is at 1
        "Nats-Expected-Last-Subject-Sequence-Subject": f"{p}.a.>",
    }
    batch = [OutMessage(f"{p}.a.1", b"1", guard), out(f"{p}.a.2", b"2"), out(f"{p}.a.3", b"3")]
    with pytest.raises(JsApiError) as err:
        await jsapi.publish_atomic_batch(replies, batch, "b2", 5)
    assert err.value.err_code == jsapi.ERR_WRONG_LAST_SEQUENCE
    info = await jsapi.api(replies, f"STREAM.INFO.{name}", {}, 5)
    assert info["state"]["messages"] == 1


async def test_atomic_batch_dedupes_by_msg_id_as_a_whole(stream: tuple[Replies, str, str]) -> None:
    replies, name, p = stream
    batch = [out(f"{p}.a.{i}", b"x", **{"Nats-Msg-Id": f"id-{i}"}) for i in range(3)]
    await jsapi.publish_atomic_batch(replies, batch, "b3", 5)
    with pytest.raises(JsApiError) as err:
        await jsapi.publish_atomic_batch(replies, batch, "b4", 5)
    assert err.value.err_code == jsapi.ERR_BATCH_DUPLICATE_MSG_ID
    info = await jsapi.api(replies, f"STREAM.INFO.{name}", {}, 5)
    assert info["state"]["messages"] == 3


async def test_single_publish_dedupes_and_reports_the_original_sequence(
    stream: tuple[Replies, str, str],
) -> None:
    replies, _, p = stream
    first = await jsapi.publish(replies, out(f"{p}.s", b"1", **{"Nats-Msg-Id": "same"}), 5)
    await jsapi.publish(replies, out(f"{p}.s", b"2"), 5)
    again = await jsapi.publish(replies, out(f"{p}.s", b"1", **{"Nats-Msg-Id": "same"}), 5)
    assert again.duplicate and again.seq == first.seq


async def test_batch_size_limits(stream: tuple[Replies, str, str]) -> None:
    replies, _, p = stream
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        await jsapi.publish_atomic_batch(replies, [], "empty", 5)
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        await jsapi.publish_atomic_batch(replies, [out(f"{p}.a", b"")] * 1001, "big", 5)


async def test_batched_direct_get_pages_through_a_filtered_subject(
    stream: tuple[Replies, str, str],
) -> None:
    replies, name, p = stream
    for i in range(20):
        await jsapi.publish(replies, out(f"{p}.{'a' if i % 2 else 'b'}.{i}", str(i).encode()), 5)
    got = [m async for m in jsapi.direct_get_batch(replies, name, f"{p}.a.>", 1, 5, page=3)]
    assert [m.data for m in got] == [str(i).encode() for i in range(1, 20, 2)]
    assert all(got[i].time_ns <= got[i + 1].time_ns for i in range(len(got) - 1))
    tail = [m async for m in jsapi.direct_get_batch(replies, name, f"{p}.a.>", 15, 5, page=3)]
    assert [m.seq for m in tail] == [16, 18, 20]
    assert [m async for m in jsapi.direct_get_batch(replies, name, f"{p}.none.>", 1, 5)] == []


async def test_direct_get_page_returns_at_most_a_batch_and_what_is_left(
    stream: tuple[Replies, str, str],
) -> None:
    replies, name, p = stream
    for i in range(20):  # a at even sequences, b at odd ones
        await jsapi.publish(replies, out(f"{p}.{'a' if i % 2 else 'b'}.{i}", str(i).encode()), 5)
    page = await jsapi.direct_get_page(replies, name, f"{p}.a.>", 1, 3, 5)
    assert [m.seq for m in page.messages] == [2, 4, 6] and page.pending == 7
    assert [m.subject for m in page.messages] == [f"{p}.a.1", f"{p}.a.3", f"{p}.a.5"]
    assert [m.data for m in page.messages] == [b"1", b"3", b"5"]
    assert all(m.time_ns > 0 and m.headers["Nats-Stream"] == name for m in page.messages)
    page = await jsapi.direct_get_page(replies, name, f"{p}.a.>", 15, 3, 5)
    assert [m.seq for m in page.messages] == [16, 18, 20] and page.pending == 0
    page = await jsapi.direct_get_page(replies, name, f"{p}.a.>", 17, 100, 5)  # beyond the end
    assert [m.seq for m in page.messages] == [18, 20] and page.pending == 0
    assert await jsapi.direct_get_page(replies, name, f"{p}.a.>", 21, 5, 5) == jsapi.Page([], 0)
    assert await jsapi.direct_get_page(replies, name, f"{p}.none.>", 1, 5, 5) == jsapi.Page([], 0)
    # No subject: every message in stream order.
    page = await jsapi.direct_get_page(replies, name, None, 5, 4, 5)
    assert [m.seq for m in page.messages] == [5, 6, 7, 8] and page.pending == 12
    assert [m.data for m in page.messages] == [b"4", b"5", b"6", b"7"]
    # Paging through with pages of one equals one big page.
    one_by_one = [m async for m in jsapi.direct_get_batch(replies, name, f"{p}.b.>", 1, 5, page=1)]
    whole = await jsapi.direct_get_page(replies, name, f"{p}.b.>", 1, 1000, 5)

    def key(m: jsapi.RawMessage) -> tuple[int, str, int, bytes]:
        return m.seq, m.subject, m.time_ns, m.data

    assert [key(m) for m in one_by_one] == [key(m) for m in whole.messages]
    assert len(whole.messages) == 10
    with pytest.raises(ValueError, match="batch"):
        await jsapi.direct_get_page(replies, name, f"{p}.a.>", 1, 0, 5)


async def test_last_for_subject_and_first_at_or_after(stream: tuple[Replies, str, str]) -> None:
    replies, name, p = stream
    for i in range(5):
        await jsapi.publish(replies, out(f"{p}.k.{i % 2}", str(i).encode()), 5)
    last = await jsapi.last_for_subject(replies, name, f"{p}.k.>", 5)
    assert last is not None and last.seq == 5 and last.data == b"4"
    assert await jsapi.last_for_subject(replies, name, f"{p}.missing.>", 5) is None
    third = await jsapi.direct_get(replies, name, {"seq": 3}, 5)
    assert third is not None
    at = await jsapi.first_at_or_after(replies, name, third.time_ns, None, 5)
    after = await jsapi.first_at_or_after(replies, name, third.time_ns + 1, None, 5)
    assert at is not None and at.seq == 3
    assert after is not None and after.seq == 4


async def test_no_stream_means_no_responders(nc: NATS, unique: str) -> None:
    replies = Replies(nc)
    await replies.start()
    with pytest.raises(NoRespondersError):
        await jsapi.direct_get(replies, f"NOPE_{unique}", {"seq": 1}, 5)
    with pytest.raises(NoRespondersError):
        await jsapi.publish(replies, out(f"nowhere{unique}.x", b""), 5)
    with pytest.raises(JsApiError) as err:
        await jsapi.api(replies, f"STREAM.INFO.NOPE_{unique}", {}, 5)
    assert err.value.err_code == jsapi.ERR_STREAM_NOT_FOUND
    await replies.stop()


async def test_pull_consumer_hands_back_what_arrives_after_stop(
    nc: NATS, stream: tuple[Replies, str, str]
) -> None:
    """Messages a puller has received but not handed out when it stops must not wait
    out the ack wait (30 s here): the next puller on the durable gets them at once."""
    replies, name, p = stream
    config = jsapi.consumer_config("d1", f"{p}.>", ack_wait_s=30, max_ack_pending=100)
    await jsapi.ensure_consumer(replies, name, config, 5)
    first = jsapi.PullConsumer(nc, name, "d1", batch=10, expires_s=1.0)
    await jsapi.publish(replies, out(f"{p}.a", b"1"), 5)
    [one] = await first.next_batch(10, 2.0)
    assert (one.data, one.stream_seq, one.delivered) == (b"1", 1, 1)
    await jsapi.ack(nc, one)
    # A message arrives on our open pull request, and we stop before taking it.
    await jsapi.publish(replies, out(f"{p}.a", b"2"), 5)
    await asyncio.sleep(0.2)
    await first.stop()
    second = jsapi.PullConsumer(nc, name, "d1", batch=10, expires_s=1.0)
    got: list[jsapi.Delivery] = []
    async with asyncio.timeout(5):
        while not got:
            got = await second.next_batch(10, 1.0)
    assert [(d.data, d.stream_seq) for d in got] == [(b"2", 2)]
    await second.stop()


_header_text = st.text(
    st.sampled_from(list("Nats-Sequence: \t\x0b\x1cAbz09_.:é>*\u00a0\u2003")), max_size=30
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_header_text, max_size=8), st.sampled_from(["\r\n", "\n", ""]))
def test_lean_header_parsing_equals_nats_py(lines: list[str], end: str) -> None:
    raw = "\r\n".join(lines).encode() + end.encode()
    assert jsapi.parse_header_lines(raw) == Client._parse_header_lines(raw)
    raw = b"\xff\xfeName: x\r\nOk: \xff\r\n" + raw
    assert jsapi.parse_header_lines(raw) == Client._parse_header_lines(raw)


async def test_lean_headers_read_what_nats_py_reads(
    nats_server: Server, stream: tuple[Replies, str, str]
) -> None:
    replies, name, p = stream
    odd = {"Nats-Msg-Id": "m1", "X-Spaced": "  padded value  ", "X-Unicode": "žluť", "X-E": ""}
    await jsapi.publish(replies, OutMessage(f"{p}.h", b"body", odd), 5)
    lean = await jsapi.direct_get(replies, name, {"seq": 1}, 5)
    assert "_parse_header_lines" in replies._nc.__dict__  # Replies installed it
    plain = await nats.connect(nats_server.url)  # a connection as nats-py makes it
    try:
        reply = await plain.request(f"$JS.API.DIRECT.GET.{name}", b'{"seq": 1}', timeout=5)
    finally:
        await plain.close()
    assert lean is not None and dict(lean.headers) == reply.headers
    assert reply.headers["X-Unicode"] == "žluť" and reply.headers["X-Spaced"] == "padded value"


async def test_a_mirror_with_mapped_subjects_never_answers_for_its_origin(
    stream: tuple[Replies, str, str],
) -> None:
    """nats-server turns ``mirror_direct`` on for any mirror of a stream with direct
    gets (here explicitly asked off): the mirror then answers about half of the
    origin's direct gets, with its own subjects or "not found". Each helper must
    give the origin's answer every time, and the leader's fallback the same message
    a direct get gives."""
    replies, name, p = stream
    for i in range(3):
        await jsapi.publish(replies, out(f"{p}.a.{i}", f"m{i}".encode(), Own=f"h{i}"), 5)
    mirror = f"{name}_M"
    config = {
        "name": mirror,
        "mirror": {
            "name": name,
            "subject_transforms": [{"src": f"{p}.a.*", "dest": f"mapped.{p}.{{{{wildcard(1)}}}}"}],
        },
        "allow_direct": False,
        "mirror_direct": False,
    }
    await jsapi.api(replies, f"STREAM.CREATE.{mirror}", config, 5)
    try:
        for _ in range(100):  # the mirror joins the responders once it is caught up
            info = await jsapi.api(replies, f"STREAM.INFO.{mirror}", {}, 5)
            if info["state"]["messages"] == 3:
                break
            await asyncio.sleep(0.05)
        await jsapi.publish(replies, out(f"{p}.a.3", b"m3", Own="h3"), 5)
        await asyncio.sleep(0.2)
        direct = await jsapi.direct_get(replies, name, {"seq": 2}, 5)
        leader = await jsapi.leader_get(replies, name, {"seq": 2}, 5)
        assert direct == leader and direct is not None and direct.headers["Own"] == "h1"
        for _ in range(24):
            got = await jsapi.direct_get(replies, name, {"seq": 2}, 5)
            assert got is not None and (got.subject, got.data) == (f"{p}.a.1", b"m1")
            last = await jsapi.last_for_subject(replies, name, f"{p}.a.2", 5)
            assert last is not None and last.seq == 3
            page = await jsapi.direct_get_page(replies, name, f"{p}.a.>", 1, 10, 5)
            assert [m.subject for m in page.messages] == [f"{p}.a.{i}" for i in range(4)]
            page = await jsapi.direct_get_page(replies, name, None, 2, 2, 5)
            assert ([m.seq for m in page.messages], page.pending) == ([2, 3], 1)
            assert await jsapi.last_for_subject(replies, name, f"{p}.none", 5) is None
            empty = await jsapi.direct_get_page(replies, name, f"{p}.a.>", 5, 10, 5)
            assert empty == jsapi.Page([], 0)
    finally:
        await jsapi.api(replies, f"STREAM.DELETE.{mirror}", {}, 5)


async def test_the_leaders_answer_for_a_missing_stream_is_the_direct_gets(
    stream: tuple[Replies, str, str], unique: str
) -> None:
    """The leader is asked after every "not found": for a stream that does not exist
    it must say so as a direct get does (NoRespondersError; the key store creates its
    bucket on it), not as a JetStream error; and a "not found" alone (a write may come
    in between) never marks a stream as mirrored."""
    replies, name, p = stream
    with pytest.raises(NoRespondersError):
        await jsapi.leader_get(replies, f"NONE_{unique}", {"seq": 1}, 5)
    with pytest.raises(NoRespondersError):
        await jsapi.last_for_subject(replies, f"NONE_{unique}", "x.>", 5)
    assert await jsapi.last_for_subject(replies, name, f"{p}.nothing", 5) is None
    assert replies.mirrored == {}


async def test_a_stream_whose_subjects_overlap_another_is_named_with_its_subjects(
    stream: tuple[Replies, str, str],
) -> None:
    """nats-server says only 'subjects overlap with an existing stream'; a service that
    cannot start for it names the stream it wanted and its subjects."""
    replies, _, prefix = stream
    config = {"name": f"{stream[1]}_B", "subjects": [f"{prefix}.b.>"]}
    with pytest.raises(JsApiError) as caught:
        await jsapi.ensure_stream(replies, config, 5)
    assert caught.value.err_code == jsapi.ERR_SUBJECTS_OVERLAP
    assert f"stream {stream[1]}_B wants {prefix}.b.>" in str(caught.value)


async def test_deleting_a_message_already_gone_answers_false(
    stream: tuple[Replies, str, str],
) -> None:
    """Two runs removing one message (two `dlq retry` of a letter, a drop clearing
    letters while a retry removes one): the second met JsApiError 10057 "no message
    found" (only 10037 was taken for "gone") and failed half-way. Both codes are False."""
    replies, name, p = stream
    ack = await jsapi.publish(replies, out(f"{p}.x", b"0"), 5)
    await jsapi.publish(replies, out(f"{p}.y", b"1"), 5)
    assert await jsapi.delete_message(replies, name, ack.seq, 5) is True
    assert await jsapi.delete_message(replies, name, ack.seq, 5) is False
    assert await jsapi.delete_message(replies, name, 999, 5) is False  # past the end
