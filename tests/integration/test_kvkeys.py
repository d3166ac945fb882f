"""The test helper that lists a KV bucket's keys: every live key, no deleted or purged one."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from tests.kvkeys import kv_keys


async def test_kv_keys_lists_live_keys_only(nc: NATS, unique: str) -> None:
    bucket = f"KK_{unique}"
    kv = await nc.jetstream().create_key_value(bucket=bucket, history=5)
    try:
        assert await kv_keys(nc, bucket) == []
        for key in ("a.1", "b.2", "c.3", "d.4"):
            await kv.put(key, b"x")
        await kv.put("a.1", b"y")
        await kv.delete("b.2")
        await kv.purge("c.3")
        assert await kv_keys(nc, bucket) == ["a.1", "d.4"]
    finally:
        await nc.jetstream().delete_key_value(bucket)
