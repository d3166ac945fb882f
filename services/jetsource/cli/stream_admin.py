"""What `jetsource streams` does against NATS: provision the streams (`ensure`), back
them up to files and restore them. The commands (cli/streams.py) import this module
when they run: it brings the event store, the projection runtime and every domain's
settings (~0.5 s), which `jetsource streams --help` has no use for."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from jetsource import __version__
from jetsource.core.clock import format_rfc3339_ns, now_ns
from jetsource.core.errors import JetsourceError
from jetsource.domains.omni.settings import OmniOptions
from jetsource.eventstore import horizon, jsapi
from jetsource.eventstore.bootstrap import connect, release, require_jetstream
from jetsource.eventstore.jetstream import stream_config
from jetsource.eventstore.reshape import lift_deny_purge
from jetsource.observer.settings import ObserverOptions
from jetsource.projection.bootstrap import Projection, open_projection, projection_domains
from jetsource.projection.deadletters import H_SUBJECT
from jetsource.projection.domain import Domain, DomainRegistry
from jetsource.projection.settings import ProjectorSettings

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"


@dataclass
class Provisioned:
    role: str
    stream: str
    action: str  # created | updated | unchanged
    subjects: list[str]
    replicas: int
    messages: int


async def _config(replies: jsapi.Replies, stream: str, timeout: float) -> dict[str, Any] | None:
    """The stream's info (config and state), or None when it does not exist."""
    try:
        return await jsapi.api(replies, f"STREAM.INFO.{stream}", {}, timeout)
    except jsapi.JsApiError as exc:
        if exc.err_code == jsapi.ERR_STREAM_NOT_FOUND:
            return None
        raise


def _settled(config: dict[str, Any]) -> dict[str, Any]:
    # The server stamps its own version into the metadata on every update.
    return {k: v for k, v in config.items() if k != "metadata"}


def _note(text: str) -> None:
    """A line about work under way: on stderr, so stdout holds only the result (one
    JSON document with --json, one table in plain mode); with JSON output a line
    ``{"warning": ...}``, as output.Warnings writes them, so stderr stays JSON lines."""
    from jetsource.cli import output

    if output.mode() == output.Mode.json:
        text = output.json_text({"warning": text})
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _domain_stream(store: Any, replies: jsapi.Replies, timeout: float) -> Any:
    """Ensure a domain's stream; one made with deny_purge whose policy now allows
    purges (the process ledger's, for the sessions pruner) is moved to the new
    configuration under its name, every message at its sequence (eventstore.reshape)."""

    async def ensure() -> None:
        wanted = stream_config(store.settings)
        info = await _config(replies, wanted["name"], timeout)
        held = await _config(replies, f"{wanted['name']}_RESHAPE", timeout)
        stuck = info is not None and info["config"].get("deny_purge")
        if not wanted["deny_purge"] and (stuck or held is not None):
            await lift_deny_purge(replies, wanted, timeout, _note)
        await store.ensure_streams()

    return ensure


READ_MODELS = "read-models"


def _events_role(domain: Domain) -> str:
    """A domain's event stream's role: ``events`` for the one whose names are the
    event store settings' (context's), ``<domain> events`` for every other."""
    return "events" if domain.settings_key is not None else f"{domain.name} events"


def provisioned_names(
    settings: ProjectorSettings, registry: DomainRegistry
) -> list[tuple[str, str]]:
    """(role, stream) of every stream `ensure` provisions, from the settings and the
    registered domains alone (no connection: `backup --stream` is checked with it
    before NATS is tried). Every registered domain's event stream, in the registry's
    order: ``events`` for the one named by ``JETSOURCE_EVENTSTORE__STREAM`` (context's),
    ``<domain> events`` for each other. The context stream was assumed first: a
    registry without it (omni alone) had ``EVENTS`` listed and its own stream left out."""
    return [
        *((_events_role(d), d.eventstore(settings).stream) for d in registry),
        ("snapshots", settings.snapshots.stream),
        ("dead letters", settings.projector.dlq_stream),
        # A KV bucket is a stream named KV_<bucket>; created once, never changed here.
        (READ_MODELS, f"KV_{settings.projector.control_bucket}"),
    ]


def provisioning(
    settings: ProjectorSettings, p: Projection, replies: jsapi.Replies, timeout: float
) -> list[tuple[str, str, Any]]:
    """(role, stream, how to ensure it) for every stream `ensure` provisions. `backup`
    reads the same list (:func:`provisioned_names`), so the two cannot drift."""
    replicas = settings.eventstore.replicas
    ensures = [
        # The settings' own stream (context's) as it always was; each other domain's
        # moved off deny_purge when its policy allows purges now.
        *(
            p.stores[d.name].ensure_streams
            if d.settings_key is not None
            else _domain_stream(p.stores[d.name], replies, timeout)
            for d in p.domains
        ),
        p.snapshots.ensure_stream,
        lambda: p.dead_letters.ensure_stream(replicas),
        p.control.kv,
    ]
    names = provisioned_names(settings, p.domains)
    return [(role, stream, ensure) for (role, stream), ensure in zip(names, ensures, strict=True)]


async def _require_jetstream(p: Projection, settings: ProjectorSettings) -> None:
    """JetStream answers on ``p``'s server (:func:`require_jetstream`), else ``p`` is
    closed and :class:`JetStreamOffError` raised."""
    try:
        await require_jetstream(p.nc, settings)
    except BaseException:
        await p.close()
        raise


async def ensure_all(settings: ProjectorSettings) -> list[Provisioned]:
    """Provision every stream jetsource needs; say per stream what was done."""
    p: Projection = await open_projection(settings, provision=False)
    timeout = settings.eventstore.request_timeout_s
    await _require_jetstream(p, settings)
    replies = jsapi.Replies(p.nc)
    await replies.start()
    try:
        steps = provisioning(settings, p, replies, timeout)
        done = []
        for role, stream, ensure in steps:
            # Right after a cluster's start (no JetStream meta leader yet) STREAM.INFO
            # is not answered, or answered 503/10008: ensure ended exit 3 "did not
            # answer within <--timeout>" (after 5 s) or exit 1; it waits for the
            # leader as the creates do.
            before = await jsapi.create_waiting(
                partial(_config, replies, stream, timeout), stream, settings.eventstore.replicas
            )
            await ensure()
            after = await _config(replies, stream, timeout)
            assert after is not None, f"stream {stream} missing right after provisioning"
            if before is None:
                action = CREATED
            elif _settled(before["config"]) != _settled(after["config"]):
                action = UPDATED
            else:
                action = UNCHANGED
            done.append(
                Provisioned(
                    role,
                    stream,
                    action,
                    list(after["config"].get("subjects", [])),
                    int(after["config"].get("num_replicas", 1)),
                    int(after["state"].get("messages", 0)),
                )
            )
        return done
    finally:
        await replies.stop()
        await p.close()


# --- backup and restore ---------------------------------------------------------------
#
# Message by message, through the JetStream API (batched direct get out, publish in):
# a backup is a folder of JSON Lines files anyone can read, and a restore can rename the
# streams and their subjects, so it goes into a new stream beside the old one, or into an
# empty server. nats-server's own snapshot ($JS.API.STREAM.SNAPSHOT / RESTORE, the `nats
# stream backup` command) keeps the stored timestamps and gaps too, but restores under the
# stream's own name and subjects only.

BACKUP_FORMAT = "jetsource-streams-backup/1"
MANIFEST = "manifest.json"
# Publish-time checks and batch markers: evaluated again on restore, they would refuse it.
_SKIP_ON_RESTORE = ("Nats-Expected-", "Nats-Batch-", "Nats-Required-Api-Level")
# Set by the server; refused or meaningless in a create request.
_SERVER_CONFIG = {"created", "metadata", "sealed"}
# The restored stream's duplicate window while it is written (the server's smallest): a
# dead letter filed twice (retried, failed again) keeps its message id, and both copies
# must go back in. A message id seen again within it waits the window out first.
_RESTORE_DUPLICATE_WINDOW_NS = 100_000_000
_RESTORE_DUPLICATE_WINDOW_S = _RESTORE_DUPLICATE_WINDOW_NS / 1e9 + 0.05


class BackupSettings(ProjectorSettings):
    """The projector's settings, and where other services keep what a backup must hold:
    ``JETSOURCE_OMNI__...`` (the raw payload archive, the identity handles) and
    ``JETSOURCE_OBSERVER__CLAIMS_BUCKET`` (the process ledger's claims)."""

    omni: OmniOptions = OmniOptions()
    observer: ObserverOptions = ObserverOptions()


@dataclass(frozen=True)
class Owned:
    role: str
    stream: str
    bucket: str = ""  # the KV bucket the stream holds (KV_<bucket>), if it is one
    horizons_of: str = ""  # the event stream whose compaction horizons it holds


# `ensure`'s role names that backups have always said otherwise.
_BACKUP_ROLES = {"dead letters": "dead-letters"}


def owned_streams(settings: BackupSettings, registry: DomainRegistry) -> list[Owned]:
    """Every stream and KV bucket jetsource owns that holds what cannot be rebuilt:
    the streams `ensure` provisions (every registered domain's events, snapshots, dead
    letters; of the read-model control bucket only the operators' decisions, which
    :func:`backup_streams` writes apart, see DECISIONS),
    each event stream's compaction horizons, the omni raw payload archive, and the
    buckets of the personal-data keys (without them no personal field can be read),
    the process ledger's claims (idempotency for ever) and the omni identity handles.
    Not the partition leases (renewed by the running projectors). From the settings
    and the registered domains alone: `--stream` is checked before NATS is tried."""
    owned: dict[str, Owned] = {}
    events: list[str] = []
    for role, stream in provisioned_names(settings, registry):
        if role == READ_MODELS:
            continue
        owned.setdefault(stream, Owned(_BACKUP_ROLES.get(role, role), stream))
        if role.endswith("events"):
            events.append(stream)
    moved = settings.omni.events_stream  # omni's events elsewhere (omni_domain)
    if moved:
        owned.setdefault(moved, Owned("omni events", moved))
        events.append(moved)
    kv: list[tuple[str, str, str]] = [
        ("horizons", horizon.bucket(stream), stream) for stream in dict.fromkeys(events)
    ]
    kv += [("keys", d.eventstore(settings).keys_bucket, "") for d in registry]
    kv += [
        ("process claims", settings.observer.claims_bucket, ""),
        ("omni handles", settings.omni.identity_bucket, ""),
    ]
    owned.setdefault(settings.omni.raw_stream, Owned("omni raw", settings.omni.raw_stream))
    for role, bucket, of in kv:
        owned.setdefault(f"KV_{bucket}", Owned(role, f"KV_{bucket}", bucket, of))
    return list(owned.values())


@dataclass
class StreamBackup:
    role: str
    stream: str
    file: str
    messages: int
    first_seq: int
    last_seq: int
    subjects: list[str]
    bucket: str = ""  # a KV bucket's name: restored as one (KV_<bucket>, $KV.<bucket>.>)
    horizons_of: str = ""  # renamed with this event stream when --rename names it
    sha256: str = ""  # of the file's bytes: a restore checks it before writing anything


def _message_line(raw: jsapi.RawMessage) -> str:
    headers = {k: v for k, v in raw.headers.items() if k not in jsapi.DIRECT_GET_HEADERS}
    return json.dumps(
        {
            "seq": raw.seq,
            "subject": raw.subject,
            "time": format_rfc3339_ns(raw.time_ns),
            "headers": headers,
            "data": base64.b64encode(raw.data).decode("ascii"),
        },
        separators=(",", ":"),
    )


async def _stored(
    replies: jsapi.Replies, stream: str, info: dict[str, Any], page: int, timeout: float
) -> AsyncIterator[jsapi.RawMessage]:
    """Every message of the stream, oldest first. A stream without direct gets (a KV
    bucket made by nats-py's defaults) is read from its leader, ``page`` sequences at a
    time up to the last one ``info`` names (the gaps of a bucket answer nothing)."""
    if info["config"].get("allow_direct"):
        seq = 1
        while True:
            got = await jsapi.direct_get_page(replies, stream, None, seq, page, timeout)
            for raw in got.messages:
                yield raw
            if got.pending == 0 or not got.messages:
                return
            seq = got.messages[-1].seq + 1
    first = max(int(info["state"].get("first_seq", 1)), 1)
    last = int(info["state"].get("last_seq", 0))
    for at in range(first, last + 1, page):
        got_all = await asyncio.gather(
            *(
                jsapi.leader_get(replies, stream, {"seq": seq}, timeout)
                for seq in range(at, min(at + page, last + 1))
            )
        )
        for one in got_all:
            if one is not None:
                yield one


# The operators' decisions kept in the read-model control bucket, per model: the
# active version (a cutover) and the stream sequences discarded from its dead letters
# (every version steps over them by rule). Not the rest of the entry: build states,
# progress and the last replay describe read stores a restore does not bring back
# (the read models are built again, from the restored streams). Read positions
# (checkpoints) live in the read stores, not here.
DECISIONS = "read-models.json"


async def _decisions(
    p: Projection, settings: ProjectorSettings, replies: jsapi.Replies, timeout: float
) -> dict[str, Any] | None:
    """The control bucket's decisions per model, with the event stream each model
    reads (its discarded sequences are that stream's); None when there is no bucket."""
    from nats.js.errors import NoKeysError

    bucket = settings.projector.control_bucket
    if await _config(replies, f"KV_{bucket}", timeout) is None:
        return None
    kv = await p.control.kv()
    try:
        listed = await kv.keys()
    except NoKeysError:
        listed = []
    # Every registered model's own entry: nats-py's keys() can end early under load
    # (repair void missed a model so); what it lists beside them is kept as well.
    keys = sorted(set(p.model_names()) | set(listed))
    models: dict[str, dict[str, Any]] = {}
    for model in keys:
        try:
            control = await p.control.get(model)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(
                f"read-model control bucket {bucket}, key {model!r}: not a control entry ({exc!r})"
            ) from exc
        if control is None:
            continue
        try:
            stream = p.store_for(model).settings.stream
        except (JetsourceError, ValueError):
            stream = ""  # a model this build does not know: its entry is kept as it is
        models[model] = {
            "stream": stream,
            "active": control.active,
            "discarded": sorted(set(control.discarded)),
        }
    return {"bucket": bucket, "models": models}


async def backup_streams(
    settings: BackupSettings,
    folder: Path,
    page: int = 256,
    only: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    staged: _Staged | None = None,
) -> list[StreamBackup]:
    """Write every message of every stream jetsource owns (:func:`owned_streams`; with
    ``only``, of these streams alone) to ``folder/<stream>.jsonl`` (first line: the
    stream's config and state; then one line per message, oldest first) and
    ``folder/manifest.json`` (each file's sha256 in it). ``folder`` exists. The files
    are written under temporary names and moved into place only once all are whole,
    the manifest last (:class:`_Staged`): a run that fails or is interrupted leaves a
    backup already in ``folder`` as it was. ``staged``: :func:`backup_check` of these
    arguments, made before connecting (let go here)."""
    if staged is None:
        staged = backup_check(settings, folder, only)
    try:
        return await _backup_streams(settings, page, only, progress, staged)
    finally:
        if staged.locked:
            staged.discard()  # what was not moved into place (a failed or interrupted run)
        staged.unlock()


def backup_check(settings: BackupSettings, folder: Path, only: list[str] | None) -> _Staged:
    """The checks of a backup that need no server, made before NATS is tried (with NATS
    away they were said as "not reachable" after the whole connect wait): --stream
    naming only streams jetsource owns (exit 1 naming it), and the folder held for this
    run (another backup or restore using it is refused naming it). The folder, held."""
    owned = owned_streams(settings, projection_domains(settings))
    control_stream = f"KV_{settings.projector.control_bucket}"
    unknown = sorted(set(only or ()) - {o.stream for o in owned} - {control_stream})
    if unknown:
        raise OptionError(
            f"--stream {', '.join(unknown)}: not a stream jetsource owns; these are: "
            + ", ".join([*(o.stream for o in owned), control_stream]),
            "--stream",
        )
    staged = _Staged(folder)
    staged.lock()
    return staged


async def _backup_streams(
    settings: BackupSettings,
    page: int,
    only: list[str] | None,
    progress: Callable[[int, int], None] | None,
    staged: _Staged,
) -> list[StreamBackup]:
    timeout = settings.eventstore.request_timeout_s
    p: Projection = await open_projection(settings, provision=False)
    await _require_jetstream(p, settings)
    replies = jsapi.Replies(p.nc)
    await replies.start()
    done: list[StreamBackup] = []
    try:
        owned = owned_streams(settings, p.domains)
        control_stream = f"KV_{settings.projector.control_bucket}"
        infos = []
        for o in owned:
            if only and o.stream not in only:
                continue
            info = await _config(replies, o.stream, timeout)
            if info is None:
                continue  # never created (no dead letters yet, say): nothing to keep
            infos.append((o, info))
        # Nothing to keep is a mistake, not an empty backup: the wrong server (or the
        # wrong names) would otherwise give a backup that restores nothing, exit 0.
        found = {o.stream for o, _ in infos}
        absent = [s for s in dict.fromkeys(only or ()) if s not in found]
        if absent:
            raise BackupError(f"--stream {', '.join(absent)}: does not exist on this server")
        events = [o.stream for o in owned if o.role.endswith("events")]
        if not only and not found.intersection(events):
            raise BackupError(
                f"no event stream exists on this server ({', '.join(events)}): nothing of "
                "jetsource's to back up; check JETSOURCE_NATS__URL and the stream settings"
            )
        # Progress by messages, of all the streams as they were when first asked.
        total = sum(int(info["state"].get("messages", 0)) for _, info in infos)
        written = 0
        for o, info in infos:
            file = f"{o.stream}.jsonl"
            count, first, last = 0, 0, 0
            with staged.open(file) as out:
                header = {"role": o.role, "config": info["config"], "state": info["state"]}
                if o.bucket:
                    header["bucket"] = o.bucket
                out.line(json.dumps(header, separators=(",", ":")))
                async for raw in _stored(replies, o.stream, info, page, timeout):
                    out.line(_message_line(raw))
                    count += 1
                    first = first or raw.seq
                    last = raw.seq
                    written += 1
                    if progress is not None:
                        progress(written, max(total, written))
            done.append(
                StreamBackup(
                    o.role,
                    o.stream,
                    file,
                    count,
                    first,
                    last,
                    list(info["config"]["subjects"]),
                    o.bucket,
                    o.horizons_of,
                    staged.sha256[file],
                )
            )
        decisions = None
        if not only or control_stream in only:
            decisions = await _decisions(p, settings, replies, timeout)
        manifest: dict[str, Any] = {
            "format": BACKUP_FORMAT,
            "jetsource": __version__,
            "created": format_rfc3339_ns(now_ns()),
            "streams": [asdict(d) for d in done],
        }
        if decisions is not None:
            with staged.open(DECISIONS) as out:
                out.line(json.dumps(decisions, indent=1))
            bucket = settings.projector.control_bucket
            row = StreamBackup(
                READ_MODELS,
                control_stream,
                DECISIONS,
                len(decisions["models"]),
                0,
                0,
                [f"$KV.{bucket}.>"],
                bucket,
                sha256=staged.sha256[DECISIONS],
            )
            manifest["read_models"] = asdict(row)
            done.append(row)
        with staged.open(MANIFEST) as out:
            out.line(json.dumps(manifest, indent=2))
        staged.commit()
    finally:
        await replies.stop()
        await p.close()
    return done


# A file of a backup being written is named so, beside the old backup's files, until
# the whole backup is written; then each is moved into place, the manifest last.
PARTIAL = ".partial-"


class _File:
    """A backup file being written: its bytes' sha256 as they go; a write the disk
    refuses (full, read-only) names the file."""

    def __init__(self, staged: _Staged, name: str) -> None:
        self._staged, self._name = staged, name
        self._path = staged.folder / name
        self._hash = hashlib.sha256()
        self._out = staged.partial(name).open("wb")

    def line(self, text: str) -> None:
        data = (text + "\n").encode("utf-8")
        self._hash.update(data)
        try:
            self._out.write(data)
        except OSError as exc:
            raise self._staged.refused(self._path, exc) from exc

    def __enter__(self) -> _File:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            self._out.close()  # flushes: a full disk may say so only here
        except OSError as error:
            if exc is None:
                raise self._staged.refused(self._path, error) from error
        if exc is None:
            self._staged.sha256[self._name] = self._hash.hexdigest()


class _Staged:
    """A new backup written into ``folder`` without touching the backup already there:
    every file under a temporary name (:data:`PARTIAL`), moved into place only once all
    are whole, the manifest last. A run that fails or is interrupted before that leaves
    the folder as it was (:meth:`discard` removes its temporary files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sha256: dict[str, str] = {}
        self._names: list[str] = []
        self._committed = False
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the folder for this run alone (:func:`_hold_folder`): a second backup
        into it at once wrote the same temporary files, one run's renames beside the
        other's, and the first ended saying the folder was unchanged after the second
        had replaced it."""
        try:
            self._lock = _hold_folder(self.folder)
            # A run killed (kill -9, the OOM killer, a power cut) left its temporary
            # files; held, the folder has no other run's: they go (a backup of other
            # streams kept them for good).
            for left in self.folder.glob(f"{PARTIAL}*"):
                left.unlink(missing_ok=True)
        except OSError as exc:
            raise self.refused(self.folder, exc) from exc

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def partial(self, name: str) -> Path:
        return self.folder / f"{PARTIAL}{name}"

    def open(self, name: str) -> _File:
        self._names.append(name)
        try:
            return _File(self, name)
        except OSError as exc:
            raise self.refused(self.folder / name, exc) from exc

    def refused(self, path: Path, exc: OSError) -> BackupError:
        return BackupError(
            f"{path}: {exc.strerror or exc}; the backup was not written "
            f"(what {self.folder} held before is unchanged)"
        )

    def commit(self) -> None:
        """Move every file into place, the manifest last, with SIGINT and SIGTERM held
        off meanwhile (delivered once it is done): a renaming is all that is left."""
        names = sorted(self._names, key=lambda n: n == MANIFEST)
        with _signals_held():
            for name in names:
                try:
                    os.replace(self.partial(name), self.folder / name)
                except OSError as exc:
                    raise self.refused(self.folder / name, exc) from exc
            self._committed = True

    def discard(self) -> None:
        if self._committed:
            return
        for name in self._names:
            with contextlib.suppress(OSError):
                self.partial(name).unlink(missing_ok=True)


def _hold_folder(folder: Path) -> int:
    """A lock on the backup folder itself for one `streams backup` or `restore` at a
    time (let go when the process ends, however it ends): the open folder, to close.
    Held by another run, refused naming the folder, before anything is written."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise BackupError(
            f"{folder}: another `streams backup` or `streams restore` is using this folder "
            "(nothing was changed); wait for it to end, or run it again then"
        ) from exc
    return fd


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (ValueError, OSError):  # not the main thread: nothing to hold off
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _rewrite(subject: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if subject == old or subject.startswith(old + "."):
            return new + subject[len(old) :]
    return subject


@dataclass
class StreamRestore:
    role: str
    source: str
    stream: str
    messages: int
    same_sequences: bool  # every message got its backed-up sequence


def _target(entry: dict[str, Any], names: dict[str, str]) -> str:
    """The stream an entry is restored as: --rename's, else a horizons bucket follows
    its event stream's rename, else its own name."""
    stream: str = entry["stream"]
    of = entry.get("horizons_of") or ""
    if stream not in names and of in names:
        return horizon.kv_stream(names[of])
    return names.get(stream, stream)


def _kv_bucket(entry: dict[str, Any], target: str) -> str:
    """The KV bucket a backed-up bucket is restored as (its stream ``target`` is
    KV_<bucket>); any other target is refused naming --rename."""
    new = target[3:] if target.startswith("KV_") else ""
    if not new:
        raise OptionError(
            f"{entry['stream']} is the KV bucket {entry.get('bucket')}: it can be restored "
            f"only as a stream named KV_<bucket> (--rename {entry['stream']}=KV_NEW)",
            "--rename",
        )
    return new


def _entry_prefixes(
    folder: Path, entry: dict[str, Any], target: str, prefixes: dict[str, str]
) -> dict[str, str]:
    """The subject moves for one entry. A KV bucket stays one: its stream is
    KV_<bucket> and its subjects $KV.<bucket>.>, so a renamed bucket's subjects move
    with it; anything else is refused before a message is written."""
    bucket = entry.get("bucket") or ""
    if not bucket:
        return prefixes
    new = _kv_bucket(entry, target)
    moved = {f"$KV.{bucket}": f"$KV.{new}", **prefixes} if new != bucket else prefixes
    with (folder / entry["file"]).open(encoding="utf-8") as lines:
        subjects = json.loads(next(lines))["config"].get("subjects", [])
    if [_rewrite(s, moved) for s in subjects] != [f"$KV.{new}.>"]:
        raise BackupError(
            f"{entry['stream']} restored as the KV bucket {new} needs the subjects "
            f"$KV.{new}.> alone, not {[_rewrite(s, moved) for s in subjects]}"
        )
    return moved


def _manifest(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str]:
    """The backup manifest's stream entries, its read-model decisions entry and when
    it was made (what names the backup in a restored stream's RESTORE_MARK);
    one that cannot be read as such is refused naming it."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != BACKUP_FORMAT:
            raise BackupError(f"{path}: not a {BACKUP_FORMAT} manifest")
        entries: list[dict[str, Any]] = manifest["streams"]
        decided: dict[str, Any] | None = manifest.get("read_models")
        for entry in [*entries, *([decided] if decided is not None else [])]:
            for key in ("role", "stream", "file"):
                if not isinstance(entry[key], str) or not entry[key]:
                    raise ValueError(f"an entry's {key} is {entry[key]!r}")
            if "/" in entry["file"] or "\0" in entry["file"] or entry["file"].startswith("."):
                raise ValueError(f"file {entry['file']!r} is not in the backup folder")
            # Whole numbers >= 0 as the backup writes them: a 1e400 (Infinity) was an
            # INTERNAL OverflowError, an object a TypeError while restoring, true a 1.
            for key in ("messages", "first_seq", "last_seq"):
                if key in entry or key == "messages":
                    value = entry[key]
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ValueError(f"an entry's {key} is {value!r}")
            for key in ("bucket", "horizons_of", "sha256"):
                if not isinstance(entry.get(key) or "", str):
                    raise ValueError(f"an entry's {key} is {entry[key]!r}")
        created = str(manifest.get("created") or "")
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BackupError(f"{path}: not a {BACKUP_FORMAT} manifest ({exc!r})") from exc
    return entries, decided, created


def _check_file(folder: Path, entry: dict[str, Any]) -> None:
    """Read a backup file through before anything is written: a truncated or corrupt
    one is refused naming the file and the line, and nothing is restored."""
    from jetsource.cli import output

    path = folder / entry["file"]
    count, last, number = 0, 0, 0
    digest = hashlib.sha256()
    try:
        with path.open("rb") as lines:  # decoded line by line: the error says where
            for number, raw in enumerate(lines, start=1):
                digest.update(raw)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BackupError(f"{path}: line {number}: not UTF-8 ({exc.reason})") from exc
                try:
                    row = json.loads(line)
                    if number == 1:
                        if not isinstance(row.get("config"), dict):
                            raise ValueError("no stream config")
                        continue
                    seq = row["seq"]
                    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
                        raise ValueError(f"seq {seq!r} is not a stream sequence")
                    if not isinstance(row["subject"], str) or not isinstance(row["headers"], dict):
                        raise ValueError("subject or headers of the wrong type")
                    base64.b64decode(row["data"], validate=True)
                except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                    if not line.endswith("\n"):  # the last line, and not whole
                        raise BackupError(
                            f"{path}: line {number}: cut short (the file is truncated)"
                        ) from exc
                    why = f"{type(exc).__name__}: {exc}"
                    raise BackupError(
                        f"{path}: line {number}: not a backed-up message ({why})"
                    ) from exc
                if seq <= last:
                    raise BackupError(
                        f"{path}: line {number}: sequence {seq} after {last} (out of order)"
                    )
                count, last = count + 1, seq
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror or exc}") from exc
    if number == 0:
        raise BackupError(f"{path}: empty (no stream config on line 1)")
    if count != int(entry["messages"]):
        raise BackupError(
            f"{path}: {output.count(count, 'message')}, the manifest says {entry['messages']} "
            "(truncated?)"
        )
    _check_sum(path, entry, digest.hexdigest())


def _check_sum(path: Path, entry: dict[str, Any], digest: str) -> None:
    """A file whose bytes are not the ones the backup wrote (a flipped bit in a
    payload still reads as a message) is refused naming it; a backup made before
    manifests held checksums has none to check (:func:`_unchecked` says so)."""
    wanted = entry.get("sha256")
    if wanted and wanted != digest:
        raise BackupError(
            f"{path}: its sha256 is not the manifest's (the file changed after the backup "
            "was made): nothing restored"
        )


def _read_decisions(folder: Path, entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models' decisions of a backup (:data:`DECISIONS`), checked."""
    path = folder / entry["file"]
    try:
        data = path.read_bytes()
        _check_sum(path, entry, hashlib.sha256(data).hexdigest())
        body = json.loads(data.decode("utf-8"))
        models: dict[str, dict[str, Any]] = body["models"]
        for name, d in models.items():
            d["active"] = int(d["active"])
            d["discarded"] = [int(x) for x in d["discarded"]]
            d["stream"] = str(d.get("stream") or "")
            if d["active"] < 1 or not name:
                raise ValueError(f"model {name!r}: active version {d['active']}")
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror or exc}") from exc
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        ArithmeticError,
        RecursionError,
    ) as exc:
        raise BackupError(f"{path}: not a read-model decisions file ({exc})") from exc
    return models


@dataclass
class RestorePlan:
    """What a restore takes from the backup folder alone (:func:`restore_plan`): the
    manifest's entries to restore, its read-model decisions entry and their models,
    when the backup was made, and the folder held (:func:`_hold_folder`) until
    :meth:`release`."""

    entries: list[dict[str, Any]]
    decided: dict[str, Any] | None
    created: str
    models: dict[str, dict[str, Any]]
    held: int | None = None

    def release(self) -> None:
        if self.held is not None:
            os.close(self.held)
            self.held = None


def restore_plan(folder: Path, names: dict[str, str], only: list[str] | None = None) -> RestorePlan:
    """Every check of a restore that needs no server, made before NATS is tried (with
    NATS away a bad manifest was said as "NATS is not reachable" after the whole
    connect wait): the folder held for this run, the manifest, --stream naming what the
    backup holds, the targets --rename gives (two entries onto one stream, a KV bucket
    or the control bucket as anything but a KV bucket), the read-model decisions file
    (the streams' files are read once the server says which are still to be written:
    restored from this backup already, one is left as it is). Refused naming the file
    or the option; the folder is let go then."""
    try:
        held = _hold_folder(folder)
    except OSError as exc:
        raise BackupError(f"{folder}: {exc.strerror or exc}") from exc
    try:
        plan = _plan_restore(folder, names, only)
    except BaseException:
        os.close(held)
        raise
    plan.held = held
    return plan


def _plan_restore(folder: Path, names: dict[str, str], only: list[str] | None) -> RestorePlan:
    entries, decided, created = _manifest(folder)
    known = [e["stream"] for e in entries] + ([decided["stream"]] if decided else [])
    unknown = sorted(set(only or ()) - set(known))
    if unknown:
        raise OptionError(
            f"--stream {', '.join(unknown)}: not in this backup; it holds: " + ", ".join(known),
            "--stream",
        )
    entries = [e for e in entries if not only or e["stream"] in only]
    if decided is not None and only and decided["stream"] not in only:
        decided = None
    targets: dict[str, str] = {}
    for entry in [*entries, decided] if decided is not None else entries:
        target = _target(entry, names)
        if target in targets:
            raise OptionError(
                f"{entry['stream']} and {targets[target]} both go to {target}", "--rename"
            )
        targets[target] = entry["stream"]
        if entry is decided:  # merged into what is there (decisions add up)
            if not target.startswith("KV_") or len(target) == 3:
                raise OptionError(
                    f"{entry['stream']} is the read-model control bucket: it can be "
                    f"restored only as a KV bucket (--rename {entry['stream']}=KV_NEW)",
                    "--rename",
                )
            continue
        if entry.get("bucket"):
            _kv_bucket(entry, target)
        # Its file is not opened here: a stream restored from this backup already is
        # left as it is and its file never read (it may have left the folder since),
        # which only the server says (its RESTORE_MARK). A file not there is refused
        # after connecting, for a stream still to be written (_check_file).
    models = _read_decisions(folder, decided) if decided is not None else {}
    return RestorePlan(entries, decided, created, models)


async def restore_streams(
    settings: ProjectorSettings,
    folder: Path,
    names: dict[str, str],
    prefixes: dict[str, str],
    only: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    plan: RestorePlan | None = None,
) -> list[StreamRestore]:
    """Create each backed-up stream (with ``only``, these of them; renamed by
    ``names``, its subjects' roots by ``prefixes``; a KV bucket as a KV bucket) and
    publish its messages in their order, then write the read models' decisions into
    the control bucket. A target that exists with messages, or a file that is not
    whole, is refused before anything is written. One restore (or backup) at a time
    uses a folder (:func:`_hold_folder`): two restores of it at once both wrote every
    message, the second going on from where it found the first. ``plan``: the
    :func:`restore_plan` of these arguments, made before connecting (let go here)."""
    if plan is None:
        plan = restore_plan(folder, names, only)
    try:
        return await _restore_streams(settings, folder, names, prefixes, plan, progress)
    finally:
        plan.release()


async def _restore_streams(
    settings: ProjectorSettings,
    folder: Path,
    names: dict[str, str],
    prefixes: dict[str, str],
    restoring: RestorePlan,
    progress: Callable[[int, int], None] | None,
) -> list[StreamRestore]:
    entries, decided, created = restoring.entries, restoring.decided, restoring.created
    timeout = settings.eventstore.request_timeout_s
    nc = await connect(settings)
    try:
        await require_jetstream(nc, settings)
    except BaseException:
        await release(nc)
        raise
    replies = jsapi.Replies(nc)
    await replies.start()
    done: list[StreamRestore] = []
    try:
        plan: list[tuple[dict[str, Any], str, dict[str, str], StreamRestore | None]] = []
        for entry in entries:  # refuse before writing anything (the rest: restore_plan)
            target = _target(entry, names)
            info = await _config(replies, target, timeout)
            mark = _restore_mark(info)
            if mark.startswith(f"{created} done"):  # restored from this backup before
                _note(f"{target}: restored from this backup already; left as it is")
                whole = StreamRestore(
                    entry["role"],
                    entry["stream"],
                    target,
                    int(entry["messages"]),
                    not mark.endswith(" renumbered"),
                )
                plan.append((entry, target, prefixes, whole))
                continue
            if (
                info is not None
                and int(info["state"].get("messages", 0)) > 0
                and mark != f"{created} running"  # one that stopped midway goes on
            ):
                new = "KV_NEW" if entry.get("bucket") else "NEW"
                raise BackupError(
                    f"stream {target} exists and holds messages: restore writes only into "
                    f"a new or empty stream (--rename {entry['stream']}={new}, or restore "
                    "the others alone with --stream)"
                )
            _check_file(folder, entry)
            plan.append((entry, target, _entry_prefixes(folder, entry, target, prefixes), None))
        models = restoring.models
        unchecked = [e["file"] for e, _, _, already in plan if not already and not e.get("sha256")]
        if decided is not None and not decided.get("sha256"):
            unchecked.append(decided["file"])
        if unchecked:
            _note(
                f"{folder}: a backup without checksums (made before they were kept): "
                f"{', '.join(unchecked)} read through and checked line by line, not byte "
                "for byte"
            )
        # The discarded sequences per event stream: followed if a restore renumbers.
        wanted: dict[str, set[int]] = {}
        for d in models.values():
            wanted.setdefault(d["stream"], set()).update(d["discarded"])
        total = sum(int(e["messages"]) for e, _, _, already in plan if already is None)
        moved: dict[str, dict[int, int] | None] = {}
        before = 0
        for entry, target, subjects, already in plan:
            if already is not None:
                done.append(already)
                continue
            seqs: dict[int, int] = {}

            def step(n: int, at: int = before) -> None:
                if progress is not None:
                    progress(at + n, total)

            one = await _restore_one(
                replies,
                folder,
                entry,
                target,
                subjects,
                timeout,
                wanted.get(entry["stream"], set()),
                seqs,
                step,
                created,
            )
            done.append(one)
            before += one.messages
            moved[entry["stream"]] = None if one.same_sequences else seqs
        if decided is not None:
            target = _target(decided, names)
            done.append(await _restore_decisions(nc, settings, decided, target, models, moved))
    finally:
        await replies.stop()
        await release(nc)
    return done


async def _restore_decisions(
    nc: Any,
    settings: ProjectorSettings,
    entry: dict[str, Any],
    target: str,
    models: dict[str, dict[str, Any]],
    moved: dict[str, dict[int, int] | None],
) -> StreamRestore:
    """Each model's entry in the control bucket ``target``: its backed-up active
    version, live (the projector builds it from the restored stream), and its
    discarded sequences (the restored stream's, when the restore renumbered it; one
    not restored is left out). An entry made meanwhile keeps its versions and gets
    the discards added."""
    from jetsource.projection.control import Control, ControlError

    control = Control(nc, target[3:], settings.eventstore.replicas)
    same = True
    for name, d in models.items():
        renumbered = moved.get(d["stream"])
        discarded = set(d["discarded"])
        if renumbered is not None:
            discarded = {renumbered[s] for s in discarded if s in renumbered}
            same = False
        for _ in range(10):
            current = await control.ensure(name, d["active"])
            if current.active != d["active"]:
                _note(
                    f"read model {name}: its control entry was there (v{current.active} "
                    f"active), kept; the backup's v{d['active']} was not made active "
                    f"(jetsource projector rebuild/cutover)"
                )
            if discarded <= set(current.discarded):
                break
            current.discarded = sorted(discarded | set(current.discarded))
            try:
                await control.save(name, current)
                break
            except ControlError:
                continue  # changed meanwhile (a projector starting): read it again
        else:
            raise BackupError(f"read-model control entry {name!r} kept changing; run again")
    return StreamRestore(entry["role"], entry["stream"], target, len(models), same)


# In a restored stream's config metadata: "<the backup's created time> running" while
# it is written, "... done" (" renumbered" when its sequences are new) once whole. A
# restore run again goes on with a stream it left midway and leaves a whole one be.
RESTORE_MARK = "jetsource_restore"


def _restore_mark(info: dict[str, Any] | None) -> str:
    if info is None:
        return ""
    return str((info["config"].get("metadata") or {}).get(RESTORE_MARK, ""))


def _gap_subject(subjects: list[str]) -> str | None:
    """A subject of the stream no message uses, to hold the place of the sequences a
    backed-up stream did not have (deleted, purged, compacted): None when the stream
    has no subject of the form ``a.b.>``."""
    for subject in subjects:
        root = subject[:-2]
        if subject.endswith(".>") and root and "*" not in root.split("."):
            return f"{root}._jetsource_restore_gap"
    return None


async def _hold_places(
    replies: jsapi.Replies, subject: str, count: int, atomic: bool, timeout: float
) -> None:
    """Publish ``count`` empty messages on ``subject`` (purged once the stream is
    restored): the stream's next message gets the sequence it had."""
    while count > 0:
        n = min(count, jsapi.BATCH_LIMIT if atomic else 1)
        fill = [jsapi.OutMessage(subject, b"", {}) for _ in range(n)]
        if atomic and n > 1:
            await jsapi.publish_atomic_batch(replies, fill, f"restore-gap-{now_ns()}", timeout)
        else:
            await jsapi.publish(replies, fill[0], timeout)
        count -= n


async def _restore_one(
    replies: jsapi.Replies,
    folder: Path,
    entry: dict[str, Any],
    target: str,
    prefixes: dict[str, str],
    timeout: float,
    wanted: set[int],
    moved: dict[int, int],
    progress: Callable[[int], None],
    backup_id: str = "",
) -> StreamRestore:
    """One stream, every message at its backed-up sequence where the target allows
    it: the leading gap by the stream's first sequence, a gap inside by messages on
    a subject of its own, purged at the end (so the stream is written with deletes
    and purges allowed; its own deny_delete / deny_purge are set last). The restored
    sequences of the ``wanted`` backed-up ones go into ``moved``. A target this
    backup's restore left midway (RESTORE_MARK) goes on after its last message, once
    every message in it is found to be the backup's, in order."""
    from jetsource.cli import output

    with (folder / entry["file"]).open(encoding="utf-8") as lines:
        header = json.loads(next(lines))
        backed = {k: v for k, v in header["config"].items() if k not in _SERVER_CONFIG}
        backed["name"] = target
        backed["subjects"] = [_rewrite(s, prefixes) for s in backed.get("subjects", [])]
        config = dict(backed, duplicate_window=_RESTORE_DUPLICATE_WINDOW_NS)
        config["metadata"] = {RESTORE_MARK: f"{backup_id} running"}
        first_seq = int(entry.get("first_seq") or 0)
        existing = await _config(replies, target, timeout)
        resuming = _restore_mark(existing) == f"{backup_id} running"
        gap = None if entry.get("bucket") else _gap_subject(config["subjects"])
        if existing is None:
            if gap is not None:
                config.update(deny_delete=False, deny_purge=False)
            if first_seq > 1:
                config["first_seq"] = first_seq
            try:
                info = await jsapi.create_waiting(
                    lambda: jsapi.api(replies, f"STREAM.CREATE.{target}", config, timeout),
                    target,
                    int(config.get("num_replicas") or 1),
                )
            except jsapi.JsApiError as exc:
                if exc.err_code != jsapi.ERR_SUBJECTS_OVERLAP:
                    raise
                raise OptionError(
                    f"stream {target}: its subjects {', '.join(config['subjects'])} overlap "
                    "those of a stream on this server (the one it was backed up from?): a "
                    "stream restored beside another needs subjects of its own: give "
                    "--subject-prefix OLD=NEW for them",
                    "--subject-prefix",
                ) from exc
        else:
            held = existing["config"]  # deny flags set cannot be lifted
            config["deny_delete"] = bool(held.get("deny_delete"))
            config["deny_purge"] = bool(held.get("deny_purge"))
            info = await jsapi.api(replies, f"STREAM.UPDATE.{target}", config, timeout)
            if held.get("deny_purge"):
                gap = None  # its places cannot be purged again: it is renumbered
            elif not resuming and first_seq > int(info["state"].get("last_seq", 0)) + 1:
                info = await jsapi.api(
                    replies, f"STREAM.PURGE.{target}", {"seq": first_seq}, timeout
                )
                info = await jsapi.api(replies, f"STREAM.INFO.{target}", {}, timeout)
        following = int(info["state"].get("last_seq", 0)) + 1
        atomic = bool(config.get("allow_atomic"))
        count, same, held_places = 0, True, 0
        if resuming and int(info["state"].get("messages", 0)) > 0:
            count, same, held_places = await _written_before(
                replies, target, info, lines, prefixes, gap, moved, wanted, timeout
            )
            _note(
                f"{target}: {output.count(count, 'message')} restored before; going on from there"
            )
            progress(count)
        recent: OrderedDict[str, float] = OrderedDict()  # message id -> published at
        for line in lines:
            m = json.loads(line)
            seq = int(m["seq"])
            if gap is not None and seq > following:
                await _hold_places(replies, gap, seq - following, atomic, timeout)
                held_places += seq - following
            headers = {k: v for k, v in m["headers"].items() if not k.startswith(_SKIP_ON_RESTORE)}
            if H_SUBJECT in headers:  # a dead letter names its event's subject
                headers[H_SUBJECT] = _rewrite(headers[H_SUBJECT], prefixes)
            await _outwait_duplicate(recent, headers.get("Nats-Msg-Id"))
            ack = await jsapi.publish(
                replies,
                jsapi.OutMessage(
                    _rewrite(m["subject"], prefixes), base64.b64decode(m["data"]), headers
                ),
                timeout,
            )
            if seq in wanted:
                moved[seq] = ack.seq
            same = same and ack.seq == seq
            following = ack.seq + 1
            count += 1
            progress(count)
    if held_places and gap is not None:
        await jsapi.api(replies, f"STREAM.PURGE.{target}", {"filter": gap}, timeout)
    # The backed-up duplicate window and deny flags again.
    final = {k: v for k, v in backed.items() if k != "first_seq"}
    for deny in ("deny_delete", "deny_purge"):
        final[deny] = bool(backed.get(deny)) or bool(config.get(deny))
    final["metadata"] = {RESTORE_MARK: f"{backup_id} done" + ("" if same else " renumbered")}
    await jsapi.api(replies, f"STREAM.UPDATE.{target}", final, timeout)
    if count != int(entry["messages"]):
        raise BackupError(
            f"{entry['file']}: {output.count(count, 'message')}, the manifest says "
            f"{entry['messages']}"
        )
    if not same and not entry.get("bucket"):
        why = "the target denies purges" if existing is not None else "no subject a.b.> to use"
        _note(
            f"{target}: restored at new sequences ({why}): voids, discarded dead letters, "
            "horizons and claims that name its old ones do not follow"
        )
    return StreamRestore(entry["role"], entry["stream"], target, count, same)


async def _written_before(
    replies: jsapi.Replies,
    target: str,
    info: dict[str, Any],
    lines: Any,
    prefixes: dict[str, str],
    gap: str | None,
    moved: dict[int, int],
    wanted: set[int],
    timeout: float,
) -> tuple[int, bool, int]:
    """What a restore that stopped midway wrote into ``target``: each of its messages
    (place-holders aside) must be the backup's next one (subject, data), read from
    ``lines`` as it goes. Returns (messages, all at their sequences, place-holders);
    refused if anything else is there (the stream is not this backup's alone)."""
    count, same, held = 0, True, 0
    async for raw in _stored(replies, target, info, 256, timeout):
        if gap is not None and raw.subject == gap:
            held += 1
            continue
        line = next(lines, None)
        m = json.loads(line) if line is not None else None
        if (
            m is None
            or raw.subject != _rewrite(m["subject"], prefixes)
            or raw.data != base64.b64decode(m["data"])
        ):
            raise BackupError(
                f"stream {target}: a restore of this backup stopped midway, but its message "
                f"{raw.seq} is not the backup's next one: delete the stream (nats stream rm "
                f"{target}) and restore again"
            )
        seq = int(m["seq"])
        if seq in wanted:
            moved[seq] = raw.seq
        same = same and raw.seq == seq
        count += 1
    return count, same, held


async def _outwait_duplicate(recent: OrderedDict[str, float], msg_id: str | None) -> None:
    """Wait until ``msg_id`` (when published within the duplicate window) is no longer
    a duplicate to the server; remember it as published now."""
    now = time.monotonic()
    while recent and now - next(iter(recent.values())) > _RESTORE_DUPLICATE_WINDOW_S:
        recent.popitem(last=False)
    if not msg_id:
        return
    if msg_id in recent:
        await asyncio.sleep(max(0.0, _RESTORE_DUPLICATE_WINDOW_S - (now - recent.pop(msg_id))))
    recent[msg_id] = time.monotonic()


class BackupError(JetsourceError):
    pass


class OptionError(BackupError):
    """A backup or restore refused for what an option said (or left out), found against
    the backup or the server: refused (exit 1) as before, naming the option
    (``field``, in the JSON error too)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field
