"""core.wellknown.unshowable: where a decoded payload holds a time or number no
reader can show, named as a path; what every writer stores passes."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    struct_pb2,
    timestamp_pb2,
)

from jetsource._gen.omni.v1.events_pb2 import NormalizedEvent
from jetsource._gen.process.v1.events_pb2 import ProcessEventBody
from jetsource.core.codec import EventRegistry, PayloadDecodeError
from jetsource.core.wellknown import unshowable


def test_a_time_out_of_range_is_named_by_its_path() -> None:
    e = NormalizedEvent(id="x")
    e.metadata.poll.expires_at.seconds = 253_402_300_800  # one past 9999-12-31T23:59:59
    assert unshowable(e, e.SerializeToString()) == (
        "its metadata.poll.expires_at is no time (seconds 253402300800, nanos 0; "
        "years 1 to 9999, nanos 0 to 999999999)"
    )
    e.metadata.poll.expires_at.seconds = 253_402_300_799
    e.metadata.poll.expires_at.nanos = 999_999_999
    e.provider_timestamp.seconds = -62_135_596_800
    assert unshowable(e, e.SerializeToString()) is None


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_number_no_json_holds_is_named_as_in_json(number: float) -> None:
    data = struct_pb2.Struct()
    data.update({"a": {"b\n": [1, "two", None, True]}})
    data.fields["a"].struct_value.fields["b\n"].list_value.values.add().number_value = number
    body = ProcessEventBody(data=data)
    assert unshowable(body, body.SerializeToString()) == (
        f"its data['a']['b\\n'][4] is {number}, a number no JSON holds"
    )


def test_finite_numbers_pass_and_a_registry_decode_refuses_the_rest() -> None:
    data = struct_pb2.Struct()
    data.update({"n": [1.5, -0.0, 1e308, 2**53], "s": "\x11" + "\xff" * 8})
    body = ProcessEventBody(data=data)
    assert unshowable(body, body.SerializeToString()) is None
    registry = EventRegistry()
    registry.register("EventReceived", 1, NormalizedEvent)
    bad = NormalizedEvent(id="x")
    bad.received_at.nanos = 1_000_000_000
    with pytest.raises(PayloadDecodeError, match="EventReceived v1: its received_at is no time"):
        registry.decode("EventReceived", 1, bad.SerializeToString())


def _loop_types(package: str) -> tuple[Any, Any]:
    """A -> B -> A, A holding a Timestamp: no generated type recurses so."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"{package}.proto",
        package=package,
        dependency=["google/protobuf/timestamp.proto"],
        syntax="proto3",
    )
    message = descriptor_pb2.FieldDescriptorProto
    a = proto.message_type.add(name="A")
    a.field.add(name="b", number=1, type=message.TYPE_MESSAGE, type_name=f".{package}.B")
    a.field.add(name="at", number=2, type=message.TYPE_MESSAGE,
                type_name=".google.protobuf.Timestamp")  # fmt: skip
    b = proto.message_type.add(name="B")
    b.field.add(name="a", number=1, type=message.TYPE_MESSAGE, type_name=f".{package}.A")
    b.field.add(name="many", number=2, type=message.TYPE_MESSAGE, type_name=f".{package}.A",
                label=message.LABEL_REPEATED)  # fmt: skip
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.A")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.B")),
    )


def test_a_time_in_a_type_that_recurses_is_found_through_every_type_of_the_loop() -> None:
    """The cache of what a type can hold stored (False, False) for B while A -> B -> A
    was being worked out: a bad time under A.b was never looked for."""
    A, B = _loop_types(f"loop{uuid.uuid4().hex}")
    a = A()
    a.b.a.at.seconds = 10**13
    assert unshowable(a) == (
        "its b.a.at is no time (seconds 10000000000000, nanos 0; "
        "years 1 to 9999, nanos 0 to 999999999)"
    )
    b = B()
    b.many.add().b.a.at.nanos = -1
    assert "its many[0].b.a.at is no time" in (unshowable(b) or "")
    fine = B()
    fine.a.b.a.at.seconds = 1_700_000_000
    assert unshowable(fine) is None
