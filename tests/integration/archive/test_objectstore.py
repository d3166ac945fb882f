"""One contract for every object store the archive writes to: a local directory and
an S3-compatible server (moto's, run locally on a free port), and the segment and
manifest layer on both: sealed segments read back equal, a damaged byte is found."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jetsource.archive import segment
from jetsource.archive.objectstore import (
    LocalObjectStore,
    ObjectStore,
    ObjectStoreError,
    S3ObjectStore,
    open_object_store,
)
from jetsource.archive.segment import ArchivedMessage, SegmentError
from jetsource.archive.store import AggregateRange, Archive
from jetsource.devstack.servers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bucket(endpoint: str) -> str:
    import boto3

    name = f"archive-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
async def objects(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "objects")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        yield S3ObjectStore(_bucket(endpoint), "jetsource", endpoint, "us-east-1")


async def test_put_get_list_delete(objects: ObjectStore) -> None:
    assert await objects.get("a/b.bin") is None
    assert await objects.put("a/b.bin", b"one")
    assert await objects.get("a/b.bin") == b"one"
    assert not await objects.put("a/b.bin", b"two", create_only=True)
    assert await objects.get("a/b.bin") == b"one"  # create-only never overwrites
    await objects.put("a/c.bin", b"three")
    await objects.put("z/d.bin", b"four")
    assert await objects.list("a/") == ["a/b.bin", "a/c.bin"]
    await objects.delete("a/b.bin")
    assert await objects.list("a/") == ["a/c.bin"]
    with pytest.raises(ObjectStoreError, match="invalid object key"):
        await objects.put("../escape", b"x")


def _messages(n: int, start: int = 1) -> list[ArchivedMessage]:
    return [
        ArchivedMessage(
            seq,
            1_700_000_000_000_000_000 + seq,
            f"ctx.events.a{seq % 3}.DecisionAdded",
            {"Nats-Msg-Id": f"id-{seq}"},
            bytes([seq % 251]) * (seq % 40),
        )
        for seq in range(start, start + n)
    ]


async def test_sealed_segments_read_back_equal_and_a_changed_byte_is_found(
    objects: ObjectStore,
) -> None:
    archive = Archive(objects, "CTX")
    ranges = {"a0": AggregateRange(1, 3, 3, 9, 3, 9)}
    first = await archive.write(_messages(10), ranges)
    again = await archive.write(_messages(10), ranges)  # the same events: the same segment
    assert again.name == first.name
    second = await archive.write(_messages(5, start=11), {})
    assert [e.name for e in await Archive(objects, "CTX").entries()] == [first.name, second.name]
    assert await archive.read(first) == _messages(10)
    assert [m.seq for m in await archive.messages()] == list(range(1, 16))
    assert (await archive.verify()).passed

    blob = await objects.get(first.name)
    assert blob is not None
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0x01
    await objects.put(first.name, bytes(damaged))
    report = await Archive(objects, "CTX").verify()
    assert not report.passed
    assert list(report.corrupt) == [first.name]
    assert report.ok == [second.name]
    with pytest.raises(SegmentError, match="checksum"):
        await Archive(objects, "CTX").read(first)


def test_a_segment_checks_itself_without_its_manifest() -> None:
    blob = segment.encode("CTX", _messages(4))
    header, messages = segment.decode(blob)
    assert header["count"] == 4 and messages == _messages(4)
    for at in (len(segment.MAGIC) + 10, len(blob) - 3):
        bad = bytearray(blob)
        bad[at] ^= 0x40
        with pytest.raises(SegmentError):
            segment.decode(bytes(bad))
    with pytest.raises(SegmentError, match="magic"):
        segment.decode(b"not a segment")


def test_urls_choose_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_object_store(str(tmp_path)), LocalObjectStore)
    assert isinstance(open_object_store(f"file://{tmp_path}"), LocalObjectStore)
    assert isinstance(open_object_store("s3://bucket/prefix", "http://127.0.0.1:1"), S3ObjectStore)
    with pytest.raises(ObjectStoreError, match="unknown scheme"):
        open_object_store("ftp://x/y")
    with pytest.raises(ObjectStoreError, match="no bucket"):
        open_object_store("s3:///prefix")
