"""The error mapping, page tokens and Timestamp checks of the gRPC layer, without servers
(the services themselves are driven in tests/e2e/test_bad_input.py)."""

from __future__ import annotations

import asyncio
import base64

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from jetsource.core.errors import ConcurrencyError, CorruptEventError, ValidationError
from jetsource.core.grpcserver import (
    MAX_DESCRIPTION,
    MAX_MESSAGE,
    RpcError,
    call_outcome,
    status_details,
    to_rpc_error,
)
from jetsource.domains.context.query_service import PageTokens, QueryError, timestamp_ns

Code = grpc.StatusCode


def test_known_errors_map_to_their_codes_and_the_rest_is_internal() -> None:
    corrupt = to_rpc_error(CorruptEventError("c1", 42, "does not decode"))
    assert corrupt.code is Code.DATA_LOSS and "stream sequence 42" in corrupt.message
    bad = to_rpc_error(ValidationError("title is required", field="title"))
    assert bad.code is Code.INVALID_ARGUMENT and bad.violations == [("title", bad.message)]
    moved = to_rpc_error(ConcurrencyError("c1", 3, 5))
    assert moved.code is Code.ABORTED and moved.metadata == {"current_version": "5"}
    assert to_rpc_error(TimeoutError()).code is Code.DEADLINE_EXCEEDED
    other = to_rpc_error(KeyError("secret"))
    assert other.code is Code.INTERNAL
    assert "KeyError" not in other.message and "secret" not in other.message


def test_status_details_carry_bad_request_and_error_info() -> None:
    status = status_details(
        RpcError(
            Code.ABORTED,
            "moved",
            field="options.expected_version",
            metadata={"current_version": "9"},
        )
    )
    assert status.code == Code.ABORTED.value[0] and status.message == "moved"
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(bad) and status.details[1].Unpack(info)
    assert bad.field_violations[0].field == "options.expected_version"
    assert info.domain == "jetsource" and info.metadata["current_version"] == "9"


def test_a_token_reads_back_only_for_its_method_and_request() -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.make("ListEvents", "c1", b"\x00\x07")
    assert tokens.read("ListEvents", "c1", token) == b"\x00\x07"
    for kind, bound in (("ListContexts", "c1"), ("ListEvents", "c2")):
        with pytest.raises(QueryError) as info:
            tokens.read(kind, bound, token)
        assert info.value.code is Code.INVALID_ARGUMENT and "page_token" in info.value.message
    other = PageTokens(b"j" * 32)
    with pytest.raises(QueryError):
        other.read("ListEvents", "c1", token)


@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()))
def test_no_forged_or_random_token_is_accepted(forged: str) -> None:
    with pytest.raises(QueryError) as info:
        PageTokens(b"k" * 32).read("ListEvents", "c1", forged)
    assert info.value.code is Code.INVALID_ARGUMENT


@given(st.integers(0, 2**40 - 1), st.integers(0, 31))
def test_any_changed_bit_is_refused(cursor: int, bit: int) -> None:
    tokens = PageTokens(b"k" * 32)
    token = tokens.make("ListEvents", "c1", cursor.to_bytes(8, "big"))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[bit % len(raw)] ^= 1 << (bit % 8)
    changed = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(QueryError):
        tokens.read("ListEvents", "c1", changed)


@pytest.mark.parametrize(
    ("seconds", "nanos", "ok"),
    [
        (0, 0, True),
        (-1, 0, True),  # before 1970: valid (NOT_FOUND for a story, not INVALID_ARGUMENT)
        (-62_135_596_800, 0, True),  # 0001-01-01
        (253_402_300_799, 999_999_999, True),  # 9999-12-31T23:59:59.999999999
        (-62_135_596_801, 0, False),
        (253_402_300_800, 0, False),
        (2**62, 0, False),
        (0, -1, False),
        (0, 1_000_000_000, False),
    ],
)
def test_timestamps_outside_their_range_are_invalid(seconds: int, nanos: int, ok: bool) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    if ok:
        assert timestamp_ns("time", ts) == seconds * 10**9 + nanos
    else:
        with pytest.raises(QueryError) as info:
            timestamp_ns("time", ts)
        assert info.value.violations[0][0] == "time"


def test_the_outcome_of_a_failed_call_names_a_cancellation_apart_from_errors() -> None:
    """Both query services count failed calls with call_outcome: a client that went
    away (its task cancelled) is no error of the service and must not feed the
    error-ratio alerts."""
    assert call_outcome(asyncio.CancelledError(), None) == "cancelled"
    assert call_outcome(RuntimeError("boom"), None) == "error"
    refused = RpcError(grpc.StatusCode.NOT_FOUND, "no such story")
    assert call_outcome(refused, refused) == "not_found"


def test_a_status_that_repeats_a_long_input_is_cut_to_fit_the_trailers() -> None:
    """A client refuses trailers past 16 KB (RESOURCE_EXHAUSTED instead of the answer):
    every message, field description and metadata value is cut, saying so."""
    long = "x" * 1_100_000
    text = f"identity {long!r} not found"
    error = RpcError(
        grpc.StatusCode.NOT_FOUND,
        text,
        violations=[("external_id", f"no identity {long}")],
        metadata={"external_id": long},
    )
    assert len(error.message) <= MAX_MESSAGE
    assert error.message.startswith("identity 'xxx")
    assert error.message.endswith(f"({len(text) - (MAX_MESSAGE - 40):,} characters cut)")
    [(field, description)] = error.violations
    assert field == "external_id" and len(description) <= MAX_DESCRIPTION
    assert len(error.metadata["external_id"]) <= MAX_DESCRIPTION
    assert len(status_details(error).SerializeToString()) < 4096
    short = RpcError(grpc.StatusCode.INVALID_ARGUMENT, "name: too long", field="name")
    assert short.message == "name: too long" and short.violations == [("name", "name: too long")]
