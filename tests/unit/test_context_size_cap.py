"""The publisher keeps every story readable in one answer: a command that would make the
story's state (its encoded ContextView, what GetContext answers) larger than the cap is
refused, FAILED_PRECONDITION naming the cap and the story's size, and nothing is
appended. The check is cheap: a cached story carries an upper bound of its view's size,
and the view is counted exactly only when that bound passes the cap."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jetsource.domains.context.command_service  # noqa: F401 (registers the status mapping)
from jetsource.core.codec import UnknownEvent
from jetsource.core.errors import ValidationError
from jetsource.core.grpcserver import to_rpc_error
from jetsource.domains.context import commands
from jetsource.domains.context.commands import (
    DEFAULT_MAX_CONTEXT_BYTES,
    CommandHandler,
    CommandOptions,
    ContextTooLargeError,
)
from jetsource.domains.context.events import registry
from jetsource.domains.context.model import (
    BLOCKED,
    CANCELLED,
    DONE,
    IN_PROGRESS,
    TODO,
    AddDecision,
    AddSubtask,
    CloseContext,
    Command,
    ContextState,
    CreateContext,
    DomainError,
    LinkDependency,
    ReviseDecision,
    SupersedeDecision,
    UpdateSubtask,
    decide,
    evolve,
)
from jetsource.domains.context.views import view_growth, view_size
from jetsource.eventstore.memory import InMemoryEventStore
from jetsource.publisher.settings import DEFAULT_MAX_CONTEXT_BYTES as SETTING_DEFAULT
from jetsource.publisher.settings import PublisherSettings

BIG = "😀" * 10_000  # 10,000 characters (the limit), 40,000 bytes


def test_the_default_cap_is_one_number_and_at_most_half_the_message_limit() -> None:
    assert SETTING_DEFAULT == DEFAULT_MAX_CONTEXT_BYTES == 2 * 1024 * 1024
    assert PublisherSettings().context_cap() == DEFAULT_MAX_CONTEXT_BYTES
    small = PublisherSettings.model_validate({"grpc": {"max_message_bytes": 256 * 1024}})
    assert small.context_cap() == 128 * 1024


# -- the bound: an event grows the view by at most its size plus a constant ----------------

IDS = st.sampled_from(["a", "b", "c", "d"])
# Short and long texts, ASCII and 4-byte characters: the growth bound holds for any.
TEXT = st.one_of(
    st.text(alphabet="xyz é😀", max_size=12),
    st.sampled_from(["", "😀" * 300, "w" * 1000]),
)
STATUS = st.sampled_from([TODO, IN_PROGRESS, BLOCKED, DONE, CANCELLED])
COMMANDS = st.one_of(
    st.builds(CreateContext, title=TEXT, description=TEXT, created_by=TEXT),
    st.builds(
        AddDecision,
        decision_id=IDS,
        title=TEXT,
        body=TEXT,
        rationale=TEXT,
        author=TEXT,
        affects=st.lists(IDS, max_size=3),
    ),
    st.builds(ReviseDecision, decision_id=IDS, title=TEXT, body=TEXT, rationale=TEXT),
    st.builds(SupersedeDecision, decision_id=IDS, superseded_by=IDS, reason=TEXT),
    st.builds(AddSubtask, subtask_id=IDS, title=TEXT, description=TEXT, assignee=TEXT),
    st.builds(
        UpdateSubtask,
        subtask_id=IDS,
        status=st.none() | STATUS,
        assignee=st.none() | TEXT,
        progress=st.none() | st.integers(0, 100),
    ),
    st.builds(LinkDependency, from_id=IDS, to_id=IDS),
    st.builds(CloseContext, reason=TEXT, closed_by=TEXT),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(COMMANDS, max_size=30), st.integers(0, 200))
def test_an_event_grows_the_view_by_at_most_its_bound(sequence: list[Command], skip: int) -> None:
    # Start at a version whose varint is about to grow (127 -> 128, ...): the bound
    # covers the version's extra byte too.
    state = ContextState(id="p", version=skip)
    size = view_size(state)
    for command in sequence:
        try:
            events = decide(command, state)
        except (DomainError, ValidationError):
            continue
        later: list[Message | UnknownEvent] = [*events, UnknownEvent("Later", 1, b"")]
        for event in later:
            state = evolve(state, event)
            after = view_size(state)
            assert after <= size + view_growth([event]), (event, size, after)
            size = after


# -- the handler ------------------------------------------------------------------------


def _options(key: str) -> CommandOptions:
    return CommandOptions(idempotency_key=key)


async def _fill(handler: CommandHandler, cid: str, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        await handler.execute(cid, AddDecision(f"d{i}", "t", body=BIG), _options(f"{cid}-{i}"))


async def test_a_command_past_the_cap_is_refused_naming_it_and_appends_nothing() -> None:
    store = InMemoryEventStore(registry)
    cap = 210_000  # five decisions of 40 kB bodies fit (200,105 bytes), a sixth does not
    handler = CommandHandler(store, max_context_bytes=cap)
    await handler.execute("big", CreateContext("story"), _options("create"))
    await _fill(handler, "big", 5)
    with pytest.raises(ContextTooLargeError) as refused:
        await _fill(handler, "big", 1, start=5)
    assert len(await store.read_aggregate("big")) == 6  # the sixth appended nothing
    state = handler._cache["big"].state
    assert refused.value.size == view_size(state) <= cap < refused.value.after
    # FAILED_PRECONDITION (not RESOURCE_EXHAUSTED, which clients retry), naming the cap
    # and the story's size, also as ErrorInfo metadata.
    error = to_rpc_error(refused.value)
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "CONTEXT_TOO_LARGE"
    assert error.metadata["max_context_bytes"] == "210000"
    assert error.metadata["context_bytes"] == str(view_size(state))
    assert "210,000 bytes" in error.message and "retrying will not help" in error.message
    # A command that shrinks the story is taken, and makes room for another.
    await handler.execute("big", ReviseDecision("d0", body="short"), _options("shrink"))
    await _fill(handler, "big", 1, start=5)
    assert handler._cache["big"].state.version == 8


async def test_the_view_is_counted_exactly_only_when_the_bound_passes_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted: list[int] = []

    def counting(state: ContextState) -> int:
        counted.append(state.version)
        return view_size(state)

    monkeypatch.setattr(commands, "view_size", counting)
    store = InMemoryEventStore(registry)
    handler = CommandHandler(store)
    await handler.execute("s", CreateContext("story"), _options("c"))
    for i in range(200):
        await handler.execute("s", AddDecision(f"d{i}", "a decision"), _options(f"k{i}"))
    assert counted == [0]  # once, when the story was first loaded; never per command
    # With the state cache off every command loads the story, but not its size: a
    # story loaded again where this publisher left it is not counted again.
    uncached = CommandHandler(store, cache_size=0)
    for i in range(20):
        await uncached.execute("s", AddDecision(f"u{i}", "a decision"), _options(f"u{i}"))
    assert counted == [0, 201]
    await handler.execute("s", AddDecision("mine", "from the other one"), _options("m"))
    await uncached.execute("s", AddDecision("u20", "after another's"), _options("u20"))
    # Each found the story moved on by the other: counted again, once each.
    assert counted == [0, 201, 221, 222]
    counted.clear()

    small = CommandHandler(store, max_context_bytes=130_000)
    await small.execute("t", CreateContext("story"), _options("c"))
    await _fill(small, "t", 3)  # 120 kB
    await small.execute("t", ReviseDecision("d0", body="x"), _options("r"))  # 80 kB
    assert counted == [0]
    # The bound (160 kB: it never goes down) passes the cap: counted once, and it fits.
    await _fill(small, "t", 1, start=3)
    loaded = small._cache["t"]
    assert counted == [0, 6] and loaded.view_bytes == view_size(loaded.state)


async def test_events_appended_by_another_publisher_count_towards_the_cap() -> None:
    store = InMemoryEventStore(registry)
    cap = 210_000
    ours, theirs = (CommandHandler(store, max_context_bytes=cap) for _ in range(2))
    await ours.execute("shared", CreateContext("story"), _options("create"))
    await _fill(ours, "shared", 1)  # ours has the story cached with one decision
    cached = ours._cache["shared"]
    await _fill(theirs, "shared", 3, start=1)
    await theirs.execute("shared", AddDecision("d4", "t"), _options("small"))
    # Ours does not know d4: refused on its cache, it reads what it missed and counts
    # it into the bound, then takes the revision (40 kB more: 200 kB in all).
    await ours.execute("shared", ReviseDecision("d4", body=BIG), _options("grow"))
    assert ours._cache["shared"] is cached and cached.state.version == 7
    assert cached.view_bytes is not None and cached.view_bytes >= view_size(cached.state)
    with pytest.raises(ContextTooLargeError):
        await _fill(ours, "shared", 1, start=5)
    assert len(await store.read_aggregate("shared")) == 7


def _stored_sizes(records: list[Any]) -> list[int]:
    state = ContextState(id=records[0].aggregate_id)
    sizes = []
    for r in records:
        state = evolve(state, r.event)
        sizes.append(view_size(state))
    return sizes


async def test_every_version_of_a_capped_story_fits() -> None:
    """Time travel answers any version: each is within the cap, not only the last."""
    store = InMemoryEventStore(registry)
    cap = 150_000
    handler = CommandHandler(store, max_context_bytes=cap)
    await handler.execute("tt", CreateContext("story"), _options("create"))
    refused = 0
    for i in range(8):
        try:
            await _fill(handler, "tt", 1, start=i)
        except ContextTooLargeError:
            refused += 1
            await handler.execute("tt", ReviseDecision(f"d{i - 3}", body="x"), _options(f"r{i}"))
    assert refused >= 2
    assert max(_stored_sizes(await store.read_aggregate("tt"))) <= cap
