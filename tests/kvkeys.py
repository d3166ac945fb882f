"""The keys of a NATS KV bucket, read reliably.

nats-py's ``KeyValue.keys()`` lists through an ordered push consumer and ends the
list when a consumer-info reply says nothing is pending: under load that reply can
come before the messages it counted, and the list is short or empty (and each call
leaves an ephemeral consumer behind for minutes). The stream's own subject counts
(``STREAM.INFO`` with a subjects filter) are one request and exact; a key whose last
entry is a delete or purge marker is not a key.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError


async def kv_keys(nc: NATS, bucket: str) -> list[str]:
    js = nc.jetstream()
    prefix = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    kv = await js.key_value(bucket)
    keys = []
    for subject in sorted(info.state.subjects or {}):
        key = subject[len(prefix) :]
        try:
            await kv.get(key)
        except KeyNotFoundError:  # KeyDeletedError too: the last entry deleted it
            continue
        keys.append(key)
    return keys
