"""The line and paragraph separators U+2028/U+2029 end a line in a log or a terminal as
LF does: the context publisher refuses them in every one-line field of a command (the
``options.*`` strings, titles, tags, assignees) as the process ledger's observer does,
INVALID_ARGUMENT naming the field, and writes nothing. Against a real publisher (gRPC)
and nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from jetsource._gen.context.v1 import commands_pb2 as pb
from jetsource._gen.context.v1 import commands_pb2_grpc as pb_grpc
from jetsource.client import error_details
from jetsource.core.settings import NatsSettings
from jetsource.publisher.server import Publisher, build
from jetsource.publisher.settings import PublisherOptions, PublisherSettings
from tests.eventstore_fixtures import isolated_settings
from tests.infra import Server

pytestmark = pytest.mark.integration
STORY = "story"


@pytest.fixture(scope="module")
async def publisher(nats_server: Server) -> AsyncIterator[Publisher]:
    publisher = await build(
        PublisherSettings(
            nats=NatsSettings(url=nats_server.url),
            eventstore=isolated_settings(uuid.uuid4().hex[:10]),
            publisher=PublisherOptions(grpc_port=0, metrics_port=0),
        )
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
            stub = pb_grpc.ContextCommandServiceStub(channel)
            for rpc, request in (
                (stub.CreateContext, pb.CreateContextRequest(context_id=STORY, title="s")),
                (
                    stub.AddDecision,
                    pb.AddDecisionRequest(context_id=STORY, decision_id="d1", title="t"),
                ),
                (
                    stub.AddSubtask,
                    pb.AddSubtaskRequest(context_id=STORY, subtask_id="s1", title="t"),
                ),
            ):
                request.options.idempotency_key = f"seed-{type(request).__name__}"
                await rpc(request, timeout=10)
        yield publisher
    finally:
        await publisher.stop(0)


def _options(**fields: str) -> pb.CommandOptions:
    options = pb.CommandOptions(idempotency_key="k1")
    for name, value in fields.items():
        setattr(options, name, value)
    return options


# field -> (rpc, the request holding ``value`` in that field)
ONE_LINE: dict[str, tuple[str, Callable[[str], Any]]] = {
    "options.idempotency_key": (
        "AddSubtask",
        lambda v: pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s9", title="t", options=_options(idempotency_key=v)
        ),
    ),
    "options.correlation_id": (
        "AddSubtask",
        lambda v: pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s9", title="t", options=_options(correlation_id=v)
        ),
    ),
    "options.causation_id": (
        "AddSubtask",
        lambda v: pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s9", title="t", options=_options(causation_id=v)
        ),
    ),
    "options.actor": (
        "CloseContext",
        lambda v: pb.CloseContextRequest(context_id=STORY, options=_options(actor=v)),
    ),
    "title": (
        "CreateContext",
        lambda v: pb.CreateContextRequest(context_id="other", title=v, options=_options()),
    ),
    "tags": (
        "CreateContext",
        lambda v: pb.CreateContextRequest(
            context_id="other", title="t", tags=["ok", v], options=_options()
        ),
    ),
    "decision title": (
        "AddDecision",
        lambda v: pb.AddDecisionRequest(
            context_id=STORY, decision_id="d9", title=v, options=_options()
        ),
    ),
    "revised title": (
        "ReviseDecision",
        lambda v: pb.ReviseDecisionRequest(
            context_id=STORY, decision_id="d1", title=v, options=_options()
        ),
    ),
    "subtask title": (
        "AddSubtask",
        lambda v: pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s9", title=v, options=_options()
        ),
    ),
    "assignee": (
        "AddSubtask",
        lambda v: pb.AddSubtaskRequest(
            context_id=STORY, subtask_id="s9", title="t", assignee=v, options=_options()
        ),
    ),
    "updated assignee": (
        "UpdateSubtask",
        lambda v: pb.UpdateSubtaskRequest(
            context_id=STORY, subtask_id="s1", assignee=v, options=_options()
        ),
    ),
    # Ids were letters, digits, '-' and '_' already: checked that they stay refused.
    "context_id": (
        "CreateContext",
        lambda v: pb.CreateContextRequest(context_id=v, title="t", options=_options()),
    ),
    "decision_id": (
        "AddDecision",
        lambda v: pb.AddDecisionRequest(
            context_id=STORY, decision_id=v, title="t", options=_options()
        ),
    ),
    "to_id": (
        "LinkDependency",
        lambda v: pb.LinkDependencyRequest(
            context_id=STORY, from_id="s1", to_id=v, options=_options()
        ),
    ),
}


def _named(case: str) -> str:
    """The field a case's refusal names (the cases above say which command it is in)."""
    return {
        "decision title": "title",
        "revised title": "title",
        "subtask title": "title",
        "updated assignee": "assignee",
    }.get(case, case)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
@pytest.mark.parametrize("case", list(ONE_LINE))
async def test_a_line_separator_in_a_one_line_field_is_refused_naming_it(
    publisher: Publisher, case: str, separator: str
) -> None:
    rpc, make = ONE_LINE[case]
    field = _named(case)
    before = await publisher.store.last_version(STORY)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        call = getattr(pb_grpc.ContextCommandServiceStub(channel), rpc)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(make(f"a{separator}b"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert (err.value.details() or "").startswith(field), err.value.details()
    assert field in error_details(err.value).fields
    assert await publisher.store.last_version(STORY) == before
    assert await publisher.store.last_version("other") == 0


async def test_multi_line_texts_and_other_scripts_are_still_taken(publisher: Publisher) -> None:
    """A body takes the separators as the line breaks they are; printable text of any
    script is taken in a one-line field as before."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{publisher.port}") as channel:
        stub = pb_grpc.ContextCommandServiceStub(channel)
        answer = await stub.AddDecision(
            pb.AddDecisionRequest(
                context_id=STORY,
                decision_id="d8",
                title="Ünïcödé 日本語 \u202f",
                body="one\u2028two\u2029three",
                options=_options(idempotency_key="multi", actor="ana \u00a0"),
            ),
            timeout=10,
        )
    assert not answer.result.duplicate
