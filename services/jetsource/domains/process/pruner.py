"""The pruner's steps on the ledger (``jetsource.domains.process.pruning`` says why):
a tombstone, then the purge of the tree's subjects and claims, then a completion
marker once a run is through. Every step is safe to repeat; ``finish_pending`` makes a
killed run converge.

It needs the pruner's NATS credentials: the stream must allow purges (its policy names
the ``pruner`` role) and only the pruner's user may call ``$JS.API.STREAM.PURGE`` on it
and on the claims bucket's stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jetsource.core.envelope import ANY
from jetsource.core.errors import StreamMissingError
from jetsource.domains.process.claims import DEFAULT_BUCKET
from jetsource.domains.process.pruning import (
    MAX_IDS_PER_TOMBSTONE,
    PRUNE_COMPLETED,
    PRUNER_ID,
    completed,
    is_tombstone,
    pruned_ids,
    tombstone,
)
from jetsource.eventstore import jsapi


class PurgeRefusedError(PermissionError):
    """The stream (or its account) refuses this client's purge: nothing was removed."""


class TreePruner:
    def __init__(
        self,
        store: Any,  # the ledger stream's JetStreamEventStore
        replies: jsapi.Replies,
        stream: str,
        subject_prefix: str,
        claims_bucket: str = DEFAULT_BUCKET,
        timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._replies = replies
        self._stream = stream
        self._prefix = subject_prefix
        self._claims = claims_bucket
        self._timeout = timeout_s

    async def check(self) -> None:
        """Refuse before any tombstone when the stream denies purges (a purge of
        nothing: ``process.events.jetsource-pruner-probe.>`` has no messages)."""
        probe = f"{PRUNER_ID}-probe"
        await self._purge(self._stream, f"{self._prefix}.{probe}.>")
        await self._purge(f"KV_{self._claims}", f"$KV.{self._claims}.e.{probe}.*")

    async def prune_tree(self, root: str, ids: Sequence[str], reason: str = "") -> int:
        """Tombstone, then purge every process of the tree; events removed."""
        ids = list(dict.fromkeys(ids))
        for i in range(0, len(ids), MAX_IDS_PER_TOMBSTONE):
            await self._store.append(
                PRUNER_ID, [tombstone(root, ids[i : i + MAX_IDS_PER_TOMBSTONE], reason)], ANY
            )
        return await self._purge_all(ids)

    async def complete(self) -> None:
        """Everything tombstoned so far is purged (appended after a run's last tree)."""
        version = await self._store.last_version(PRUNER_ID)
        if version:
            await self._store.append(PRUNER_ID, [completed(version)], ANY)

    async def finish_pending(self) -> int:
        """Purge again what tombstones after the last completion name (a run killed
        after a tombstone and before its purge), then mark them complete; how many
        tombstones were pending."""
        last = await self._store.last_version(PRUNER_ID)
        pending: list[list[str]] = []
        high = last
        while high >= 1:
            low = max(1, high - 63)
            records = await self._store.read_aggregate(PRUNER_ID, low, high)
            done = False
            for r in reversed(records):
                if r.event_type == PRUNE_COMPLETED:
                    done = True
                    break
                if is_tombstone(r):
                    pending.append(pruned_ids(r))
            if done:
                break
            high = low - 1
        if not pending:
            return 0
        await self._purge_all([i for ids in reversed(pending) for i in ids])
        await self.complete()
        return len(pending)

    async def _purge_all(self, ids: Sequence[str]) -> int:
        removed = 0
        for pid in ids:
            removed += await self._purge(self._stream, f"{self._prefix}.{pid}.>")
            # The idempotency claims of its events go too (see the README): a retry of a
            # pruned event after this is recorded again, and the read models ignore it.
            for kind in ("e", "k"):
                await self._purge(f"KV_{self._claims}", f"$KV.{self._claims}.{kind}.{pid}.*")
        return removed

    async def _purge(self, stream: str, subject: str) -> int:
        try:
            body = await jsapi.api(
                self._replies, f"STREAM.PURGE.{stream}", {"filter": subject}, self._timeout
            )
        except jsapi.JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                if stream != self._stream:
                    return 0  # no claims bucket (nothing was recorded through an observer)
                # the ledger's stream is not there: say that (and what creates it), not
                # that the pruner lacks rights
                raise StreamMissingError(f"stream {stream} does not exist") from exc
            raise PurgeRefusedError(
                f"stream {stream} refused the purge ({exc.description}): its policy must "
                "allow purges for the pruner and this client must use the pruner's NATS user"
            ) from exc
        except TimeoutError as exc:
            # NATS drops a request its permissions deny: no answer at all.
            raise PurgeRefusedError(
                f"no answer to the purge of {subject} on {stream}: this NATS user may not "
                "purge (only the pruner's may), or the server is away"
            ) from exc
        return int(body.get("purged", 0))
