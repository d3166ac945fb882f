"""Reading a whole stream in a test, on a connection of its own (direct gets)."""

from __future__ import annotations

import json

import nats

from jetsource.eventstore import jsapi


async def stored(url: str, stream: str) -> list[jsapi.RawMessage]:
    """The first 1,000 messages of ``stream`` on the server at ``url``."""
    nc = await nats.connect(url)
    replies = jsapi.Replies(nc)
    await replies.start()
    try:
        page = await jsapi.direct_get_page(replies, stream, None, 1, 1000, 5)
        return page.messages
    finally:
        await replies.stop()
        await nc.close()


async def stream_names(url: str) -> set[str]:
    """Every stream's name on the server at ``url``: the listing is paged (nats-py's
    ``streams_info()`` answers its first page alone, and a session's shared server holds
    more), so asked page by page."""
    nc = await nats.connect(url)
    names: set[str] = set()
    try:
        while True:
            reply = await nc.request(
                "$JS.API.STREAM.NAMES", json.dumps({"offset": len(names)}).encode(), timeout=5
            )
            page = json.loads(reply.data)
            names.update(page.get("streams") or [])
            if not page.get("streams") or len(names) >= page["total"]:
                return names
    finally:
        await nc.close()
