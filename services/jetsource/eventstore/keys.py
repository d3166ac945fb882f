"""The key store of personal data: one AES-256 data key per data subject, on JetStream.

A KV-shaped stream (``KV_<bucket>``, default bucket ``JETSOURCE_KEYS``, one subject
per key, history 1) holds:

- ``$KV.<bucket>.pepper``: a random secret; a subject's key reference is
  HMAC-SHA256(pepper, subject) (``jetsource.core.crypto.subject_ref``), so neither
  the events nor this bucket ever carry the subject itself;
- ``$KV.<bucket>.k.<hex ref>``: the subject's data key (32 raw bytes).

The bucket is made on first use. Unlike a stock KV bucket it allows deleting a
message, because erasure needs a *secure* delete: ``erase`` overwrites the key's
stored message in place (``STREAM.MSG.DELETE`` without ``no_erase``) and then writes a
delete marker on its subject. Every key store subscribes to the bucket's subjects, so
a running reader forgets a destroyed key as soon as the marker is published; keys
read from the bucket are also forgotten after ``ttl_s`` in case a notice was missed
(a reconnect), and refs found missing after ``missing_ttl_s``.

Readers call :meth:`load` (async) for the refs of the messages they are about to
decode, then :meth:`lookup` (sync) while decoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from jetsource.core import crypto, deadline
from jetsource.core.errors import DeadlineCutError, EventStoreUnavailableError
from jetsource.core.natsping import round_trip
from jetsource.eventstore import jsapi, refusals
from jetsource.eventstore.jsapi import JsApiError, NoRespondersError, OutMessage, RawMessage

DEFAULT_BUCKET = "JETSOURCE_KEYS"
# Keys remembered past their freshness are swept out once the memory holds twice what
# it held after the last sweep (at least SWEEP_MIN): an expired entry is only ever read
# again to be replaced, so without it every data subject ever met stayed in memory
# (and its key with it) for the life of the process. One is kept SWEEP_GRACE_S past its
# expiry: a reader looks up what it just loaded, within one request's time.
SWEEP_MIN = 1024
SWEEP_GRACE_S = 60.0
ANNOUNCE_TIMEOUT_S = 10.0  # nats-py's flush() default, which this wait replaces
_PEPPER = "pepper"
_KV_OP = "KV-Operation"
# Core subject on which an erasure is announced again once the read models are
# written again (processes drop the states they folded meanwhile).
ERASED_SUBJECT = "jetsource.erased."


class KeysNotLoadedError(RuntimeError):
    """A sealed event was decoded before its keys were loaded (a reader that did not
    call ``load``/``open`` first): a bug in that reader, never a silent erasure."""


@dataclass(frozen=True)
class Erasure:
    subject_ref: str  # hex
    existed: bool  # a key was there (and is now destroyed)
    key_seq: int  # where it was stored in the key stream (0: none)


def stream_config(bucket: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "name": f"KV_{bucket}",
        "subjects": [f"$KV.{bucket}.>"],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "max_msgs_per_subject": 1,
        "allow_rollup_hdrs": True,
        "deny_delete": False,  # erasure deletes (securely) one message
        "deny_purge": False,
        "allow_direct": True,
        "compression": "none",
        "num_replicas": replicas,
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "duplicate_window": 120_000_000_000,
    }


class JetStreamKeyStore:
    def __init__(
        self,
        nc: NATS,
        bucket: str = DEFAULT_BUCKET,
        *,
        replicas: int = 1,
        timeout_s: float = 5.0,
        ttl_s: float = 300.0,
        missing_ttl_s: float = 2.0,
    ) -> None:
        self._nc = nc
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self._replicas = replicas
        self._timeout = timeout_s
        self._ttl = ttl_s
        self._missing_ttl = missing_ttl_s
        self._replies = jsapi.Replies(nc)
        self._pepper: bytes | None = None
        # ref -> (key or None when destroyed/absent, monotonic time it expires)
        self._keys: dict[bytes, tuple[bytes | None, float]] = {}
        self._sweep_at = SWEEP_MIN  # the size of ``_keys`` that sweeps it next
        self._sub: Any = None
        self._erased_sub: Any = None
        self._ready = False
        self._gone = False  # the bucket's stream was found deleted (see _still_gone)
        self._lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Listen for erasures (cheap: no JetStream call); the bucket is made when a
        first key is."""
        if self._sub is None:
            await self._replies.start()
            # Their tasks outlive the call that started them (the first append).
            with deadline.detached():
                self._sub = await self._nc.subscribe(f"$KV.{self.bucket}.k.*", cb=self._notice)
                self._erased_sub = await self._nc.subscribe(
                    f"{ERASED_SUBJECT}{self.bucket}.*", cb=self._notice
                )

    @property
    def listening(self) -> bool:
        """Erasure notices are heard (:meth:`start` ran, :meth:`close` did not since)."""
        return self._sub is not None

    async def _ensure(self) -> None:
        if self._ready:
            return
        await self._locked()
        try:
            if not self._ready:
                await self.start()
                await jsapi.ensure_stream(
                    self._replies, stream_config(self.bucket, self._replicas), self._timeout
                )
                self._ready = True
        finally:
            self._lock.release()

    async def _locked(self) -> None:
        """``_lock``, waited for within the deadline of the call being served: another
        call creating the bucket holds it (a cluster without a meta leader: up to
        jsapi.PLACEMENT_WAIT_S, and without a deadline of its own, for good), and a
        call waiting behind it outlived its deadline (a bare DEADLINE_EXCEEDED)."""
        what = f"the key store's bucket {self.bucket}, being created by another call"
        wait, cut = deadline.wait(math.inf, what)
        try:
            async with asyncio.timeout(wait if cut else None):
                await self._lock.acquire()
        except TimeoutError as exc:
            raise deadline.cut_short(what, wait) from exc

    async def close(self) -> None:
        for sub in (self._sub, self._erased_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._sub = self._erased_sub = None
        await self._replies.stop()
        self._ready = False

    async def _notice(self, msg: Any) -> None:
        """Any write on a key's subject (created, destroyed) or an erasure notice:
        forget what we knew; an erasure also tells this process's state caches."""
        hexref = msg.subject.rsplit(".", 1)[-1]
        with contextlib.suppress(ValueError):
            self._keys.pop(bytes.fromhex(hexref), None)
        if msg.subject.startswith(ERASED_SUBJECT) or (msg.headers or {}).get(_KV_OP) in (
            "DEL",
            "PURGE",
        ):
            crypto.note_erasure()

    # -- helpers ----------------------------------------------------------------

    def _subject(self, name: str) -> str:
        return f"$KV.{self.bucket}.{name}"

    @staticmethod
    def _live(raw: RawMessage | None) -> bytes | None:
        if raw is None or raw.headers.get(_KV_OP) in ("DEL", "PURGE"):
            return None
        return raw.data

    async def _get(self, name: str) -> tuple[bytes | None, int]:
        await self.start()
        try:
            raw = await jsapi.last_for_subject(
                self._replies, self.stream, self._subject(name), self._timeout
            )
        except NoRespondersError:
            return None, 0  # no bucket: no key was ever made
        return self._live(raw), 0 if raw is None else raw.seq

    async def _create(self, name: str, value: bytes) -> bytes:
        """Put ``value`` under ``name`` unless a live value is there: return the one kept.

        The bucket full or sealed is :class:`~jetsource.eventstore.refusals.JetStreamRefusedError`
        and the bucket gone (deleted under a running process) ``StreamMissingError``,
        both naming it (UNAVAILABLE to a client; before, INTERNAL and, after the
        request timeout, DEADLINE_EXCEEDED)."""
        await self._ensure()
        with refusals.writes_to(self.stream, self._missing):
            if self._gone:
                await self._still_gone()
            for attempt in range(5):
                current, seq = await self._get(name)
                if current is not None:
                    return current
                headers = {"Nats-Expected-Last-Subject-Sequence": str(seq)}
                try:
                    await jsapi.publish(
                        self._replies,
                        OutMessage(self._subject(name), value, headers),
                        self._timeout,
                    )
                    return value
                except JsApiError as exc:
                    if exc.err_code != jsapi.ERR_WRONG_LAST_SEQUENCE:
                        raise
                except NoRespondersError:
                    # No responders and the stream there (STREAM.INFO answers, else its
                    # not-found is raised): a replicated bucket between leaders, e.g.
                    # just made by another process. It was "gone: the keys are lost".
                    await self._still_gone()
                    await asyncio.sleep(0.2 * 2**attempt)
                except DeadlineCutError:  # the call's deadline: nothing said of the bucket
                    raise
                except TimeoutError:
                    # This store listens on the bucket's key subjects itself: with the
                    # stream gone a write there is heard by that listener, which never
                    # answers, instead of coming back "no responders" at once.
                    await self._still_gone()
                    raise
        raise RuntimeError(f"key store {self.bucket}: {name} kept changing under a create")

    @property
    def _missing(self) -> str:
        return (
            f"the key store of personal data, bucket {self.bucket}, is gone (deleted?): "
            "the keys it held, and so the personal values they sealed, are lost; "
            "restarting the service creates it again, empty"
        )

    async def _still_gone(self) -> None:
        """Ask the server whether the bucket's stream is there (quick): if not, remember
        it (later creates ask first rather than wait out a timeout each) and raise its
        not-found error; once it is back (made again by a restarted process), carry on."""
        try:
            await jsapi.api(self._replies, f"STREAM.INFO.{self.stream}", {}, self._timeout)
        except JsApiError as exc:
            if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
                self._gone = True
            raise
        self._gone = False

    async def pepper(self, create: bool) -> bytes | None:
        if self._pepper is None:
            value, _ = await self._get(_PEPPER)
            if value is None and create:
                value = await self._create(_PEPPER, crypto.new_key())
            self._pepper = value
        return self._pepper

    def _remember(self, ref: bytes, key: bytes | None) -> None:
        ttl = self._ttl if key is not None else self._missing_ttl
        now = time.monotonic()
        self._keys[ref] = (key, now + ttl)
        if len(self._keys) >= self._sweep_at:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the entries expired more than SWEEP_GRACE_S ago (each sweep's cost is
        paid by as many inserts since the last one)."""
        before = now - SWEEP_GRACE_S
        self._keys = {r: k for r, k in self._keys.items() if k[1] > before}
        self._sweep_at = max(SWEEP_MIN, 2 * len(self._keys))

    # -- writers ----------------------------------------------------------------

    def cached(self, subjects: Sequence[str]) -> tuple[crypto.RefKey, ...] | None:
        """Each subject's (ref, key), in order, from memory alone, or None when a key is
        not known (or no longer fresh) here: then :meth:`keys_for`. The append path's
        common case, without a coroutine."""
        pepper = self._pepper
        if pepper is None:
            return None
        now = time.monotonic()
        if len(subjects) == 1:  # one person per event, mostly
            ref = crypto.subject_ref(pepper, subjects[0])
            known = self._keys.get(ref)
            if known is None or known[0] is None or known[1] <= now:
                return None
            return ((ref, known[0]),)
        out = []
        for subject in subjects:
            ref = crypto.subject_ref(pepper, subject)
            known = self._keys.get(ref)
            if known is None or known[0] is None or known[1] <= now:
                return None
            out.append((ref, known[0]))
        return tuple(out)

    async def keys_for(self, subjects: Sequence[str]) -> tuple[crypto.RefKey, ...]:
        """Each subject's (ref, key), in order, creating the keys of subjects that have
        none."""
        if not subjects:
            return ()
        pepper = await self.pepper(create=True)
        assert pepper is not None
        out = []
        for subject in subjects:
            ref = crypto.subject_ref(pepper, subject)
            known = self._keys.get(ref)
            if known is not None and known[0] is not None and known[1] > time.monotonic():
                out.append((ref, known[0]))
                continue
            key = await self._create("k." + ref.hex(), crypto.new_key())
            self._remember(ref, key)
            out.append((ref, key))
        return tuple(out)

    async def erase(self, subject: str) -> Erasure:
        """Destroy the subject's key: its stored message is overwritten in place, then
        a delete marker tells every running reader. Erasing again finds nothing."""
        pepper = await self.pepper(create=False)
        if pepper is None:  # nothing was ever sealed with this store
            return Erasure("", False, 0)
        ref = crypto.subject_ref(pepper, subject)
        name = "k." + ref.hex()
        key, seq = await self._get(name)
        if key is not None:
            await jsapi.delete_message(self._replies, self.stream, seq, self._timeout)
        # The marker: a key created meanwhile (a new event about the subject after the
        # delete) is legitimately newer, so the marker only goes on an empty subject.
        headers = {_KV_OP: "DEL", "Nats-Expected-Last-Subject-Sequence": "0"}
        with contextlib.suppress(JsApiError):
            await jsapi.publish(
                self._replies, OutMessage(self._subject(name), b"", headers), self._timeout
            )
        self._keys.pop(ref, None)
        self._remember(ref, None)
        crypto.note_erasure()
        return Erasure(ref.hex(), key is not None, seq if key is not None else 0)

    async def holds(self, ref: bytes) -> bool:
        """Whether the key of ``ref`` is stored (read only: what an erase would destroy)."""
        key, _ = await self._get("k." + ref.hex())
        return key is not None

    async def ref_of(self, subject: str) -> bytes | None:
        pepper = await self.pepper(create=False)
        return None if pepper is None else crypto.subject_ref(pepper, subject)

    # -- readers ----------------------------------------------------------------

    async def load(self, refs: Iterable[bytes]) -> None:
        """Make :meth:`lookup` answer for these refs (fetching what is not known now)."""
        now = time.monotonic()
        missing = [
            r for r in dict.fromkeys(refs) if (k := self._keys.get(r)) is None or k[1] <= now
        ]
        if not missing:
            return
        for ref in missing:
            key, _ = await self._get("k." + ref.hex())
            self._remember(ref, key)

    def forget(self, ref: bytes) -> None:
        """Known destroyed from now on (an erase made elsewhere in this process)."""
        self._remember(ref, None)
        crypto.note_erasure()

    async def announce(self, ref: bytes) -> None:
        """Tell every process again that ``ref`` was erased (after the read models
        were written again): their state caches drop what they folded meanwhile."""
        await self.start()
        await self._nc.publish(f"{ERASED_SUBJECT}{self.bucket}.{ref.hex()}", b"")
        # Sent before returning, as flush() promised, but a wait that times out (a
        # hung server) never breaks the connection (core.natsping).
        if not await round_trip(self._nc, ANNOUNCE_TIMEOUT_S):
            raise EventStoreUnavailableError(
                f"NATS did not confirm the erasure announcement within {ANNOUNCE_TIMEOUT_S:g} s"
            )

    def lookup(self, ref: bytes) -> bytes | None:
        """The key of ``ref``, or None when it was destroyed (or never existed)."""
        known = self._keys.get(ref)
        if known is None:
            raise KeysNotLoadedError(f"key {ref.hex()} was not loaded before decoding")
        return known[0]
