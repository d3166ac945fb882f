"""The messaging-ingest (omni) read models (``omni_events``: events, their processing
status, conversations, identity timelines; ``omni_identities``: identities, handles,
merges) under every server fault in turn while webhooks arrive (`make chaos`):
Valkey killed with SIGKILL and started on its data, Valkey emptied (FLUSHALL: the
models built again from the stream), the projector killed with SIGKILL, the ingest
killed with SIGKILL, nats-server killed with SIGKILL and started on its data
(``sync_interval: always``). omni writes nothing to the graph store (no graph fault).

WhatsApp (Cloud API and Evolution) and Discord (forwarder) webhooks go through the real
ingest (a process) into JetStream, each retried until it is answered 200, as providers
do; some events get processing steps over REST; before each fault an admin creates an
identity and links a handle to it (moving it from its first contact's identity) and
merges one first-contact identity into another. The projector runs as its own process.

After each fault, the seconds from the server back until every model's consumer has
acknowledged the stream's head as read then are measured and bounded (``CONVERGE_S``).
At the end: each webhook's events are stored once; each model applied every event of
its types once (applied == their count in the stream), no dead letter was filed; the
events model holds exactly the events sent with the processing state each was given;
every handle has one owner, the one the first contacts, links and merges made, held by
that live identity alone and the same in the handle bucket; and each model rebuilt
from the stream side by side equals the live one (digest). Prints one line of numbers;
measured over 13 runs (480 webhooks, 537 events, 1,017 stream messages; seconds to the
head after the server was back): valkey kill -9 (down 3 s) 0.1-0.3, valkey wiped
0.4-1.7, valkey wiped with the projector down 1.5-5.8 (an idle model finds its store
emptied within MARK_CHECK_S), projector kill -9 5.0-5.2 (the batch the killed one held
comes back after ack_wait_s, 5 s here), ingest kill -9 0.0-0.4 (away 1-8 s: its
restart), nats kill -9 1.9-5.0. One run in twelve found a webhook answered 500 with
NATS killed (a write to the dead socket raised RuntimeError); kept for the reconnect
since (test_a_write_to_a_socket_that_died_unnoticed_is_kept_for_the_reconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource.devstack.servers import free_port
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.events import EVENT_TYPES, IDENTITY_TYPES, first_contact_identity
from jetsource.domains.omni.events import handle_name as handle_of
from jetsource.domains.omni.identity import IdentityService
from jetsource.domains.omni.models import OMNI_EVENTS, OMNI_IDENTITIES
from jetsource.eventstore import jsapi
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.projection import admin
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.runtime import BORN_METADATA
from tests.chaos.harness import (
    Projector,
    converged,
    kill9,
    seconds_to,
    start_synced_nats,
    stream_head,
    strike,
    wipe_valkey,
)
from tests.infra import start_valkey
from tests.integration.omni.harness import IngressProcess, headers_for, omni_settings, route
from tests.integration.omni.test_model_based import (
    BOT_INSTANCE,
    CHANNELS,
    CLOUD,
    Hook,
    cloud_messages,
    discord_message,
    evo_message,
)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]
MODELS = [OMNI_EVENTS, OMNI_IDENTITIES]
CONVERGE_S = 15.0  # after a fault ends, every model at the head it saw within this
ACK_WAIT_S = 5.0
HOOKS = 480
CLIENTS = 6
TS = 1_796_047_200


@dataclass
class Plan:
    hooks: list[Hook]
    phones: list[str]  # the WhatsApp senders, in the order first met
    users: list[str]  # the Discord ones


def plan(rng: random.Random) -> Plan:
    """Webhooks of every kind the ingest takes here: the first 40 meet 12 phones and 8
    Discord users; after them every tenth comes from a sender never met (a first
    contact in every share, so during every fault)."""
    out = Plan([], [f"49151{i:08d}" for i in range(12)], [f"8035111{i:04d}" for i in range(8)])

    def sender(handles: list[str], i: int, first: int, new: str) -> str:
        if i < 40:
            return handles[(i // 4 + first) % len(handles)]
        if i % 10 == 0:
            handles.append(new)
            return new
        return rng.choice(handles)

    for i in range(HOOKS):
        kind = i % 4 if i < 40 else rng.randrange(4)
        ts = TS + i
        if kind == 0:  # Cloud: one or two inbound texts
            phone = sender(out.phones, i, 0, f"49160{i:08d}")
            msgs = [
                {
                    "from": phone if k == 0 else rng.choice(out.phones),
                    "id": f"wamid.cv9{i:05d}{k}",
                    "ts": ts,
                    "text": f"hello {i}.{k}",
                    "name": f"P{i % 7}",
                }
                for k in range(1 if i < 40 else rng.randint(1, 2))
            ]
            out.hooks.append(cloud_messages(msgs))
        elif kind == 1:  # Evolution: inbound or sent by the business
            phone = sender(out.phones, i, 4, f"49160{i:08d}")
            sent = i >= 40 and rng.random() < 0.3
            out.hooks.append(
                evo_message(phone, f"3EB0CV9{i:06d}", f"E{i % 5}", f"evo {i}", ts, sent)
            )
        else:  # Discord: a guild message or a DM
            user = sender(out.users, i, 0, f"9035111{i:04d}")
            channel = rng.choice(CHANNELS)
            hook = discord_message(
                user, f"D{i % 3}", channel, f"12{i:016d}", f"d {i}", ts, kind == 3, i + 1
            )
            out.hooks.append(hook)
    return out


async def test_every_server_fault_converges_the_omni_models_exactly(tmp_path: Path) -> None:
    nats_srv = start_synced_nats(tmp_path / "nats")
    valkey = start_valkey(tmp_path)
    if valkey.embedded is None:
        pytest.skip("restarts its own embedded servers")
    settings = omni_settings(nats_srv.url, valkey.url, "cv9")
    settings = settings.model_copy(
        update={
            "eventstore": settings.eventstore.model_copy(update={"retry_attempts": 3}),
            "projector": settings.projector.model_copy(
                update={"models": MODELS, "http_port": free_port(), "ack_wait_s": ACK_WAIT_S}
            ),
        }
    )
    ingress = IngressProcess(settings, tmp_path / "ingest")
    ingress.start()
    domain = omni_domain(settings.omni)
    p: Projection = await open_projection(settings, domains=DomainRegistry([domain]))
    env = dict(ingress.env)
    env["JETSOURCE_LOG_LEVEL"] = "WARNING"
    env["JETSOURCE_LOG_JSON"] = "false"
    projector = Projector(env, tmp_path / "projector.log")
    store = p.stores[next(iter(p.stores))]

    rng = random.Random(9)
    pl = plan(rng)
    hooks = pl.hooks
    sent: dict[str, str] = {}  # event id -> its processing state at the end
    refused: Counter[int] = Counter()  # answers other than 200 (retried)
    done = 0
    cursor = 0
    allowed = 0  # the webhooks sent so far: a share per fault

    async def admin_service() -> tuple[IdentityService, Any]:
        nc = await nats.connect(nats_srv.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        s = JetStreamEventStore(nc, domain.registry, domain.eventstore(settings))
        service = IdentityService(nc, s, settings.omni)
        await service.start()
        return service, nc

    async def post(http: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
        """Until answered (a provider's and a worker's retries): 503 or no connection."""
        while True:
            try:
                r = await http.post(path, **kw)
                if r.status_code != 503:
                    return r
                refused[r.status_code] += 1
            except httpx.TransportError:
                refused[0] += 1
            await asyncio.sleep(0.1)

    async def client(k: int) -> None:
        nonlocal done, cursor
        async with httpx.AsyncClient(base_url=ingress.url, timeout=10) as http:
            while cursor < len(hooks):
                if cursor >= allowed:  # the next share waits for its fault
                    await asyncio.sleep(0.02)
                    continue
                i, cursor = cursor, cursor + 1
                hook = hooks[i]
                r = await post(
                    http,
                    route(hook.instance),
                    content=hook.body,
                    headers=headers_for(hook.instance, hook.body),
                )
                assert r.status_code == 200, (hook, r.status_code, r.text)
                target = hook.events[0].id
                for e in hook.events:
                    sent[e.id] = "received"
                if i % 3 == 0:  # a worker processes it: started, then completed
                    for step in ("processing", "completed"):
                        body = {"state": step, "worker": f"w{k}", "attempt": 1}
                        r = await post(http, f"/api/v1/events/{target}/status", json=body)
                        # a retry of the step recorded last is answered as it was
                        assert r.status_code == 200, (target, body, r.text)
                    sent[target] = "completed"
                done += 1
                await asyncio.sleep(0.01)  # spread the webhooks over the faults

    async def head() -> int:
        return await stream_head(p, "omni")

    async def state(name: str) -> tuple[bool, bool, Any]:
        """(the consumer has acknowledged all it was given, nothing pending, what was
        seen); False unless the consumer was built into the store as it is now (its
        birth mark), so an emptied store counts until it is built again."""
        model = p.model(name, 1)
        info = await jsapi.consumer_info(
            store._replies, store.settings.stream, p.spec(name, 1).durable, 5.0
        )
        mark = await model.birth_mark()  # type: ignore[attr-defined]
        if info is None or mark is None:
            return False, False, (info is None, mark)
        born = ((info.get("config") or {}).get("metadata") or {}).get(BORN_METADATA)
        floor = int((info.get("ack_floor") or {}).get("stream_seq") or 0)
        lag = int(info["num_pending"]) + int(info["num_ack_pending"])
        return born == mark, lag == 0, (floor, lag)

    async def at_head(name: str, started: float, exact: bool) -> float:
        """Seconds from ``started`` (the server back) until every model's consumer has
        acknowledged the stream's head as read now (or has nothing left; ``exact``:
        nothing left, once the writes are done)."""

        async def there(last: int) -> tuple[bool, Any]:
            ok = True
            seen = []
            for m in MODELS:
                born, idle, info = await state(m)
                seen.append(info)
                floor = info[0] if born else 0
                ok = ok and born and (idle or (not exact and floor >= last))
            return ok, seen

        return await seconds_to(name, started, await head(), there, CONVERGE_S * 2, projector)

    def restart_ingest() -> None:
        ingress.kill(signal.SIGKILL)
        ingress.start()

    async def wipe_valkey_projector_down() -> None:
        await asyncio.to_thread(projector.kill9)
        await wipe_valkey(valkey.url)
        projector.start()

    linking: list[asyncio.Task[None]] = []

    async def kill9_nats() -> None:
        """With an admin's link on its way: retried until it is answered."""
        linking.append(asyncio.create_task(link_until_answered(pl.users[6])))
        await asyncio.sleep(0)
        await asyncio.to_thread(kill9, nats_srv)

    faults: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("valkey kill -9, down 3 s", lambda: asyncio.to_thread(kill9, valkey, 3.0)),
        ("valkey wiped", lambda: wipe_valkey(valkey.url)),
        ("valkey wiped, projector down", wipe_valkey_projector_down),
        ("projector kill -9", lambda: asyncio.to_thread(projector.restart)),
        ("ingest kill -9", lambda: asyncio.to_thread(restart_ingest)),
        ("nats kill -9", kill9_nats),
    ]
    # Who must hold each handle: its first contact's identity, moved by the links and
    # merges below (disjoint handles: no chains).
    owner: dict[str, str] = {}
    for phone in pl.phones:
        owner[handle_of("whatsapp", phone)] = first_contact_identity("whatsapp", phone)
    for user in pl.users:
        owner[handle_of("discord", user)] = first_contact_identity("discord", user)
    merged: set[str] = set()
    ids, admin_nc = await admin_service()

    async def identity_ops(k: int) -> None:
        """An identity created with a handle linked from its first contact's, and one
        first contact's identity merged into another's."""
        moved, into, gone = pl.phones[k], pl.phones[6 + k], pl.users[k]
        fresh = await ids.create(f"agent {k}", actor="chaos")
        await ids.link(fresh, "whatsapp", moved, actor="chaos", instance=CLOUD)
        owner[handle_of("whatsapp", moved)] = fresh
        survivor = first_contact_identity("whatsapp", into)
        victim = first_contact_identity("discord", gone)
        await ids.merge(survivor, victim, actor="chaos", reason="same person")
        owner[handle_of("discord", gone)] = survivor
        merged.add(victim)

    async def link_until_answered(user: str) -> None:
        """An identity created and a handle linked to it, as the CLI's caller does:
        again until answered (a create retried makes another identity, with no
        handle; a link retried is finished, not written twice)."""
        fresh = ""
        until = time.monotonic() + CONVERGE_S * 2
        while True:
            try:
                fresh = fresh or await ids.create("agent nats", actor="chaos")
                await ids.link(fresh, "discord", user, actor="chaos", instance=BOT_INSTANCE)
                owner[handle_of("discord", user)] = fresh
                return
            except Exception:
                if time.monotonic() > until:
                    raise
                await asyncio.sleep(0.2)

    took: dict[str, float] = {}
    down: dict[str, float] = {}  # how long each fault took (the server away)
    clients: list[asyncio.Task[None]] = []

    async def pause(seconds: float) -> None:
        """A wait for the clients: one that failed (a webhook or a step not answered
        200) fails the test at once with its error, which the loops waiting for them
        left to pytest's timeout (240 s), its text lost."""
        for task in clients:
            failed = task.exception() if task.done() and not task.cancelled() else None
            if failed is not None:
                raise failed
        await asyncio.sleep(seconds)

    try:
        # A tenth first, projected and on disk (Valkey's append-only file is synced every
        # second): the models' stores hold something their faults can lose.
        first = allowed = 48
        share = (HOOKS - first) // len(faults)
        clients.extend(asyncio.create_task(client(k)) for k in range(CLIENTS))
        while done < first:
            await pause(0.05)
        took["start"] = await at_head("start", time.monotonic(), exact=True)
        await asyncio.sleep(1.5)
        for k, (name, fault) in enumerate(faults):
            await identity_ops(k)
            # Mid-load: a share of webhooks, the fault striking when a third of it is
            # answered (the rest in flight or waiting), the models behind the stream.
            allowed = HOOKS if k == len(faults) - 1 else first + share * (k + 1)
            while done < allowed - share * 2 // 3:
                await pause(0.01)
            behind = time.monotonic() + 5.0
            while time.monotonic() < behind:
                with contextlib.suppress(Exception):
                    if not all([(await state(m))[1] for m in MODELS]):
                        break
                await pause(0.01)
            back, down[name] = await strike(fault)
            took[name] = await at_head(name, back, exact=False)
        await asyncio.gather(*clients)
        await asyncio.gather(*linking)
        took["end"] = await at_head("end", time.monotonic(), exact=True)

        # -- the stream: each webhook's events once ---------------------------------
        counts: Counter[str] = Counter()
        types: Counter[str] = Counter()
        async for r in p.domain_store("omni").read_all():
            types[r.event_type] += 1
            if isinstance(r.event, NormalizedEvent):
                counts[r.aggregate_id] += 1
        assert set(counts) == set(sent), "an answered webhook's event missing, or one never sent"
        assert not {k: n for k, n in counts.items() if n != 1}
        # -- each event applied once, none filed ------------------------------------
        want = {
            OMNI_EVENTS: sum(n for t, n in types.items() if t in EVENT_TYPES),
            OMNI_IDENTITIES: sum(n for t, n in types.items() if t in IDENTITY_TYPES),
        }
        applied = {m: (await p.model(m, 1).checkpoint()).applied for m in MODELS}
        assert applied == want, (applied, want, types)
        letters = await admin.dlq_list(p)
        assert not letters, letters  # a fault is no event's fault: none filed
        # -- the events model: exactly the events sent, each with its state ---------
        r = p.model(OMNI_EVENTS, 1).redis  # type: ignore[attr-defined]
        ns = p.model(OMNI_EVENTS, 1).ns  # type: ignore[attr-defined]
        rows = {
            key.decode().rpartition(":e:")[2]
            async for key in r.scan_iter(match=f"{ns}:e:*", count=1000)
        }
        assert rows == set(sent)
        assert await r.zcard(f"{ns}:r:all") == len(sent)
        for eid, st in sent.items():
            assert (await r.hget(f"{ns}:e:{eid}", "st")).decode() == st, eid
        # -- identities: one owner per handle, the one expected, as in the bucket ---
        ins = p.model(OMNI_IDENTITIES, 1).ns  # type: ignore[attr-defined]
        index = {k.decode(): v.decode() for k, v in (await r.hgetall(f"{ins}:h")).items()}
        held: Counter[str] = Counter()
        holder: dict[str, str] = {}
        async for key in r.scan_iter(match=f"{ins}:i:*:h", count=1000):
            identity = key.decode()[len(ins) + 3 : -2]
            for handle in await r.hkeys(key):
                held[handle.decode()] += 1
                holder[handle.decode()] = identity
        assert not {h: n for h, n in held.items() if n != 1}, "a handle held twice"
        assert holder == index, "the handle index and the identities' handles disagree"
        for handle, identity in owner.items():
            assert index.get(handle) == identity, (handle, index.get(handle), identity)
        for identity in set(index.values()):
            assert not await r.hexists(f"{ins}:i:{identity}", "into"), identity
        for identity in merged:
            assert await r.hexists(f"{ins}:i:{identity}", "into"), identity
        fresh_ids, fresh_nc = await admin_service()  # the bucket, with no cache
        try:
            for handle, identity in index.items():
                provider, _, external = handle.partition(":")
                assert await fresh_ids.lookup(provider, external) == identity, handle
        finally:
            await fresh_ids.close()
            await fresh_nc.close()
        # -- each model as a rebuild from the stream makes it ------------------------
        projector.stop()
        for name in MODELS:
            report = await admin.rebuild(p, name, 2)
            assert report.applied == want[name], (name, report)
            v1, v2 = await p.model(name, 1).digest(), await p.model(name, 2).digest()
            assert v1 == v2, f"{name}: the live model differs from its rebuild"
    finally:
        for task in clients:  # the others, when one failed
            task.cancel()
        with contextlib.suppress(Exception):
            await ids.close()
        with contextlib.suppress(Exception):
            await admin_nc.close()
        projector.stop()
        ingress.stop()
        for name in MODELS:
            for version in (1, 2):
                with contextlib.suppress(Exception):
                    await p.model(name, version).drop()
        with contextlib.suppress(Exception):
            await p.close()
        for s in (valkey, nats_srv):
            s.stop()
    converged(
        f"omni models: {len(hooks)} webhooks, {len(sent)} events, {sum(types.values())} "
        f"stream messages, retried {dict(refused)}",
        took,
        down,
        CONVERGE_S,
    )
