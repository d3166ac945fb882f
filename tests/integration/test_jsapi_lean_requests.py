"""The lean request path of :class:`jsapi.Replies` (issue 23): commands written by
``Replies.send`` instead of ``nc.publish``, one timeout sweep instead of a timer per
request, and plain PubAcks parsed without JSON. Each must give exactly what the plain
client gives: the same bytes on the wire, the same errors, every PubAck and error form
read the same, timeouts on time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats import errors as nats_errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from jetsource.core.deadline import within as call_deadline
from jetsource.core.errors import DeadlineCutError
from jetsource.core.natsping import round_trip
from jetsource.devstack.servers import NatsServer, free_port, stop_pid
from jetsource.eventstore import jsapi
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError, OutMessage, Replies
from tests.infra import Server

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream(nc: NATS, unique: str) -> AsyncIterator[tuple[Replies, str, str]]:
    replies = Replies(nc)
    await replies.start()
    name, prefix = f"LEAN_{unique}", f"lean{unique}"
    config = {
        "name": name,
        "subjects": [f"{prefix}.>"],
        "allow_direct": True,
        "allow_atomic": True,
        "max_msg_size": 2048,
    }
    await jsapi.api(replies, f"STREAM.CREATE.{name}", config, 5)
    yield replies, name, prefix
    await jsapi.api(replies, f"STREAM.DELETE.{name}", {}, 5)
    await replies.stop()


def _msg(data: bytes, headers: dict[str, str] | None = None) -> Msg:
    return Msg(None, subject="_INBOX.x.1", data=data, headers=headers)  # type: ignore[arg-type]


# -- PubAck forms, parsed -------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"stream": "S", "seq": 7},
        {"stream": "S", "seq": 7, "duplicate": True},
        {"stream": "S", "seq": 7, "domain": "hub"},
        {"stream": "S", "seq": 7, "domain": "hub", "duplicate": True},
        {"stream": "S", "seq": 12, "batch": "b1", "count": 3},
        {"stream": 'S"q\\', "seq": 1},
        {"stream": "Sé", "seq": 2**63},
        {"seq": 3, "stream": "S"},  # another order: read by JSON
    ],
)
def test_every_puback_form_reads_as_json_says(body: dict[str, Any]) -> None:
    for data in (json.dumps(body, separators=(",", ":")).encode(), json.dumps(body).encode()):
        ack = jsapi.parse_puback(_msg(data))
        assert (ack.stream, ack.seq, ack.duplicate, ack.batch, ack.count) == (
            body["stream"],
            body["seq"],
            body.get("duplicate", False),
            body.get("batch"),
            body.get("count", 1),
        )


def test_puback_errors_and_statuses_are_raised_as_before() -> None:
    error = {"error": {"code": 400, "err_code": 10071, "description": "wrong last sequence: 3"}}
    with pytest.raises(JsApiError) as exc:
        jsapi.parse_puback(_msg(json.dumps(error).encode()))
    assert (exc.value.code, exc.value.err_code) == (400, 10071)
    assert exc.value.description == "wrong last sequence: 3"
    # An error beside a stream name (as some servers write it) is still an error.
    both = {"stream": "S", "seq": 0, **error}
    with pytest.raises(JsApiError):
        jsapi.parse_puback(_msg(json.dumps(both).encode()))
    with pytest.raises(NoRespondersError):
        jsapi.parse_puback(_msg(b"", {"Status": "503"}))
    # A status header never passes for an ack, even with an ack's body.
    with pytest.raises(NoRespondersError):
        jsapi.parse_puback(_msg(b'{"stream":"S","seq":1}', {"Status": "503"}))
    with pytest.raises(KeyError):
        jsapi.parse_puback(_msg(b"{}"))
    with pytest.raises(ValueError):
        jsapi.parse_puback(_msg(b'{"stream":"S","seq":1'))


# -- against the server ------------------------------------------------------------------


async def test_acks_duplicates_and_refusals_through_the_lean_path(
    stream: tuple[Replies, str, str],
) -> None:
    replies, name, p = stream
    assert replies._lean  # nats-py 2.16: the path under test
    first = await jsapi.publish(replies, OutMessage(f"{p}.a", b"1", {"Nats-Msg-Id": "m1"}), 5)
    assert (first.stream, first.seq, first.duplicate) == (name, 1, False)
    again = await jsapi.publish(replies, OutMessage(f"{p}.a", b"1", {"Nats-Msg-Id": "m1"}), 5)
    assert (again.seq, again.duplicate) == (1, True)
    guarded = {
        "Nats-Msg-Id": "m2",
        "Nats-Expected-Last-Subject-Sequence": "0",
        "Nats-Expected-Last-Subject-Sequence-Subject": f"{p}.>",
    }
    with pytest.raises(JsApiError) as exc:
        await jsapi.publish(replies, OutMessage(f"{p}.a", b"2", guarded), 5)
    assert exc.value.err_code == jsapi.ERR_WRONG_LAST_SEQUENCE
    ok = {**guarded, "Nats-Expected-Last-Subject-Sequence": "1"}
    assert (await jsapi.publish(replies, OutMessage(f"{p}.a", b"2", ok), 5)).seq == 2
    with pytest.raises(JsApiError) as exc:
        await jsapi.publish(replies, OutMessage(f"{p}.b", b"x" * 4096, {}), 5)
    assert exc.value.err_code == jsapi.ERR_MESSAGE_TOO_LARGE
    with pytest.raises(NoRespondersError):
        await jsapi.publish(replies, OutMessage(f"nowhere{p}.x", b"", {}), 5)
    with pytest.raises(NoRespondersError):
        await jsapi.publish(replies, OutMessage(f"nowhere{p}.x", b"", None), 5)  # type: ignore[arg-type]
    # The atomic batch sends through the same path.
    batch = [OutMessage(f"{p}.c", str(i).encode(), {"Nats-Msg-Id": f"c{i}"}) for i in range(3)]
    ack = await jsapi.publish_atomic_batch(replies, batch, "batch-1", 5)
    assert (ack.seq, ack.count, ack.batch) == (5, 3, "batch-1")


async def test_the_same_bytes_as_the_plain_client(nc: NATS, unique: str) -> None:
    """Headers as nats-py writes them (names stripped, blank names skipped, line breaks
    in values turned into spaces), and a message without headers as a plain PUB."""
    replies = Replies(nc)
    got: list[Msg] = []
    done = asyncio.Event()
    sub = await nc.subscribe(f"same{unique}.>", cb=_collect(got, 6, done))
    headers = {
        "Nats-Msg-Id": " id-1 ",
        " Spaced ": "v",
        "  ": "skipped",
        "Multi": "a\r\nb\nc",
        "Utf": "zoë",
        "Empty": "",
    }
    await replies.send(f"same{unique}.lean", b"payload", "", headers)
    await nc.publish(f"same{unique}.plain", b"payload", headers=headers)
    await replies.send(f"same{unique}.lean", b"bare", "reply.to", None)
    await nc.publish(f"same{unique}.plain", b"bare", reply="reply.to")
    await replies.send(f"same{unique}.lean", b"", "", {})
    await nc.publish(f"same{unique}.plain", b"", headers={})
    await nc.flush()
    async with asyncio.timeout(5):
        await done.wait()
    await sub.unsubscribe()
    assert len(got) == 6
    for lean, plain in zip(got[0::2], got[1::2], strict=True):
        assert (lean.data, lean.reply, lean.headers) == (plain.data, plain.reply, plain.headers)
    assert got[0].headers == {  # as nats-py writes them
        "Nats-Msg-Id": "id-1",
        "Spaced": "v",
        "Multi": "a  b c",
        "Utf": "zoë",
        "Empty": "",
    }


def _collect(into: list[Msg], until: int, done: asyncio.Event) -> Any:
    async def cb(msg: Msg) -> None:
        into.append(msg)
        if len(into) >= until:
            done.set()

    return cb


def _answer(nc: NATS, data: bytes | None = None) -> Any:
    async def cb(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data if data is None else data)

    return cb


async def test_the_plain_clients_errors(nats_server: Server, unique: str) -> None:
    nc = await nats.connect(nats_server.url)
    replies = Replies(nc)
    for subject in ("", "a b", "a\r\nPUB x 1"):
        with pytest.raises(nats_errors.BadSubjectError):
            await replies.send(subject, b"", "", None)
    with pytest.raises(nats_errors.BadHeaderError):
        await replies.send(f"e{unique}", b"", "", {"Bad:Name": "x"})
    with pytest.raises(nats_errors.BadHeaderError):
        await nc.publish(f"e{unique}", b"", headers={"Bad:Name": "x"})
    with pytest.raises(nats_errors.MaxPayloadError):
        await replies.send(f"e{unique}", b"x" * (nc.max_payload + 1), "", None)
    await nc.close()
    with pytest.raises(nats_errors.ConnectionClosedError):
        await replies.send(f"e{unique}", b"", "", None)
    with pytest.raises(nats_errors.ConnectionClosedError):
        await replies.request(f"e{unique}", b"", {"A": "b"}, 1)


# -- timeouts ------------------------------------------------------------------------------


async def _silent(nc: NATS, subject: str) -> Any:
    """A responder that hears requests and never answers."""

    async def cb(msg: Msg) -> None:
        pass

    return await nc.subscribe(subject, cb=cb)


async def test_a_request_not_answered_times_out_on_time(nc: NATS, unique: str) -> None:
    replies = Replies(nc)
    await replies.start()
    sub = await _silent(nc, f"silent{unique}")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await replies.request(f"silent{unique}", b"", None, 0.2)
    took = time.monotonic() - t0
    assert 0.2 <= took < 0.2 + jsapi.TIMEOUT_GRAIN_S + 0.25
    # Many at once, answered or not: each as it should.
    echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc))
    results = await asyncio.gather(
        *(
            replies.request(f"{'silent' if i % 2 else 'echo'}{unique}", b"%d" % i, None, 0.3)
            for i in range(40)
        ),
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if i % 2:
            assert isinstance(result, TimeoutError)
        else:
            assert isinstance(result, Msg) and result.data == b"%d" % i
    assert not replies._futures
    await sub.unsubscribe()
    await echo.unsubscribe()
    await replies.stop()


async def test_a_shorter_timeout_after_a_longer_one_still_comes_on_time(
    nc: NATS, unique: str
) -> None:
    replies = Replies(nc)
    await replies.start()
    sub = await _silent(nc, f"silent{unique}")
    long = asyncio.ensure_future(replies.request(f"silent{unique}", b"", None, 3.0))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await replies.request(f"silent{unique}", b"", None, 0.2)
    assert time.monotonic() - t0 < 1.0
    assert not long.done()
    long.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long
    await sub.unsubscribe()
    await replies.stop()


def test_timeouts_in_a_second_event_loop(nats_server: Server, unique: str) -> None:
    """A Replies used again from another event loop (one asyncio.run after another)
    still times its requests out: its sweep moves to the loop it is used in."""

    async def attempt(replies: Replies | None) -> Replies:
        nc = await nats.connect(nats_server.url)
        if replies is None:
            replies = Replies(nc)
        else:
            replies._nc, replies._sub = nc, None
        await replies.start()
        sub = await _silent(nc, f"silent{unique}")
        # Answered first: its entry waits in the sweep until its deadline.
        echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc, b"ok"))
        assert (await replies.request(f"echo{unique}", b"", None, 30)).data == b"ok"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(replies.request(f"silent{unique}", b"", None, 0.2), 5)
        assert time.monotonic() - t0 < 1.0  # the request's own timeout, not wait_for's
        await sub.unsubscribe()
        await echo.unsubscribe()
        await nc.close()
        return replies

    replies = asyncio.run(attempt(None))
    asyncio.run(attempt(replies))


async def test_a_short_timeout_after_a_long_one_answered_comes_on_time(
    nc: NATS, unique: str
) -> None:
    """The sweep armed for an answered request's far deadline is brought forward."""
    replies = Replies(nc)
    await replies.start()
    sub = await _silent(nc, f"silent{unique}")
    echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc, b"ok"))
    for far in (30.0, 0.5):
        assert (await replies.request(f"echo{unique}", b"", None, far)).data == b"ok"
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await replies.request(f"silent{unique}", b"", None, 0.2)
        assert time.monotonic() - t0 < 0.2 + jsapi.TIMEOUT_GRAIN_S + 0.25
    await sub.unsubscribe()
    await echo.unsubscribe()
    await replies.stop()


async def test_a_late_answer_after_the_timeout_is_dropped(nc: NATS, unique: str) -> None:
    replies = Replies(nc)
    await replies.start()
    held: list[Msg] = []
    sub = await nc.subscribe(f"late{unique}", cb=_collect(held, 1, asyncio.Event()))
    with pytest.raises(TimeoutError):
        await replies.request(f"late{unique}", b"", None, 0.1)
    assert len(held) == 1
    await nc.publish(held[0].reply, b"too late")
    await nc.flush()
    echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc, b"ok"))
    assert (await replies.request(f"echo{unique}", b"", None, 5)).data == b"ok"
    await sub.unsubscribe()
    await echo.unsubscribe()
    await replies.stop()


# -- no task hops (issue 23) --------------------------------------------------------------


def _counting(calls: list[Any], method: Any) -> Any:
    """``method`` that records each call's first argument."""
    if asyncio.iscoroutinefunction(method):

        async def counted(item: Any) -> Any:
            calls.append(item)
            return await method(item)

        return counted

    def counted_now(item: Any) -> Any:
        calls.append(item)
        return method(item)

    return counted_now


async def test_a_request_and_its_reply_take_no_task_hop(
    nc: NATS, nats_server: Server, unique: str
) -> None:
    """A request is written by a loop callback, not handed to nats-py's flusher task,
    and its reply is routed when the parser reads it, not queued for the inbox
    subscription's task: two task steps fewer per request (about a tenth of the CPU of
    an append). The replies are the same."""
    responder = await nats.connect(nats_server.url)
    echo = await responder.subscribe(f"echo{unique}", cb=_answer(responder))
    await responder.flush()
    replies = Replies(nc)
    await replies.start()
    flushed: list[Any] = []
    queued: list[Any] = []
    flushes = nc._flush_queue
    assert flushes is not None
    flushes.put = _counting(flushed, flushes.put)  # type: ignore[method-assign]
    flushes.put_nowait = _counting(flushed, flushes.put_nowait)  # type: ignore[method-assign]
    inbox = replies._sub._pending_queue
    inbox.put_nowait = _counting(queued, inbox.put_nowait)
    answers = await asyncio.gather(
        *(replies.request(f"echo{unique}", b"%d" % i, {"N": str(i)}, 5) for i in range(20))
    )
    assert [a.data for a in answers] == [b"%d" % i for i in range(20)]
    assert (await replies.request(f"echo{unique}", b"one", None, 5)).data == b"one"
    assert flushed == [] and queued == []
    assert nc.stats["in_msgs"] >= 21 and nc.stats["out_msgs"] >= 21
    await replies.stop()
    await echo.unsubscribe()
    await responder.close()


async def test_a_reply_whose_hand_over_fails_leaves_the_reader_reading(
    nats_server: Server, unique: str
) -> None:
    """A reply is handed over in the client's reader (issue 23): when that raises (a
    future of an event loop since closed: 'Event loop is closed'), the error goes to
    the client's error callback and the reader goes on. It stopped before: the client
    still said connected and every later reply was lost (until the stale-ping check)."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(nats_server.url, error_cb=on_error)
    echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc))
    replies = Replies(nc)
    await replies.start()
    routes = jsapi._wire(nc).routes
    route = routes[replies._sub._id]
    failed: list[Msg] = []

    def fails_once(msg: Msg) -> None:
        if not failed:
            failed.append(msg)
            raise RuntimeError("Event loop is closed")
        route(msg)

    routes[replies._sub._id] = fails_once
    with pytest.raises(TimeoutError):
        await replies.request(f"echo{unique}", b"lost", None, 0.5)
    assert [m.data for m in failed] == [b"lost"]
    assert len(errors) == 1 and isinstance(errors[0], jsapi.ReplyHandOverError)
    assert str(errors[0].cause) == "Event loop is closed"
    assert nc._reading_task is not None and not nc._reading_task.done()
    assert (await replies.request(f"echo{unique}", b"next", None, 2)).data == b"next"
    await replies.stop()
    await echo.unsubscribe()
    await nc.close()


async def test_a_reply_hand_over_error_is_logged_as_what_happened(
    nats_server: Server, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The event store's connection (bootstrap.connect) logged a failed hand-over with
    its connection callback's words: 'nats: Event loop is closed at nats://...;
    retrying', which said neither what failed nor that nothing is retried."""
    from jetsource.core.settings import JetsourceSettings, NatsSettings
    from jetsource.eventstore.bootstrap import connect

    nc = await connect(JetsourceSettings(nats=NatsSettings(url=nats_server.url)))
    echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc))
    replies = Replies(nc)
    await replies.start()
    routes = jsapi._wire(nc).routes
    route = routes[replies._sub._id]

    def fails_once(msg: Msg) -> None:
        routes[replies._sub._id] = route
        raise RuntimeError("Event loop is closed")

    routes[replies._sub._id] = fails_once
    with caplog.at_level("INFO", logger="jetsource.nats"), pytest.raises(TimeoutError):
        await replies.request(f"echo{unique}", b"lost", None, 0.3)
    said = [r.getMessage() for r in caplog.records if r.name == "jetsource.nats"]
    assert len(said) == 1, said
    assert "could not be handed over" in said[0] and "Event loop is closed" in said[0]
    assert "the reader goes on" in said[0] and "retrying" not in said[0]
    assert (await replies.request(f"echo{unique}", b"next", None, 2)).data == b"next"
    await replies.stop()
    await echo.unsubscribe()
    await nc.close()


async def test_commands_keep_their_order_with_the_clients_own(
    nc: NATS, nats_server: Server, unique: str
) -> None:
    """Commands written here and by nats-py itself (publish, subscribe) on the same
    connection reach the server in the order they were made."""
    listener = await nats.connect(nats_server.url)
    got: list[Msg] = []
    done = asyncio.Event()
    sub = await listener.subscribe(f"order{unique}", cb=_collect(got, 300, done))
    await listener.flush()
    replies = Replies(nc)
    for i in range(300):
        if i % 3 == 0:
            await nc.publish(f"order{unique}", b"%d" % i)
        else:
            await replies.send(f"order{unique}", b"%d" % i, "", {"I": str(i)} if i % 2 else None)
        if i % 50 == 0:
            await nc.subscribe(f"other{unique}.{i}")  # nats-py's own flush in between
    async with asyncio.timeout(5):
        await done.wait()
    assert [m.data for m in got] == [b"%d" % i for i in range(300)]
    await sub.unsubscribe()
    await listener.close()


class _Buffering:
    """A transport that says it still buffers bytes (a socket the peer reads slowly)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_write_buffer_size(self) -> int:
        return 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_busy_socket_hands_the_writes_to_the_clients_flusher(
    nc: NATS, nats_server: Server, unique: str
) -> None:
    """While the socket's transport holds unsent bytes, commands are not written past
    them: nats-py's flusher writes them and waits for the socket to drain, as it did."""
    responder = await nats.connect(nats_server.url)
    echo = await responder.subscribe(f"echo{unique}", cb=_answer(responder))
    await responder.flush()
    replies = Replies(nc)
    await replies.start()
    writer = nc._transport._io_writer  # type: ignore[union-attr]
    real = writer._transport
    writer._transport = _Buffering(real)
    flushed: list[Any] = []
    flushes = nc._flush_queue
    assert flushes is not None
    flushes.put_nowait = _counting(flushed, flushes.put_nowait)  # type: ignore[method-assign]
    try:
        answers = await asyncio.gather(
            *(replies.request(f"echo{unique}", b"%d" % i, None, 5) for i in range(10))
        )
    finally:
        writer._transport = real
    assert [a.data for a in answers] == [b"%d" % i for i in range(10)]
    assert flushed  # through the flusher
    await replies.stop()
    await echo.unsubscribe()
    await responder.close()


async def test_a_request_made_while_reconnecting_is_sent_once_reconnected(
    tmp_path: Path, unique: str
) -> None:
    """A command written while the connection is down waits in the client's pending
    buffer (never into the transport being torn down) and is sent once it reconnects,
    after the subscriptions are made again, as nats-py sends its own."""
    server = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        await asyncio.to_thread(server.wait_ready, proc, 30)
        down = asyncio.Event()

        async def disconnected() -> None:
            down.set()

        nc = await nats.connect(
            server.address(),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.1,
            disconnected_cb=disconnected,
        )
        replies = Replies(nc)
        await replies.start()
        echo = await nc.subscribe(f"echo{unique}", cb=_answer(nc, b"ok"))
        assert (await replies.request(f"echo{unique}", b"", None, 5)).data == b"ok"
        stop_pid(proc.pid)
        proc.wait(10)
        async with asyncio.timeout(10):
            await down.wait()
        assert not nc.is_connected
        waiting = asyncio.ensure_future(replies.request(f"echo{unique}", b"", None, 20))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        proc = server.start()
        await asyncio.to_thread(server.wait_ready, proc, 30)
        async with asyncio.timeout(15):
            assert (await waiting).data == b"ok"
        await echo.unsubscribe()
        await replies.stop()
        await nc.close()
    finally:
        stop_pid(proc.pid)
        proc.wait(10)


def _stop_now(pid: int) -> None:
    """SIGSTOP ``pid`` and return once the kernel has stopped it."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, f"pid {pid} did not stop"
        time.sleep(0.005)


@dataclass
class _Hangable:
    """A NATS server of the test's own and a client of it with a small pending buffer,
    its Replies started: :meth:`paused` hangs the server (SIGSTOP)."""

    server: NatsServer
    proc: subprocess.Popen[bytes]
    nc: NATS
    replies: Replies

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The server stopped inside, continued (SIGCONT) on the way out."""
        _stop_now(self.proc.pid)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def _hangable_server(
    tmp_path: Path, pending_size: int, *, lean: bool = True
) -> AsyncIterator[_Hangable]:
    """:class:`_Hangable`; ``lean=False``: the Replies takes the path for clients
    without nats-py 2.16's internals. The client is closed after, and the server
    continued and stopped."""
    server = NatsServer(tmp_path, port=free_port(), monitor_port=free_port())
    proc = server.start()
    try:
        await asyncio.to_thread(server.wait_ready, proc, 30)
        nc = await nats.connect(server.address(), pending_size=pending_size)
        replies = Replies(nc)
        if not lean:
            replies._lean = False  # the path for other clients
        await replies.start()
        yield _Hangable(server, proc, nc, replies)
        await replies.stop()
        await nc.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        stop_pid(proc.pid)
        proc.wait(10)


async def test_a_request_times_out_on_time_when_the_pending_buffer_is_full(
    tmp_path: Path, unique: str
) -> None:
    """A hung server (SIGSTOP) and the client's pending buffer full: a request's
    timeout covers waiting for room in that buffer, and a request that did not get
    room is not sent later. The wait for room had no bound (nats-py's flush_timeout,
    None): ``request(timeout=0.5)`` ended only once the server was continued."""
    async with _hangable_server(tmp_path, 64 * 1024) as hung:
        nc, replies = hung.nc, hung.replies
        listener = await nats.connect(hung.server.address())
        late = await listener.subscribe(f"late{unique}")
        await listener.flush()
        filled = False
        with hung.paused():
            try:

                async def fill() -> None:
                    # Until the socket's buffers are full. (Not cancelled: nats-py's wait
                    # for a flush swallows a cancellation.)
                    while not filled:
                        await replies.send(f"fill{unique}", b"x" * 4000, "", None)

                filling = asyncio.ensure_future(fill())
                writer = nc._transport._io_writer  # type: ignore[union-attr]
                async with asyncio.timeout(10):
                    while writer.transport.get_write_buffer_size() == 0:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)  # nats-py's flusher waits for the socket to drain
                while nc._pending_data_size + 4100 <= nc._max_pending_size:
                    await replies.send(f"fill{unique}", b"x" * 4000, "", None)
                await _ends_on_time(replies.request(f"late{unique}", b"y" * 4000, None, 0.5))
            finally:
                filled = True  # before the server is continued
        await asyncio.wait({filling}, timeout=10)
        assert filling.done()
        assert await round_trip(nc, 10)
        await listener.flush()
        with pytest.raises(nats_errors.TimeoutError):
            await late.next_msg(timeout=0.2)  # timed out before it was sent: not sent
        await listener.close()


async def test_a_batch_whose_commit_waited_out_the_deadline_for_room_is_not_committed(
    stream: tuple[Replies, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for room in the client's buffer took the deadline on the batch's last
    message: the commit was put in the buffer anyway and committed, while the caller
    got TimeoutError (a retry under a new batch id stored the batch twice)."""
    replies, name, prefix = stream
    nc = replies._nc
    calls = 0
    room = jsapi._Wire.room

    async def slow_on_the_commit(self: Any, size: int, deadline: float) -> None:
        nonlocal calls
        calls += 1
        await room(self, size, deadline)
        if calls == 2:
            await asyncio.sleep(deadline - asyncio.get_running_loop().time() + 0.05)

    monkeypatch.setattr(jsapi._Wire, "room", slow_on_the_commit)
    bound, nc._max_pending_size = nc._max_pending_size, 1  # every send asks for room
    try:
        messages = [OutMessage(f"{prefix}.b", b"1", {}), OutMessage(f"{prefix}.b", b"2", {})]
        with pytest.raises(TimeoutError):
            await jsapi.publish_atomic_batch(replies, messages, "b1", 0.3)
    finally:
        nc._max_pending_size = bound
    assert calls == 2
    await asyncio.sleep(0.2)
    info = await jsapi.api(replies, f"STREAM.INFO.{name}", {}, 5)
    assert info["state"]["messages"] == 0


async def test_no_pending_bound_is_no_wait_for_room(nc: NATS) -> None:
    """nats-py's pending_size 0 or less means no bound: room() forced a flush for
    every send with a deadline (with a hung server, a wait until its deadline)."""
    replies = Replies(nc)
    await replies.start()
    forced: list[bool] = []

    async def flush_pending(force_flush: bool = False) -> None:
        forced.append(force_flush)

    bound, nc._max_pending_size = nc._max_pending_size, 0
    nc.__dict__["_flush_pending"] = flush_pending
    try:
        nc._pending.append(b"PING\r\n")
        nc._pending_data_size += 6
        loop = asyncio.get_running_loop()
        await jsapi._wire(nc).room(100, loop.time() + 0.5)
        assert forced == []
    finally:
        del nc.__dict__["_flush_pending"]
        nc._max_pending_size = bound
        await replies.stop()


async def test_a_command_larger_than_the_whole_pending_buffer_times_out_on_time(
    tmp_path: Path, unique: str
) -> None:
    """One command larger than the client's whole pending buffer (pending_size below
    the message) with nothing pending: no wait for room is needed, and the send went to
    nats-py's ``_send_command``, whose forced flush waits for the socket to drain, with
    no end of its own: with the server hung (SIGSTOP) ``request(timeout=0.5)`` ended
    only once the server was continued. It is handed to the writer at once now (as
    nats-py takes it), and the request times out on time."""
    async with _hangable_server(tmp_path, 8 * 1024) as hung:
        with hung.paused():
            # The socket's buffers full (the transport keeps the rest), nothing pending
            # in the client: its flusher's next drain waits for the server.
            await _fill_the_transport(hung.nc, unique)
            assert hung.nc._pending_data_size == 0
            await _ends_on_time(hung.replies.request(f"big{unique}", b"y" * 10_000, None, 0.5))
        assert await round_trip(hung.nc, 10)


async def _ends_on_time(call: Awaitable[object]) -> None:
    """``call`` (its timeout 0.5 s) raises TimeoutError 0.45 to 1.0 s after it starts;
    the outer 3 s stands for the bug: no end before SIGCONT."""
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(3):  # the bug: no end before SIGCONT
            await call
    assert 0.45 < time.monotonic() - started < 1.0


async def _fill_the_transport(nc: NATS, unique: str) -> bytes:
    """With the server stopped: its socket's buffers full (the transport keeps the
    rest). The command it was filled with."""
    writer = nc._transport._io_writer  # type: ignore[union-attr]
    fill = b"PUB fill%b 4000\r\n%b\r\n" % (unique.encode(), b"x" * 4000)
    for _ in range(64):
        writer.write(fill * 256)  # 64 x 1 MB
        await asyncio.sleep(0)
    assert writer.transport.get_write_buffer_size() > 1024 * 1024
    return fill


async def _fill_the_socket(nc: NATS, unique: str) -> None:
    """With the server stopped: its socket's buffers full (:func:`_fill_the_transport`),
    and the client's pending buffer so near its bound that the next command nats-py
    sends itself forces a flush, which waits for the socket to drain."""
    fill = await _fill_the_transport(nc, unique)
    small = b"PUB fill%b 0\r\n\r\n" % unique.encode()
    for command in (fill, small):  # less room left than any command takes
        while nc._pending_data_size + len(command) <= nc._max_pending_size:
            nc._pending.append(command)
            nc._pending_data_size += len(command)


async def test_a_request_on_a_client_without_the_internals_times_out_on_time(
    tmp_path: Path, unique: str
) -> None:
    """Replies.send's path for a client without nats-py 2.16's internals (nc.publish)
    waited for room in a full pending buffer with no end (nats-py's forced flush, which
    also swallows a cancellation): with the server hung (SIGSTOP) request(timeout=0.5)
    ended only once the server was continued. Its wait is bounded by the deadline."""
    async with _hangable_server(tmp_path, 32 * 1024, lean=False) as hung:
        with hung.paused():
            await _fill_the_socket(hung.nc, unique)
            await _ends_on_time(hung.replies.request(f"late{unique}", b"y" * 4000, None, 0.5))
        assert await round_trip(hung.nc, 10)


async def test_a_batched_direct_get_times_out_on_time_with_a_full_buffer(
    tmp_path: Path, unique: str
) -> None:
    """A page of a batched direct get (direct_get_page, every paged read) was sent with
    nats-py's own publish, whose wait for room in a full pending buffer has no end:
    with the server hung (SIGSTOP) a read with timeout 0.5 ended only once the server
    was continued. It is sent as a request is, its wait within the timeout."""
    async with _hangable_server(tmp_path, 32 * 1024) as hung:
        with hung.paused():
            await _fill_the_socket(hung.nc, unique)
            await _ends_on_time(jsapi.direct_get_page(hung.replies, f"S{unique}", None, 1, 10, 0.5))
        assert await round_trip(hung.nc, 10)


async def test_a_batched_direct_get_whose_wait_for_room_the_call_deadline_cut_names_it(
    tmp_path: Path, unique: str
) -> None:
    """Under a call's deadline (core.deadline.within), the server hung (SIGSTOP) and the
    client's pending buffer full: the page's wait for room raised a plain TimeoutError
    (gRPC: a bare DEADLINE_EXCEEDED naming nothing), where Replies.request says
    DeadlineCutError naming what it waited for. The page says it too now."""
    async with _hangable_server(tmp_path, 32 * 1024) as hung:
        with hung.paused():
            await _fill_the_socket(hung.nc, unique)
            started = time.monotonic()
            with pytest.raises(DeadlineCutError, match=f"stream S{unique}'s answer"):
                async with asyncio.timeout(3):
                    with call_deadline(1.0):
                        await jsapi.direct_get_page(hung.replies, f"S{unique}", None, 1, 10, 5.0)
            assert time.monotonic() - started < 1.0
        assert await round_trip(hung.nc, 10)


async def test_a_batched_direct_get_ends_at_its_deadline_after_a_wait_for_room(
    tmp_path: Path, unique: str
) -> None:
    """The page's send waited for room in a full buffer (the server hung, continued
    after 1 s), then its wait for the first reply started a fresh full timeout (1.5 s):
    under a 2 s call deadline it ended at 2.5 s, a bare TimeoutError. Each reply's wait
    is cut by the call's deadline: it ends before the call's, naming the read."""
    async with _hangable_server(tmp_path, 32 * 1024) as hung:
        mute = await nats.connect(hung.server.address())
        await mute.subscribe(f"$JS.API.DIRECT.GET.M{unique}", cb=_quiet)  # never answers
        await mute.flush()
        with hung.paused():
            await _fill_the_socket(hung.nc, unique)
            asyncio.get_running_loop().call_later(1.0, os.kill, hung.proc.pid, signal.SIGCONT)
            started = time.monotonic()
            with pytest.raises(DeadlineCutError, match=f"stream M{unique}'s answer"):
                async with asyncio.timeout(5):
                    with call_deadline(2.0):
                        await jsapi.direct_get_page(hung.replies, f"M{unique}", None, 1, 10, 1.5)
            # Ends at the call deadline less its reserve (~1.8 s); before b387238 it ran
            # 2.5 s. Room above for a loaded machine's loop lag (review10h).
            assert 1.7 < time.monotonic() - started < 2.4
        assert await round_trip(hung.nc, 10)
        await mute.close()


def _streaming(nc: NATS, stream: str, count: int, gap: float) -> Any:
    """A batched direct get's answer from ``stream``: ``count`` messages ``gap`` s
    apart, then the end of the batch (204)."""

    async def cb(msg: Msg) -> None:
        for seq in range(1, count + 1):
            await asyncio.sleep(gap)
            headers = {
                "Nats-Stream": stream,
                "Nats-Subject": f"{stream}.x",
                "Nats-Sequence": str(seq),
                "Nats-Time-Stamp": "2026-01-01T00:00:00Z",
            }
            await nc.publish(msg.reply, b"x", headers=headers)
        await nc.publish(msg.reply, b"", headers={"Status": "204", "Nats-Num-Pending": "0"})

    return cb


async def test_a_batched_direct_get_streaming_steadily_past_its_timeout_completes(
    nc: NATS, unique: str
) -> None:
    """A page of large messages (snapshots up to 8 MB) takes longer than one timeout
    when each message comes well within it: b387238 made the timeout bound the whole
    page, so such a page failed (TimeoutError at 0.6 s here). Each reply has the
    timeout after the one before."""
    stream = f"P{unique}"
    helper = await nats.connect(nc.connected_url.geturl())  # type: ignore[union-attr]
    await helper.subscribe(f"$JS.API.DIRECT.GET.{stream}", cb=_streaming(helper, stream, 5, 0.25))
    await helper.flush()
    replies = Replies(nc)
    await replies.start()
    try:
        started = time.monotonic()
        page = await jsapi.direct_get_page(replies, stream, None, 1, 10, 0.6)
        assert time.monotonic() - started > 1.0
        assert [m.seq for m in page.messages] == [1, 2, 3, 4, 5]
        assert page.pending == 0
    finally:
        await replies.stop()
        await helper.close()


async def _quiet(msg: Msg) -> None:
    pass
