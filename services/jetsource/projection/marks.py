"""A model version's birth mark: a random token stored with the model when its
worker first runs it, checked first by every write. A store emptied or replaced no
longer holds it, so the write raises ``StoreLost`` (writing nothing) and the worker
builds the version again from its replay start. How the token is stored and read is
the store's (``jetsource.projection.valkey.BirthMark``,
``jetsource.projection.graph.GraphMark``); what is expected of it is here."""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod


class Mark(ABC):
    def __init__(self) -> None:
        self.expected: str | None = None

    @abstractmethod
    async def stored(self) -> str | None:
        """The mark the store holds now, None if none."""

    @abstractmethod
    async def _keep_or_store(self, token: str) -> None:
        """Store ``token`` unless the store already holds a mark."""

    async def take(self) -> str:
        """Keep the stored mark, or store a new one if there is none; expect it."""
        await self._keep_or_store(uuid.uuid4().hex)
        self.expected = await self.stored() or ""
        return self.expected

    async def expect(self) -> str:
        """The mark writes expect: the worker's (taken at its start), else (a model
        written without a worker: a replay, a discard) the stored one, taken now."""
        if self.expected is None:
            return await self.take()
        return self.expected

    async def lost(self) -> bool:
        """Whether the stored mark is no longer the one writes expect (only once one
        is expected): the store was emptied or replaced."""
        return self.expected is not None and await self.stored() != self.expected
