"""The key store's memory of data subjects' keys stays bounded by what is fresh.

Each key read or made was remembered for ``ttl_s`` (a ref found missing for
``missing_ttl_s``) and then only treated as stale: the entry (and the key in it) stayed
in the process for ever, so a long-lived publisher, query, projector or ingest held one
entry for every data subject it ever met (about 290 bytes each: 10,000 subjects
read once with a TTL of 0.5 s left 10,001 entries, 2.9 MB). Expired entries are now
swept out as the memory grows, and what a reader just loaded is still there to look up.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from nats.aio.client import Client as NATS

from jetsource.eventstore.keys import SWEEP_GRACE_S, SWEEP_MIN, JetStreamKeyStore


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _store(monkeypatch: pytest.MonkeyPatch, clock: _Clock) -> JetStreamKeyStore:
    store = JetStreamKeyStore(NATS(), "KEYS_MEMORY", ttl_s=300.0, missing_ttl_s=2.0)

    async def get(name: str) -> tuple[bytes | None, int]:
        # every other subject has a key (32 bytes), the rest none
        digest = hashlib.sha256(name.encode()).digest()
        return (digest if digest[0] % 2 else None), 1

    store._get = get  # type: ignore[method-assign]
    # the store's own clock only (the event loop keeps the real one)
    monkeypatch.setattr("jetsource.eventstore.keys.time", SimpleNamespace(monotonic=clock))
    return store


def _refs(start: int, count: int) -> list[bytes]:
    return [hashlib.sha256(f"subject-{i}".encode()).digest() for i in range(start, start + count)]


async def test_keys_of_subjects_met_once_do_not_stay_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    store = _store(monkeypatch, clock)
    batch = SWEEP_MIN
    for n in range(20):  # 20 readers' batches of new subjects, each past the last's TTL
        refs = _refs(n * batch, batch)
        await store.load(refs)
        for ref in refs:  # what was just loaded is there to decode with
            store.lookup(ref)
        clock.now += 300.0 + SWEEP_GRACE_S + 1
    # before: 20 * 1024 entries, one per subject ever met
    assert len(store._keys) <= 2 * batch


async def test_a_fresh_or_just_expired_key_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    store = _store(monkeypatch, clock)
    kept = _refs(0, 10)
    await store.load(kept)
    clock.now += 5.0  # the missing ones past their 2 s, within the grace
    await store.load(_refs(10, 4 * SWEEP_MIN))  # sweeps on the way
    for ref in kept:
        store.lookup(ref)  # no KeysNotLoadedError
