"""Omni identities as a differential check across processes (`make chaos`): two
`jetsource-ingest` processes take webhooks from WhatsApp Cloud, Evolution and Discord at
once, an admin creates, links and merges identities, one ingress is killed (-9) and
restarted, the projector is stopped and started again, and at the end every accepted
request is replayed from the raw archive to both. A plain model of what docs/omni.md
promises (a first contact creates one identity per handle, however many ingresses meet
it at once; a link moves a handle from then on; a merge moves the merged identity's
handles to the survivor and its timeline along; a re-delivery stores nothing) is compared
with every gRPC read of both ingresses: FindIdentity of every handle, GetIdentity of
every identity (handles, merged_into, merged_from, created_by), timelines, conversations,
recent events and ListIdentities (each filter, merged or not), all paged with small
random page sizes (no page skips or repeats an entry).

The second test runs links and merges from two admin services (some cancelled midway, as
a crash between an append and the handles bucket) concurrently with the webhooks and a
kill -9, and checks what must hold whatever the interleaving: the bucket, both ingresses'
resolves of new webhooks and FindIdentity agree on a live identity for every handle, and
each webhook is stored once.

Seeded (the seed is in the failure). Over 10 s: chaos only."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from jetsource._gen.omni.v1 import query_pb2 as pb
from jetsource._gen.omni.v1 import query_pb2_grpc
from jetsource.core.errors import ConcurrencyError, ValidationError
from jetsource.domains.omni.descriptor import omni_domain
from jetsource.domains.omni.events import first_contact_identity, handle_name
from jetsource.domains.omni.identity import IdentityService
from jetsource.ingest.server import Ingest, build
from jetsource.ingest.settings import IngestSettings
from jetsource.projection.bootstrap import Projection, open_projection
from jetsource.projection.domain import DomainRegistry
from jetsource.projection.host import ProjectorService
from tests.infra import Server
from tests.integration.omni import test_model_based as mb
from tests.integration.omni.harness import (
    IngressProcess,
    caught_up,
    headers_for,
    omni_settings,
    route,
)

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

Handle = tuple[str, str]


@contextlib.asynccontextmanager
async def stack(
    nats_server: Server, valkey_server: Server, unique: str, home: Path
) -> AsyncIterator[tuple[IngestSettings, list[IngressProcess], Ingest, Projection, Any]]:
    """Two ingress processes, an admin (an in-process ingress: its identity service,
    as the CLI has one) and the omni projector, restartable (``restart()``)."""
    s = omni_settings(nats_server.url, valkey_server.url, unique)
    s = s.model_copy(update={"omni": s.omni.model_copy(update={"identity_settle_delay_s": 0.2})})
    ingresses = [IngressProcess(s, home / name) for name in ("a", "b")]
    for ingress in ingresses:
        await asyncio.to_thread(ingress.start)
    admin = await build(s)
    projection = await open_projection(s, domains=DomainRegistry([omni_domain(s.omni)]))
    running: dict[str, Any] = {}

    def start() -> None:
        running["stop"] = asyncio.Event()
        running["task"] = asyncio.create_task(ProjectorService(projection).run(running["stop"]))

    async def restart() -> None:
        running["stop"].set()
        await running["task"]
        start()

    start()
    try:
        yield s, ingresses, admin, projection, restart
    finally:
        running["stop"].set()
        await running["task"]
        for name in projection.model_names():
            await projection.model(name, 1).drop()
        await projection.close()
        await admin.stop(0)
        for ingress in ingresses:
            ingress.stop()


class Model:
    """Who is who, as the docs promise it."""

    def __init__(self) -> None:
        self.owner: dict[Handle, str] = {}
        self.identities: dict[str, dict[str, Any]] = {}
        # event id -> (sender identity, recipient identity, (provider, instance, conversation))
        self.events: dict[str, tuple[str, str, tuple[str, str, str]]] = {}

    def touch(self, provider: str, external_id: str) -> str:
        h = (provider, external_id)
        if h not in self.owner:
            identity = first_contact_identity(provider, external_id)
            self.owner[h] = identity
            self.identities.setdefault(identity, {"by": "first_contact", "into": "", "from": set()})
        return self.owner[h]

    def expect(self, hook: mb.Hook) -> None:
        for e in hook.events:
            if e.id in self.events:
                continue
            sender = self.touch(e.provider, e.sender) if e.sender else ""
            recipient = self.touch(e.provider, e.recipient) if e.recipient else ""
            self.events[e.id] = (sender, recipient, (e.provider, hook.instance, e.conversation))

    def handles(self, identity: str) -> list[str]:
        return sorted(handle_name(*h) for h, o in self.owner.items() if o == identity)

    def providers(self, identity: str) -> set[str]:
        return {h[0] for h, o in self.owner.items() if o == identity}

    def merged_from(self, identity: str) -> set[str]:
        out: set[str] = set()
        todo = [identity]
        while todo:
            for merged in self.identities[todo.pop()]["from"]:
                if merged not in out:
                    out.add(merged)
                    todo.append(merged)
        return out


async def paged(method: Any, request: Any, field: str) -> list[Any]:
    """Every page of a list read (``request``'s page_token set from each answer)."""
    out: list[Any] = []
    for _ in range(1000):
        page = await method(request)
        out += list(getattr(page, field))
        request.page_token = page.next_page_token
        if not request.page_token:
            return out
    raise AssertionError("the paging never ended")


async def compare(
    model: Model, ingresses: list[IngressProcess], projection: Projection, rnd: random.Random
) -> list[str]:
    """Every read of both ingresses against the model: the differences found."""
    await caught_up(projection)
    wrong: list[str] = []
    for ingress in ingresses:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingress.grpc_port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)
            wrong += await compare_reads(stub, ingress.home.name, model, rnd)
    return wrong


async def compare_reads(stub: Any, at: str, model: Model, rnd: random.Random) -> list[str]:
    wrong: list[str] = []
    for h, owner in model.owner.items():
        found = await stub.FindIdentity(pb.FindIdentityRequest(provider=h[0], external_id=h[1]))
        if found.identity.identity_id != owner:
            wrong.append(f"{at}: {h} is {found.identity.identity_id}, not {owner}")
    for identity, want in model.identities.items():
        view = (await stub.GetIdentity(pb.GetIdentityRequest(identity_id=identity))).identity
        got = (
            sorted(f"{x.provider}:{x.external_id}" for x in view.handles),
            view.merged_into,
            sorted(view.merged_from),
            view.created_by,
        )
        expected = (
            model.handles(identity),
            want["into"],
            sorted(want["from"]),
            want["by"],
        )
        if got != expected:
            wrong.append(f"{at}: identity {identity} reads {got}, not {expected}")
        mine = {identity} | model.merged_from(identity)
        timeline_want = {e for e, (s, r, _) in model.events.items() if s in mine or r in mine}
        size = rnd.choice([1, 2, 3, 7])
        timeline = await paged(
            stub.GetIdentityTimeline,
            pb.GetIdentityTimelineRequest(identity_id=identity, page_size=size),
            "events",
        )
        ids = [e.event.id for e in timeline]
        seqs = [e.stream_seq for e in timeline]
        if len(ids) != len(set(ids)) or set(ids) != timeline_want:
            wrong.append(
                f"{at}: timeline of {identity} (pages of {size}) has {len(ids)} "
                f"({len(set(ids))} distinct), not {len(timeline_want)}"
            )
        if seqs != sorted(seqs, reverse=True):
            wrong.append(f"{at}: timeline of {identity} not newest first")
    for provider in ("", "whatsapp", "discord"):
        for merged in (False, True):
            size = rnd.choice([1, 2, 3, 5])
            listed = await paged(
                stub.ListIdentities,
                pb.ListIdentitiesRequest(provider=provider, include_merged=merged, page_size=size),
                "identities",
            )
            ids = [x.identity_id for x in listed]
            holding = {
                i
                for i, d in model.identities.items()
                if not d["into"] and (not provider or provider in model.providers(i))
            }
            if not provider and merged:
                holding = set(model.identities)  # every identity, merged ones too
            shown = {i for i in ids if (merged and not provider) or not model.identities[i]["into"]}
            if len(ids) != len(set(ids)) or shown != holding:
                wrong.append(
                    f"{at}: identities {provider!r} merged={merged} (pages of {size}): "
                    f"missing {sorted(holding - shown)}, extra {sorted(shown - holding)}, "
                    f"{len(ids) - len(set(ids))} repeated"
                )
            if not merged and len(ids) != len(shown):
                wrong.append(f"{at}: identities {provider!r} lists merged ones")
    conversations: dict[tuple[str, str, str], set[str]] = {}
    for e, (_, _, c) in model.events.items():
        conversations.setdefault(c, set()).add(e)
    for (provider, instance, cid), want_ids in conversations.items():
        size = rnd.choice([1, 2, 4, 9])
        events = await paged(
            stub.GetConversation,
            pb.GetConversationRequest(
                provider=provider, instance=instance, conversation_id=cid, page_size=size
            ),
            "events",
        )
        ids = [e.event.id for e in events]
        if len(ids) != len(set(ids)) or set(ids) != want_ids:
            wrong.append(f"{at}: conversation {cid} has {len(ids)}, not {len(want_ids)}")
    recent = await paged(stub.ListRecentEvents, pb.ListRecentEventsRequest(page_size=13), "events")
    ids = [e.event.id for e in recent]
    if len(ids) != len(set(ids)) or set(ids) != set(model.events):
        wrong.append(f"{at}: recent events {len(ids)}, not {len(model.events)}")
    return wrong


class Webhooks:
    """Webhooks of a pool of people over the three formats; sent with retries (a
    provider retries a 503 or a connection refused while an ingress restarts)."""

    def __init__(self, rnd: random.Random, seed: int) -> None:
        self.rnd, self.seed, self.n = rnd, seed, 0
        self.http = httpx.AsyncClient(timeout=30)
        self.accepted: list[str] = []  # raw ids

    def hook(self, provider: str, external_id: str, instance: str = "") -> mb.Hook:
        self.n += 1
        n, rnd, ts = self.n, self.rnd, 1796040000 + self.n
        if provider == "discord":
            return mb.discord_message(
                external_id, rnd.choice(["Kaz", "", "Bea"]), rnd.choice(mb.CHANNELS),
                str(1300000000000000000 + self.seed * 10**6 + n), f"t{n}", ts,
                rnd.random() < 0.3, n,
            )  # fmt: skip
        instance = instance or rnd.choice([mb.CLOUD, mb.EVO])
        if instance == mb.CLOUD:
            return mb.cloud_messages(
                [{"from": external_id, "id": f"wamid.D{self.seed}x{n}", "ts": ts, "text": f"t{n}",
                  "name": rnd.choice(["Ana", "Bo"])}]
            )  # fmt: skip
        return mb.evo_message(
            external_id, f"3EB0D{self.seed}X{n:06d}", rnd.choice(["Ana", ""]), f"t{n}", ts,
            rnd.random() < 0.2,
        )  # fmt: skip

    async def send(
        self, ingresses: list[IngressProcess], instance: str, body: bytes, first: int
    ) -> dict[str, Any]:
        for attempt in range(100):
            ingress = ingresses[(first + attempt) % len(ingresses)]
            with contextlib.suppress(httpx.HTTPError):
                r = await self.http.post(
                    ingress.url + route(instance), content=body, headers=headers_for(instance, body)
                )
                if r.status_code == 200:
                    doc: dict[str, Any] = r.json()
                    self.accepted.append(doc["raw_id"])
                    return doc
                assert r.status_code == 503, (r.status_code, r.text)
            await asyncio.sleep(0.1)
        raise AssertionError("a webhook was never answered 200")


@pytest.mark.parametrize("seed", [5, 29])
async def test_identities_and_reads_match_the_model_across_processes(
    nats_server: Server, valkey_server: Server, unique: str, tmp_path: Path, seed: int
) -> None:
    rnd = random.Random(seed)
    people: list[Handle] = [("whatsapp", f"491510{seed:03d}000{i}") for i in range(5)]
    people += [("discord", str(80351110224600000 + seed * 100 + i)) for i in range(3)]
    model = Model()
    log: list[str] = []
    async with stack(nats_server, valkey_server, unique, tmp_path) as (
        _, ingresses, admin, projection, restart_projector,
    ):  # fmt: skip
        ids: IdentityService = admin.identities
        web = Webhooks(rnd, seed)

        async def deliver(hooks: list[mb.Hook]) -> None:
            for hook in hooks:
                model.expect(hook)
            await asyncio.gather(
                *(web.send(ingresses, h.instance, h.body, rnd.randrange(2)) for h in hooks)
            )

        try:
            for step in range(50):
                kind = rnd.choices(
                    ["one", "burst", "first", "again", "create", "link", "merge", "kill",
                     "projector", "check"],
                    [18, 8, 6, 5, 4, 7, 5, 2, 2, 4],
                )[0]  # fmt: skip
                # each seed replays from the archive and restarts both kinds of process
                kind = {12: "again", 17: "kill", 29: "projector", 38: "kill"}.get(step, kind)
                log.append(kind)
                if kind == "one":
                    await deliver([web.hook(*rnd.choice(people))])
                elif kind == "burst":
                    await deliver([web.hook(*rnd.choice(people)) for _ in range(8)])
                elif kind == "first":
                    # a new person met by both ingresses at the same moment, in two formats
                    if rnd.random() < 0.6:
                        h: Handle = ("whatsapp", f"49160{seed:03d}{step:05d}")
                        hooks = [web.hook(*h, mb.CLOUD), web.hook(*h, mb.EVO)]
                    else:
                        h = ("discord", str(1400000000000000000 + seed * 1000 + step))
                        hooks = [web.hook(*h), web.hook(*h)]
                    people.append(h)
                    for hook in hooks:
                        model.expect(hook)
                    answers = await asyncio.gather(
                        *(web.send(ingresses, k.instance, k.body, i) for i, k in enumerate(hooks))
                    )
                    assert all(e["stored"] for a in answers for e in a["events"]), answers
                elif kind == "again" and web.accepted:
                    raw = await admin.reads.raw_payload(rnd.choice(web.accepted))
                    assert raw is not None
                    answers = await asyncio.gather(
                        *(web.send(ingresses, raw.instance, raw.body, i) for i in (0, 1))
                    )
                    assert not any(e["stored"] for a in answers for e in a["events"]), answers
                elif kind == "create":
                    identity = await ids.create(rnd.choice(["Op", ""]), "probe")
                    model.identities[identity] = {"by": "admin:probe", "into": "", "from": set()}
                elif kind == "link":
                    target = rnd.choice(sorted(model.identities))
                    h = rnd.choice(people)
                    merged = bool(model.identities[target]["into"])
                    try:
                        previous = await ids.link(target, *h, actor="probe")
                    except ValidationError as exc:
                        assert merged and exc.field == "identity_id", exc
                    else:
                        assert not merged, f"a link to {target}, merged, was taken"
                        assert previous == model.owner.get(h, ""), (previous, h)
                        model.owner[h] = target
                elif kind == "merge" and len(model.identities) > 1:
                    survivor, merged_id = rnd.sample(sorted(model.identities), 2)
                    either = (
                        model.identities[survivor]["into"] or model.identities[merged_id]["into"]
                    )
                    try:
                        await ids.merge(survivor, merged_id, "probe", "same person")
                    except ValidationError as exc:
                        assert either and exc.field in ("survivor_id", "merged_id"), exc
                    else:
                        assert not either, f"a merge of a merged identity was taken: {log}"
                        for h, owner in model.owner.items():
                            if owner == merged_id:
                                model.owner[h] = survivor
                        model.identities[merged_id]["into"] = survivor
                        model.identities[survivor]["from"].add(merged_id)
                elif kind == "kill":
                    victim = rnd.choice(ingresses)

                    async def kill(victim: IngressProcess = victim) -> None:
                        await asyncio.sleep(rnd.random() * 0.2)
                        await asyncio.to_thread(victim.kill)
                        await asyncio.to_thread(victim.start)

                    hooks = [web.hook(*rnd.choice(people)) for _ in range(6)]
                    await asyncio.gather(deliver(hooks), kill())
                elif kind == "projector":
                    hooks = [web.hook(*rnd.choice(people)) for _ in range(6)]
                    await asyncio.gather(deliver(hooks), restart_projector())
                if kind == "check":
                    await asyncio.sleep(0.3)
                    assert not (wrong := await compare(model, ingresses, projection, rnd)), wrong
            # Every accepted request again, from the raw archive, to both ingresses at once:
            # nothing is stored, nobody changes.
            replayed = [await admin.reads.raw_payload(r) for r in web.accepted]
            answers = await asyncio.gather(
                *(
                    web.send(ingresses, raw.instance, raw.body, i % 2)
                    for i, raw in enumerate(replayed)
                    if raw is not None
                )
            )
            assert len(answers) == len(replayed)
            assert not any(e["stored"] for a in answers for e in a["events"])
            await asyncio.sleep(0.3)
            assert not (wrong := await compare(model, ingresses, projection, rnd)), wrong
        except BaseException as exc:
            raise AssertionError(f"seed {seed}, steps {log}: {exc}") from exc
        finally:
            await web.http.aclose()
    print(f"seed {seed}: {sorted(Counter(log).items())}")
    assert {"first", "again", "link", "merge", "kill", "projector"} <= set(log), log


async def admin_work(
    services: list[IdentityService], people: list[Handle], created: list[str], rnd: random.Random
) -> None:
    """Creates, links and merges from two admin services, some cancelled midway (a crash
    between an append and the handles bucket)."""
    for _ in range(6):
        ids = rnd.choice(services)
        if len(created) < 2 or rnd.random() < 0.2:
            created.append(await ids.create("Op", "probe"))
            continue
        known = [i for i in [await ids.lookup(*h) for h in rnd.sample(people, 3)] if i]
        call: Awaitable[Any]
        if rnd.random() < 0.5:
            call = ids.link(rnd.choice(created + known), *rnd.choice(people), actor="probe")
        else:
            survivor, merged = rnd.sample(sorted({*created, *known}), 2)
            call = ids.merge(survivor, merged, "probe", "same person")
        task = asyncio.ensure_future(call)
        if rnd.random() < 0.2:
            await asyncio.sleep(rnd.random() * 0.01)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ValidationError, ConcurrencyError):
            await task


@pytest.mark.parametrize("seed", [3])
async def test_concurrent_links_merges_and_webhooks_leave_one_owner_everywhere(
    nats_server: Server, valkey_server: Server, unique: str, tmp_path: Path, seed: int
) -> None:
    rnd = random.Random(seed)
    people: list[Handle] = [("whatsapp", f"491700{seed:02d}0000{i}") for i in range(6)]
    people += [("discord", str(1600000000000000000 + seed * 100 + i)) for i in range(3)]
    async with stack(nats_server, valkey_server, unique, tmp_path) as (
        s, ingresses, admin, projection, _,
    ):  # fmt: skip
        other = await build(s)
        services = [admin.identities, other.identities]
        web = Webhooks(rnd, seed)
        created: list[str] = []
        stored: set[str] = set()

        async def webhooks(n: int) -> None:
            for _ in range(n):
                hook = web.hook(*rnd.choice(people))
                await web.send(ingresses, hook.instance, hook.body, rnd.randrange(2))
                stored.update(e.id for e in hook.events)

        async def kill() -> None:
            await asyncio.sleep(rnd.random())
            victim = rnd.choice(ingresses)
            await asyncio.to_thread(victim.kill)
            await asyncio.to_thread(victim.start)

        try:
            for round_ in range(4):
                work = [webhooks(12), webhooks(12)]
                work += [admin_work(services, people, created, rnd) for _ in range(2)]
                await asyncio.gather(*work, *([kill()] if round_ % 2 else []))
                # settle: the followers finish what a cancelled writer left (delay 0.2 s)
                await asyncio.sleep(1.5)
                await caught_up(projection)
                fresh = await build(s)  # a new process's view of the bucket: no cache
                try:
                    wrong = await one_owner_everywhere(
                        fresh.identities, ingresses, web, people, stored, projection
                    )
                finally:
                    await fresh.stop(0)
                assert not wrong, f"seed {seed}, round {round_}: {wrong}"
        finally:
            await web.http.aclose()
            await other.stop(0)


async def one_owner_everywhere(
    ids: IdentityService,
    ingresses: list[IngressProcess],
    web: Webhooks,
    people: list[Handle],
    stored: set[str],
    projection: Projection,
) -> list[str]:
    """For every handle: the bucket's owner is live, FindIdentity on both ingresses
    answers it (listing the handle), and a new webhook to either is stored with it as
    sender; every webhook sent is stored once."""
    wrong: list[str] = []
    owners = {h: await ids.lookup(*h) for h in people}
    new: dict[str, tuple[Handle, str, str]] = {}
    for h, owner in owners.items():
        if owner is None:
            continue
        if await ids.end_of(owner) != owner:
            wrong.append(f"{h}: the bucket names {owner}, merged")
        for ingress in ingresses:
            # inbound (an Evolution message may be the instance's own: its sender is that)
            hook = web.hook(*h, mb.CLOUD)
            answer = await web.send([ingress], hook.instance, hook.body, 0)
            new[answer["events"][0]["id"]] = (h, owner, ingress.home.name)
            stored.update(e.id for e in hook.events)
    await caught_up(projection)
    for ingress in ingresses:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingress.grpc_port}") as channel:
            stub = query_pb2_grpc.OmniQueryServiceStub(channel)
            at = ingress.home.name
            for h, owner in owners.items():
                if owner is None:
                    continue
                view = (
                    await stub.FindIdentity(pb.FindIdentityRequest(provider=h[0], external_id=h[1]))
                ).identity
                if view.identity_id != owner or h not in {
                    (x.provider, x.external_id) for x in view.handles
                }:
                    wrong.append(f"{at}: {h} finds {view.identity_id}, the bucket {owner}")
            for event_id, (h, owner, sent_to) in new.items():
                got = (await stub.GetEvent(pb.GetEventRequest(event_id=event_id))).event.event
                if got.sender_identity_id != owner:
                    wrong.append(
                        f"{at}: a webhook of {h} sent to {sent_to} has sender "
                        f"{got.sender_identity_id}, the bucket {owner}"
                    )
            recent = await paged(
                stub.ListRecentEvents, pb.ListRecentEventsRequest(page_size=50), "events"
            )
            ids_listed = [e.event.id for e in recent]
            if len(ids_listed) != len(set(ids_listed)) or set(ids_listed) != stored:
                wrong.append(f"{at}: {len(ids_listed)} events listed, {len(stored)} sent")
    return wrong
