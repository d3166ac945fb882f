"""A three-server NATS cluster with replicated (R3) streams and buckets, forming late or
losing quorum (`make chaos`; each test starts its own cluster).

A cluster without a JetStream meta leader (still forming, or more than half of its
servers down or cut off) does not answer a STREAM.CREATE at all for its first seconds,
then answers 503/10008; a new R3 stream is answered only once its own group has
elected a leader. Creating streams and buckets was one request with a 5 s timeout: on
a slow machine the chaos row ``cluster-leader-kill-r3`` failed at set-up with a bare
``TimeoutError()``, and ``jetsource streams ensure`` during a quorum loss exited 1
("refused") with the 503 as a repr. A create is idempotent for one configuration, so
it is now asked again for up to ``PLACEMENT_WAIT_S`` and then fails naming the cause
(``ClusterUnavailableError``, an ``EventStoreUnavailableError``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from jetsource.core.errors import EventStoreUnavailableError
from jetsource.eventstore import jsapi
from jetsource.projection.control import Control
from tests.chaos.harness import Cluster, make_cluster, start_cluster

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = make_cluster(tmp_path, 3)
    yield c
    for p in c.procs:
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
    c.stop()


def _config(name: str) -> dict[str, object]:
    return {"name": name, "subjects": [f"{name.lower()}.>"], "num_replicas": 3}


async def test_streams_and_buckets_wait_for_a_cluster_still_forming(cluster: Cluster) -> None:
    """One server up, the other two 6 s later (past the 5 s request timeout): the R3
    stream and the R3 control bucket are created once the cluster has its leader."""
    cluster.start(0)
    nc = await nats.connect(cluster.nodes[0].address(), max_reconnect_attempts=-1)
    try:
        replies = jsapi.Replies(nc)
        await replies.start()
        name = f"R3_{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        stream = asyncio.create_task(jsapi.ensure_stream(replies, _config(name), 5.0))
        bucket = asyncio.create_task(Control(nc, f"RM_{name}", 3).kv())
        await asyncio.sleep(6.0)
        early = [repr(t.exception()) for t in (stream, bucket) if t.done()]
        assert early == [], "answered with no meta leader"
        await asyncio.to_thread(cluster.start, 1)
        await asyncio.to_thread(cluster.start, 2)
        info = await stream
        await bucket
        took = time.monotonic() - started
        assert info["config"]["num_replicas"] == 3
        # Within the wait's bound, measured from the first request.
        assert took < jsapi.PLACEMENT_WAIT_S + 5.0, took
        again = await jsapi.api(replies, f"STREAM.INFO.KV_RM_{name}", {}, 5.0)
        assert again["config"]["num_replicas"] == 3
    finally:
        await nc.close()


async def test_quorum_lost_is_named_and_a_create_succeeds_once_it_returns(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two of three servers paused (SIGSTOP: hung, cut off): creating an R3 stream
    fails within the wait's bound naming the missing meta leader, as an unavailable
    store (not a bare TimeoutError, not a refusal); resumed, the same create succeeds."""
    monkeypatch.setattr(jsapi, "PLACEMENT_WAIT_S", 4.0)
    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    nc = await nats.connect(cluster.nodes[0].address(), max_reconnect_attempts=-1)
    try:
        replies = jsapi.Replies(nc)
        await replies.start()
        for p in cluster.procs[1:]:
            os.kill(p.pid, signal.SIGSTOP)
        name = f"R3_{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        with pytest.raises(EventStoreUnavailableError) as lost:
            await jsapi.ensure_stream(replies, _config(name), 2.0)
        took = time.monotonic() - started
        assert isinstance(lost.value, jsapi.ClusterUnavailableError)
        assert "no JetStream meta leader" in str(lost.value) and name in str(lost.value)
        assert took < 4.0 + 2.0 + 1.0, took  # the wait, one request's timeout, slack
        for p in cluster.procs[1:]:
            os.kill(p.pid, signal.SIGCONT)
        started = time.monotonic()
        monkeypatch.setattr(jsapi, "PLACEMENT_WAIT_S", 30.0)
        info = await jsapi.ensure_stream(replies, _config(name), 2.0)
        assert info["config"]["num_replicas"] == 3
        print(f"\ncreated {time.monotonic() - started:.1f} s after quorum returned")
    finally:
        await nc.close()


def test_start_cluster_still_waits_for_its_meta_leader(tmp_path: Path) -> None:
    c = start_cluster(tmp_path, 3)
    try:
        assert all(p is not None and p.poll() is None for p in c.procs)
    finally:
        c.stop()


async def test_a_write_to_a_stream_without_a_leader_is_unavailable_not_missing(
    cluster: Cluster,
) -> None:
    """The stream leader and one follower killed: the remaining server has no route to
    a leader and answers a publish "no responders", which the store named "stream ...
    does not exist: create it with `jetsource streams ensure`" (a StreamMissingError).
    It is unavailable for a while, saying the stream has no leader; with both servers
    back the same append is taken once."""
    from jetsource.core.envelope import NO_STREAM
    from jetsource.core.errors import StreamMissingError
    from jetsource.domains.context.events import registry
    from jetsource.eventstore.jetstream import JetStreamEventStore
    from tests.eventstore_fixtures import created, decision, isolated_settings

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    unique = uuid.uuid4().hex[:8]
    cfg = isolated_settings(unique, replicas=3, request_timeout_s=1.0, retry_attempts=3)
    leader = -1
    first = await nats.connect(servers=cluster.url.split(","))
    try:
        store = JetStreamEventStore(first, registry, cfg)
        await store.ensure_streams()
        await store.append("s", [created()], NO_STREAM)
        leader = await asyncio.to_thread(cluster.leader_of, cfg.stream)
    finally:
        await first.close()
    down = [leader, (leader + 1) % 3]
    (left,) = (i for i in range(3) if i not in down)
    for i in down:
        cluster.kill(i)
    nc = await nats.connect(cluster.nodes[left].address(), max_reconnect_attempts=-1)
    try:
        store = JetStreamEventStore(nc, registry, cfg)
        await store.start()
        started = time.monotonic()
        with pytest.raises(EventStoreUnavailableError) as lost:
            await store.append("s", [decision(1)], 1)
        assert not isinstance(lost.value, StreamMissingError)
        text = str(lost.value)
        assert "does not exist" not in text, text
        assert "no leader" in text or "did not answer" in text, text
        assert time.monotonic() - started < 3 * 1.0 + 3.0
        print(f"\n{time.monotonic() - started:.1f} s: {text}")
        for i in down:
            await asyncio.to_thread(cluster.start, i)
        started = time.monotonic()
        while True:
            try:
                await store.append("s", [decision(1)], 1)
                break
            except EventStoreUnavailableError:
                assert time.monotonic() - started < 30.0, "not writable 30 s after quorum"
                await asyncio.sleep(0.2)
        print(f"\nwritable {time.monotonic() - started:.1f} s after quorum returned")
        assert [e.version for e in await store.read_aggregate("s")] == [1, 2]
    finally:
        await nc.close()


async def test_write_health_names_a_cluster_without_quorum(cluster: Cluster) -> None:
    """Two of three servers paused: the publisher's write health went NOT_SERVING
    saying only "did not accept a probe write: TimeoutError()"; it names the likely
    causes now, and is writable again once they are resumed."""
    from jetsource.core.writehealth import WriteHealth

    class Gauge:
        def set(self, value: float) -> None:
            pass

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    nc = await nats.connect(cluster.nodes[0].address(), max_reconnect_attempts=-1)
    try:
        name = f"WH_{uuid.uuid4().hex[:8]}"
        replies = jsapi.Replies(nc)
        await replies.start()
        await jsapi.ensure_stream(replies, _config(name), 5.0)
        health = WriteHealth(nc, name, "test", Gauge(), who="test", replicas=3)
        assert await health.probe() == ""
        for p in cluster.procs[1:]:
            os.kill(p.pid, signal.SIGSTOP)
        said = await health.probe()
        assert "TimeoutError()" not in said, said
        assert f"did not answer the probe of stream {name}" in said and "quorum" in said, said
        for p in cluster.procs[1:]:
            os.kill(p.pid, signal.SIGCONT)
        started = time.monotonic()
        while (said := await health.probe()) != "":
            assert time.monotonic() - started < 30.0, said
            await asyncio.sleep(0.2)
        print(f"\nwritable {time.monotonic() - started:.1f} s after SIGCONT")
    finally:
        await nc.close()


async def test_racing_writes_on_r3_lose_as_conflicts_not_errors(cluster: Cluster) -> None:
    """A clustered stream answers a compare-and-set that lost to a write still in flight
    with 10164 ("wrong last sequence", no number), a single server with 10071: every
    check but the omni identity's looked for 10071, so on R3 racing appends to one
    story failed with JsApiError 10164 (INTERNAL to a client), not as conflicts. And
    the first appends of fresh stores (each making the key bucket and its pepper at
    once) met the new bucket between leaders, "no responders", named "the key store
    ... is gone (deleted?): the keys it held ... are lost"."""
    from jetsource.core.envelope import NO_STREAM
    from jetsource.core.errors import ConcurrencyError
    from jetsource.domains.context.events import registry
    from jetsource.eventstore.jetstream import JetStreamEventStore
    from tests.eventstore_fixtures import created, decision, isolated_settings

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    cfg = isolated_settings(uuid.uuid4().hex[:8], replicas=3, position_cache_size=0)
    nc = await nats.connect(servers=cluster.url.split(","))
    try:
        stores = [JetStreamEventStore(nc, registry, cfg) for _ in range(8)]
        await stores[0].ensure_streams()
        for s in stores:
            await s.start()
        # Eight fresh stores (eight publishers) append at once: one pepper made, all stored.
        results = await asyncio.gather(
            *(s.append(f"a{i}", [created()], NO_STREAM) for i, s in enumerate(stores)),
            return_exceptions=True,
        )
        assert [r for r in results if isinstance(r, BaseException)] == []
        for _ in range(5):  # racing writers on one story: one wins, the others conflict
            head = len(await stores[0].read_aggregate("a0"))
            results = await asyncio.gather(
                *(s.append("a0", [decision(head + i)], head) for i, s in enumerate(stores)),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert all(isinstance(e, ConcurrencyError) for e in errors), errors
            assert len(errors) == len(stores) - 1
        versions = [e.version for e in await stores[0].read_aggregate("a0")]
        assert versions == list(range(1, 7))
    finally:
        await nc.close()


async def _lead_on(nc: NATS, cluster: Cluster, stream: str, node: int) -> None:
    """Move ``stream``'s leader to server ``node`` (a step-down naming it preferred)."""
    import json

    wanted = cluster.nodes[node].server_name
    started = time.monotonic()
    while await asyncio.to_thread(cluster.leader_of, stream) != node:
        assert time.monotonic() - started < 30.0, f"{stream} not led by {wanted}"
        request = {"placement": {"preferred": wanted}}
        await nc.request(
            f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", json.dumps(request).encode(), timeout=5
        )
        await asyncio.sleep(0.5)


@pytest.mark.parametrize("deadline_s", [10.0, 4.0])
async def test_first_write_after_quorum_loss_is_unavailable_naming_it(
    cluster: Cluster, deadline_s: float
) -> None:
    """The stream leader's two peers killed: the first command through the publisher
    (client deadline 10 s, the default 5 s request timeout) waited out the publish's
    acknowledgement (the leader holds the write until a quorum stores it), asked
    again, and was answered INTERNAL ("duplicate message id is in process", 10158) or
    DEADLINE_EXCEEDED naming nothing: the store's wait ended past the call's deadline,
    or the client sent the UNAVAILABLE again until the deadline passed. It is now
    UNAVAILABLE within the deadline naming the lost quorum (also with a deadline
    shorter than the request timeout, where the wait itself outlived the call); with
    the servers back, the same command (same idempotency key) is stored once. The
    next command during the loss was ABORTED "kept changing" (the write in flight
    taken for a conflict): UNAVAILABLE too.

    Under the 4 s deadline the acknowledgement's wait is cut by the deadline about
    4 s after the kill, before the leader's STREAM.INFO shows its replicas stale
    (``jsapi.STALE_PEER_S``): nothing says the quorum is lost yet, so the answer is
    DEADLINE_EXCEEDED naming the write in flight and the resend (it was UNAVAILABLE
    "lost quorum" for any acknowledgement the deadline cut, a healthy cluster's
    slow one too); never a bare DEADLINE_EXCEEDED."""
    import grpc

    from jetsource.client import ContextClient
    from jetsource.core.settings import NatsSettings
    from jetsource.publisher.server import build
    from jetsource.publisher.settings import PublisherOptions, PublisherSettings
    from tests.eventstore_fixtures import isolated_settings

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    unique = uuid.uuid4().hex[:8]
    settings = PublisherSettings(
        nats=NatsSettings(url=cluster.url),
        eventstore=isolated_settings(unique, replicas=3),
        publisher=PublisherOptions(grpc_port=0, metrics_port=0),
    )
    settings.snapshots.stream = f"CS_{unique}"
    settings.snapshots.subject_prefix = f"cs{unique}.snapshots"
    settings.snapshots.replicas = 3
    publisher = await build(settings)
    try:
        async with ContextClient(f"127.0.0.1:{publisher.port}", timeout=deadline_s) as client:
            await client.create_context("s", "before the loss")
            leader = await asyncio.to_thread(cluster.leader_of, settings.eventstore.stream)
            # The snapshots' leader on the same server: a command's state load reads
            # them (else its first read may be the one that finds no leader).
            await _lead_on(publisher.nc, cluster, settings.snapshots.stream, leader)
            down = [i for i in range(3) if i != leader]
            for i in down:
                cluster.kill(i)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.add_decision("s", "d1", "during the loss", idempotency_key="k1")
            took = time.monotonic() - started
            said = lost.value.details() or ""
            print(f"\n{took:.1f} s: {lost.value.code()} {said}")
            if deadline_s < settings.eventstore.request_timeout_s:
                _assert_named_cut_or_quorum(lost.value.code(), said)
            else:
                assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, (lost.value.code(), said)
                assert "quorum" in said and "deadline" not in said.lower(), said
            assert took < deadline_s, took
            # The next command of the story: refused for the write still in flight,
            # nothing stored since, it was a "conflict", reloaded and tried again until
            # ABORTED "kept changing: gave up after 20 retries".
            with pytest.raises(grpc.aio.AioRpcError) as lost:
                await client.add_subtask("s", "t1", "during the loss", idempotency_key="k2")
            said = lost.value.details() or ""
            print(f"then: {lost.value.code()} {said}")
            if deadline_s < settings.eventstore.request_timeout_s:
                _assert_named_cut_or_quorum(lost.value.code(), said)
            else:
                assert lost.value.code() == grpc.StatusCode.UNAVAILABLE, (lost.value.code(), said)
                assert "quorum" in said, said
            for i in down:
                await asyncio.to_thread(cluster.start, i)
            started = time.monotonic()
            while True:
                try:
                    done = await client.add_decision(
                        "s", "d1", "during the loss", idempotency_key="k1"
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    _assert_named_cut_or_quorum(exc.code(), exc.details() or "", quorum="")
                    assert time.monotonic() - started < 60.0, "not writable 60 s after quorum"
                    await asyncio.sleep(0.5)
            assert done.version == 2
            events = await publisher.store.read_aggregate("s")
            assert [e.event_type for e in events] == ["ContextCreated", "DecisionAdded"]
    finally:
        await publisher.stop(0)


def _assert_named_cut_or_quorum(code: object, said: str, quorum: str = "quorum") -> None:
    """UNAVAILABLE (naming ``quorum``), or DEADLINE_EXCEEDED naming what was in flight
    when the call's deadline cut it and the resend that finds a stored write: never a
    bare "deadline exceeded"."""
    import grpc

    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert said.startswith("deadline exceeded: ") and "the call's deadline" in said, said
        assert "idempotency key" in said and "quorum" not in said, said
        return
    assert code == grpc.StatusCode.UNAVAILABLE, (code, said)
    assert quorum in said, said


def test_projector_status_names_streams_without_a_leader(cluster: Cluster) -> None:
    """Two of three servers killed, `jetsource projector status` against the one left:
    while the stream leader kept there still answers (a leader cut off from its
    quorum: a stale report) it exited 0 saying nothing of the cluster, and later
    printed rows of "ServiceUnavailableError ... 10008" (exit 3) naming neither a
    stream nor the quorum. It now names every stream it reads (and the control
    bucket) that has no leader it can work with, and why, exit 3 (unavailable, as for
    NATS not answering), in text and JSON (``leaderless``)."""
    import json

    from tests.cli_env import cli_env, jetsource

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    unique = uuid.uuid4().hex[:8]
    env = cli_env(
        cluster.url,
        unique,
        JETSOURCE_EVENTSTORE__REPLICAS="3",
        JETSOURCE_SNAPSHOTS__REPLICAS="3",
        JETSOURCE_VALKEY__URL="redis://127.0.0.1:1",  # read only for models started
    )
    ensured = jetsource(env, "streams", "ensure", "--json", timeout=120)
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    healthy = jetsource(env, "projector", "status", "--json")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    stream = f"CE_{unique}"
    left = cluster.leader_of(stream)
    for i in range(3):
        if i != left:
            cluster.kill(i)
    env["JETSOURCE_NATS__URL"] = cluster.nodes[left].address()
    # Past jsapi.STALE_PEER_S: the leader left has not heard from its replicas since
    # (nats-server still calls them current for 10 s; the report would look whole).
    time.sleep(jsapi.STALE_PEER_S + 1.0)

    text = jetsource(env, "projector", "status")
    print(f"\n{text.returncode}: {text.stderr}")
    assert text.returncode == 3, text.stdout + text.stderr
    assert text.stderr.startswith("unavailable: "), text.stderr
    # The stream's own why, as its leadership was read (``jsapi.stream_leadership``):
    # "quorum" is in the fixed text around it whatever the why, so it proved nothing.
    why = _leaderless_why(text.stderr, stream)
    _assert_read_from_the_cluster(why, cluster, left)
    assert "JETSOURCE_NATS__URL" in text.stderr, text.stderr

    run = jetsource(env, "projector", "status", "--json")
    assert run.returncode == 3, run.stdout + run.stderr
    rows = json.loads(run.stdout)  # the report stays on stdout
    assert {r["stream"] for r in rows} >= {stream}
    error = json.loads(run.stderr.strip().splitlines()[-1])["error"]
    assert error["code"] == "unavailable" and error["exit_code"] == 3, error
    assert stream in error["leaderless"] and f"KV_RM_{unique}" in error["leaderless"], error
    _assert_read_from_the_cluster(_leaderless_why(error["message"], stream), cluster, left)


def _leaderless_why(said: str, stream: str) -> str:
    """What `projector status` says of ``stream`` in its "no leader that can serve them
    (<names>: <why>; ...)" (fails when it is not named there)."""
    assert "no leader that can serve them (" in said, said
    inner = said.split("no leader that can serve them (", 1)[1]
    inner = inner.rsplit("): the NATS cluster is electing", 1)[0]
    for part in inner.split("; "):
        names, _, why = part.partition(": ")
        if stream in names.split(", "):
            return why
    raise AssertionError(f"{stream} not named with a why: {said}")


def _assert_read_from_the_cluster(why: str, cluster: Cluster, left: int) -> None:
    """``why`` is what the stream's leadership says with two of three servers killed:
    the server left still leads it without its replicas (their names), it has no
    leader, there is no meta leader, or STREAM.INFO goes unanswered."""
    import re

    kept = cluster.nodes[left].server_name
    gone = {n.server_name for i, n in enumerate(cluster.nodes) if i != left}
    stale = re.fullmatch(r"its leader (\S+) lost quorum \(replicas (.+) not current\)", why)
    if stale is not None:
        assert stale[1] == kept and set(stale[2].split(", ")) == gone, (why, kept, gone)
        return
    assert why == "no leader" or re.fullmatch(
        r"no JetStream meta leader \(.+\)|STREAM\.INFO not answered within [\d.]+ s", why
    ), why


def test_projector_commands_tell_a_silent_jetstream_from_a_silent_nats(cluster: Cluster) -> None:
    """Two of three servers paused (hung: the one left keeps routes to them and its
    JetStream API answers nothing for minutes): `projector status` against the one left
    said "NATS at URL did not answer within 3 s" though NATS answered; it now says NATS
    answers and its JetStream API does not (a cluster electing a leader or that lost
    quorum), exit 3. NATS not there at all is still "did not answer"."""
    from jetsource.devstack.servers import free_port
    from tests.cli_env import cli_env, jetsource

    cluster.procs = [n.start() for n in cluster.nodes]
    for i, n in enumerate(cluster.nodes):
        n.wait_ready(cluster.procs[i], 60)
    cluster.wait_meta_leader()
    unique = uuid.uuid4().hex[:8]
    env = cli_env(
        cluster.nodes[0].address(),
        unique,
        JETSOURCE_EVENTSTORE__REPLICAS="3",
        JETSOURCE_SNAPSHOTS__REPLICAS="3",
        JETSOURCE_ADMIN_CONNECT_TIMEOUT_S="3",
    )
    ensured = jetsource(env, "streams", "ensure", "--json", timeout=120)
    assert ensured.returncode == 0, ensured.stdout + ensured.stderr
    for p in cluster.procs[1:]:
        os.kill(p.pid, signal.SIGSTOP)
    run = jetsource(env, "projector", "status")
    print(f"\n{run.returncode}: {run.stderr}")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "answers, but its JetStream API did not within 3 s" in run.stderr, run.stderr
    assert "quorum" in run.stderr, run.stderr

    env["JETSOURCE_NATS__URL"] = f"nats://127.0.0.1:{free_port()}"
    run = jetsource(env, "projector", "status")
    assert run.returncode == 3, run.stdout + run.stderr
    # A closed port is said as one since b27a500 (it was "did not answer within 3 s").
    assert "is not reachable" in run.stderr and "answers," not in run.stderr, run.stderr
