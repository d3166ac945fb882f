"""Registering a domain of one's own (the README's "One engine, many domains"): what a
developer gets wrong is refused where it is made, naming the domain and the field, not
by the server at the first `streams ensure` or as an "unexpected ... (a bug)".

- A subject prefix nested in another domain's (``context`` beside ``context.events``)
  was accepted by the registry (only equal prefixes were refused); `streams ensure` then
  failed on the server's "subjects overlap" naming neither domain.
- A stream name or subject prefix the server refuses (``A.B``, ``a.*``), or a prefix
  whose own voids subjects it overlaps (``counter.voids``), passed the descriptor.
- A prefix overlapping the engine's own streams (dead letters ``jetsource.dlq``,
  snapshots ``context.snapshots``) was refused only by the server, naming no setting.
- One message class current for two event types (the second silently took it), a
  second upcaster for one step (silently replaced the first), a model consuming a type
  its domain does not have (never received anything) were all accepted; an upcaster that
  raised stopped the model's worker; a model without every ReadModel method started.
- ``JETSOURCE_PROJECTOR__DOMAINS`` naming no module, no attribute or no registry was
  "INTERNAL: unexpected ModuleNotFoundError ... (a bug)", exit 1, in every CLI command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import wrappers_pb2

from jetsource.core.codec import EventRegistry, PayloadDecodeError
from jetsource.core.envelope import RecordedEvent
from jetsource.core.settings import NatsSettings
from jetsource.projection.bootstrap import (
    DomainsError,
    IncompleteModelError,
    Projection,
    check_engine_subjects,
    load_domains,
    open_projection,
)
from jetsource.projection.contract import BY_STREAM_SEQUENCE, Kind, ModelSpec, Outcome
from jetsource.projection.domain import Domain, DomainRegistry, ModelDecl
from jetsource.projection.settings import ProjectorSettings


def _domain(
    name: str = "counter", stream: str = "COUNTER", prefix: str = "counter.events"
) -> Domain:
    registry = EventRegistry()
    registry.register("CounterIncremented", 1, wrappers_pb2.StringValue)
    return Domain(
        name=name, stream=stream, subject_prefix=prefix, aggregate_type="counter", registry=registry
    )


@pytest.mark.parametrize(
    ("prefix", "theirs"),
    [
        ("context", "context.events"),
        ("context.events.extra", "context.events"),
        ("context.events", "context.events"),
        ("context.voids.x", "context.voids"),
    ],
)
def test_a_prefix_overlapping_another_domains_subjects_is_refused(prefix: str, theirs: str) -> None:
    registry = DomainRegistry([_domain("context", "CONTEXT_EVENTS", "context.events")])
    with pytest.raises(ValueError, match=r"domain 'counter'.*of domain 'context'") as caught:
        registry.register(_domain(prefix=prefix))
    assert f"{theirs}.>" in str(caught.value)
    assert [d.name for d in registry] == ["context"]  # nothing registered


def test_prefixes_that_only_share_a_first_token_live_side_by_side() -> None:
    registry = DomainRegistry([_domain("context", "CONTEXT_EVENTS", "context.events")])
    registry.register(_domain(prefix="counters.events"))
    assert [d.name for d in registry] == ["context", "counter"]


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("stream", {"stream": "MY.STREAM"}),
        ("stream", {"stream": ""}),
        ("subject_prefix", {"prefix": "counter.*"}),
        ("subject_prefix", {"prefix": "counter..events"}),
        ("subject_prefix", {"prefix": "counter.voids"}),  # its own voids subjects
    ],
)
def test_names_the_server_refuses_are_refused_by_the_descriptor(
    field: str, kwargs: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match=rf"domain 'counter'.*{field}"):
        _domain(**kwargs)


def test_a_domains_setting_that_names_no_registry_says_which_setting(tmp_path: Path) -> None:
    (tmp_path / "notaregistry.py").write_text("REGISTRY = 3\n")
    sys.path.insert(0, str(tmp_path))
    try:
        for value, words in [
            ("no_such_domains_module", "does not load"),
            ("json", "has no 'REGISTRY'"),
            ("json:NOPE", "has no 'NOPE'"),
            ("notaregistry", "not a DomainRegistry"),
        ]:
            with pytest.raises(DomainsError, match=words) as caught:
                load_domains(value)
            assert f"JETSOURCE_PROJECTOR__DOMAINS={value!r}" in str(caught.value)
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("argv", [["streams", "ensure"], ["projector", "status"]])
def test_the_cli_answers_a_bad_domains_setting_as_a_usage_error(argv: list[str]) -> None:
    env = {
        **os.environ,
        "JETSOURCE_PROJECTOR__DOMAINS": "no_such_domains_module",
        "JETSOURCE_NATS__URL": "nats://127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "jetsource", *argv, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    error = json.loads(done.stderr.strip().splitlines()[-1])["error"]
    assert error["field"] == "JETSOURCE_PROJECTOR__DOMAINS"
    assert "no_such_domains_module" in error["message"]
    assert "a bug" not in error["message"]


@pytest.mark.parametrize(
    ("prefix", "setting"),
    [
        ("jetsource.dlq", "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX"),
        ("jetsource", "JETSOURCE_PROJECTOR__DLQ_SUBJECT_PREFIX"),
        ("context.snapshots.mine", "JETSOURCE_SNAPSHOTS__SUBJECT_PREFIX"),
    ],
)
async def test_a_prefix_overlapping_the_engines_own_streams_is_refused_before_connecting(
    prefix: str, setting: str
) -> None:
    settings = ProjectorSettings(nats=NatsSettings(url="nats://127.0.0.1:1"))
    registry = DomainRegistry([_domain(prefix=prefix)])
    with pytest.raises(DomainsError, match=rf"domain 'counter'.*{setting}"):
        check_engine_subjects(settings, registry)
    with pytest.raises(DomainsError, match=setting):  # said before any connection is tried
        await asyncio.wait_for(open_projection(settings, provision=False, domains=registry), 5)
    check_engine_subjects(settings, DomainRegistry([_domain()]))  # counter.events: its own


def test_the_projector_service_ends_on_a_bad_domains_setting_as_on_any_bad_setting() -> None:
    env = {
        **os.environ,
        "JETSOURCE_PROJECTOR__DOMAINS": "no_such_domains_module",
        "JETSOURCE_PROJECTOR__HTTP_PORT": "0",
        "JETSOURCE_NATS__URL": "nats://127.0.0.1:1",
        "JETSOURCE_LOG_JSON": "false",
    }
    done = subprocess.run(
        [sys.executable, "-c", "from jetsource.projector.server import main; main()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 2, said  # exit 2, as README's "Settings are checked ..."
    assert "cannot start: bad setting: JETSOURCE_PROJECTOR__DOMAINS=" in said
    assert "Traceback" not in said


def test_one_message_class_current_for_two_event_types_is_refused() -> None:
    # It was accepted, and the second type took the class: every event appended as the
    # first type was stored (and projected) under the second's name.
    registry = EventRegistry()
    registry.register("CounterIncremented", 1, wrappers_pb2.StringValue)
    with pytest.raises(ValueError, match=r"CounterRenamed v1: message .*StringValue.* of "):
        registry.register("CounterRenamed", 1, wrappers_pb2.StringValue)
    assert registry.event_types() == ["CounterIncremented"]
    registry.register("CounterRenamed", 1, wrappers_pb2.StringValue, current=False)  # old schema


def test_a_second_upcaster_for_the_same_step_is_refused() -> None:
    registry = EventRegistry()
    registry.register("CounterIncremented", 1, wrappers_pb2.StringValue, current=False)
    registry.register("CounterIncremented", 2, wrappers_pb2.BytesValue)
    registry.upcaster("CounterIncremented", 1)(lambda m: m)
    with pytest.raises(ValueError, match="second upcaster from v1"):
        registry.upcaster("CounterIncremented", 1)(lambda m: m)


def test_a_model_consuming_a_type_its_domain_does_not_have_is_refused() -> None:
    # A misspelt consumed type was a filter subject nothing is published on: the model
    # never saw those events and nothing said so.
    domain = _domain()
    consumed = frozenset({"CounterIncremented", "CountrReset"})
    spec = ModelSpec(
        "counters",
        1,
        Kind.SNAPSHOT,
        "valkey",
        "counters",
        consumed,
        idempotency_key=BY_STREAM_SEQUENCE,
    )
    mine = dataclasses.replace(domain, models={"counters": ModelDecl(lambda v: spec, _no_model)})
    registry = DomainRegistry()
    with pytest.raises(ValueError, match=r"'counters' of 'counter' consumes CountrReset"):
        registry.register(mine)
    assert list(registry) == []


def _no_model(env: object, spec: object) -> Any:
    raise AssertionError("not built")


def test_an_upcaster_that_raises_reads_as_an_undecodable_event() -> None:
    # Its exception went up as it was: the projector's worker of every model of the
    # domain stopped ("worker ... stopped: RuntimeError"), /healthz unhealthy, nothing
    # dead-lettered. As PayloadDecodeError the runtime dead-letters the one event and
    # parks its aggregate, as for a payload that does not parse.
    registry = EventRegistry()
    registry.register("CounterIncremented", 1, wrappers_pb2.StringValue, current=False)
    registry.register("CounterIncremented", 2, wrappers_pb2.BytesValue)

    @registry.upcaster("CounterIncremented", 1)
    def up(message: Any) -> Any:
        if message.value == "boom":
            raise RuntimeError("upcaster boom")
        return wrappers_pb2.BytesValue(value=message.value.encode())

    ok = wrappers_pb2.StringValue(value="ok").SerializeToString()
    assert registry.decode("CounterIncremented", 1, ok) == wrappers_pb2.BytesValue(value=b"ok")
    boom = wrappers_pb2.StringValue(value="boom").SerializeToString()
    with pytest.raises(PayloadDecodeError, match=r"v1: the upcaster to v2 failed: .*upcaster boom"):
        registry.decode("CounterIncremented", 1, boom)


class _Incomplete:
    """A model a developer forgot most of: only setup and apply."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    async def setup(self) -> None:
        pass

    async def apply(self, events: Any) -> Any:
        raise AssertionError("not called")


def _incomplete(env: object, spec: ModelSpec) -> Any:
    return _Incomplete(spec)


def test_a_model_without_every_read_model_method_is_refused_when_built() -> None:
    # It was built, started, said healthy, and failed at its first checkpoint or admin
    # command ("unexpected AttributeError ... (a bug)"); the projector now ends naming it.
    spec = ModelSpec("counters", 1, Kind.SNAPSHOT, "valkey", "counters")
    mine = dataclasses.replace(
        _domain(), models={"counters": ModelDecl(lambda v: spec, _incomplete)}
    )
    projection = Projection(
        settings=ProjectorSettings(),
        nc=None,  # type: ignore[arg-type]
        domains=DomainRegistry([mine]),
        stores={"counter": None},  # type: ignore[dict-item]
        dead_letters=None,  # type: ignore[arg-type]
        control=None,  # type: ignore[arg-type]
        snapshots=None,  # type: ignore[arg-type]
    )
    with pytest.raises(IncompleteModelError, match=r"'counters' v1 of domain 'counter'") as caught:
        projection.model("counters", 1)
    assert "has no skip, rewind, position, checkpoint, digest, drop, close" in str(caught.value)


def test_the_read_model_contract_names_the_rewind_replay_calls() -> None:
    # The Protocol said rewind(aggregate_id, to_version); `projector replay` calls
    # rewind(aggregate_id, v, events=..., guard=...): a model written to the contract
    # failed every replayed aggregate with a TypeError.
    import inspect

    from jetsource.projection.contract import ReadModel

    params = inspect.signature(ReadModel.rewind).parameters
    assert {"events", "guard"} <= set(params)
    assert params["events"].kind is inspect.Parameter.KEYWORD_ONLY


async def test_the_snapshots_model_takes_replays_rewind() -> None:
    # `projector replay snapshots --aggregate X` called rewind(..., events=, guard=) on
    # the engine's snapshots model, whose rewind took neither: a TypeError per story.
    from tests.unit.test_generic_snapshots import add, build, model_on, new_store

    store = new_store()
    await add(store, "c1", list(range(1, 10)))
    model, snaps = model_on(store)
    await build(model, [r async for r in store.read_all()], 100, redeliver=False)
    assert await model.position("c1") == 8
    # Outside the guard: nothing deleted, the stored version answered.
    assert await model.rewind("c1", 4, events=[], guard=(0, 7)) == 8
    assert [s.version for s in await snaps.history("c1")] == [4, 8]
    assert await model.rewind("c1", 4, events=[], guard=(8, 8)) == 8
    assert [s.version for s in await snaps.history("c1")] == [4]


class _PoisonOnTwo:
    """Applies atomically per call; raises when the call holds an event of value 2."""

    def __init__(self) -> None:
        self.applied: list[int] = []

    async def apply(self, events: list[RecordedEvent]) -> Outcome:
        if any(e.event.value == 2 for e in events):  # type: ignore[union-attr]
            raise RuntimeError("boom on two")
        self.applied += [e.stream_seq for e in events]
        return Outcome(done=[e.stream_seq for e in events], applied=len(events))


async def test_the_event_that_raises_is_the_one_dead_lettered_not_the_first_of_its_batch() -> None:
    # A read model raising on one event of an aggregate's batch had the FIRST event of
    # the batch refused with that error and the poison parked behind it: the dead letter
    # named a good event (discarding it dropped that event; retrying it "worked").
    from jetsource.projection.runtime import Worker
    from tests.unit.test_generic_snapshots import add, new_store

    store = new_store()
    await add(store, "c1", [1, 3, 2, 4])  # seqs 1..4; the third (value 2) raises
    await add(store, "c2", [5])
    records = [r async for r in store.read_all()]
    model = _PoisonOnTwo()
    worker = SimpleNamespace(
        model=model, _store_wrote=lambda: None, _store_refused=lambda exc: None, _unseen={}
    )
    worker._apply_alone = functools.partial(Worker._apply_alone, worker)  # type: ignore[arg-type]
    outcome = await Worker._isolate(worker, records)  # type: ignore[arg-type]
    assert list(outcome.failed) == [3] and "boom on two" in outcome.failed[3]
    assert outcome.waiting == {4: "behind failed sequence 3"}
    assert sorted(outcome.done) == [1, 2, 5] and model.applied == [1, 2, 5]
