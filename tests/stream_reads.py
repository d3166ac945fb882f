"""Reading a whole stream in a test, on a connection of its own (direct gets)."""

from __future__ import annotations

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
