"""Composition root for the event store: settings in, a connected store out."""

from __future__ import annotations

from typing import Any

import nats
from nats.aio.client import Client as NATS

from jetsource.core.codec import EventRegistry
from jetsource.core.settings import JetsourceSettings
from jetsource.eventstore.jetstream import JetStreamEventStore
from jetsource.eventstore.snapshots import JetStreamSnapshotStore


def nats_options(settings: JetsourceSettings) -> dict[str, Any]:
    n = settings.nats
    options: dict[str, Any] = {
        "servers": [settings.nats_url()],
        "connect_timeout": n.connect_timeout_s,
        "max_reconnect_attempts": -1,
        "name": n.name or "jetsource",
    }
    if n.user:
        options["user"] = n.user
        options["password"] = n.password.get_secret_value() if n.password else ""
    if n.token:
        options["token"] = n.token.get_secret_value()
    if n.creds_file:
        options["user_credentials"] = str(n.creds_file)
    if n.nkey_seed_file:
        options["nkeys_seed"] = str(n.nkey_seed_file)
    if n.tls.active:
        import ssl

        context = ssl.create_default_context(cafile=str(n.tls.ca_file) if n.tls.ca_file else None)
        if n.tls.cert_file:
            context.load_cert_chain(str(n.tls.cert_file), str(n.tls.key_file or n.tls.cert_file))
        context.check_hostname = n.tls.verify_hostname
        options["tls"] = context
    return options


async def connect(settings: JetsourceSettings) -> NATS:
    return await nats.connect(**nats_options(settings))


async def release(nc: NATS) -> None:
    """Drain the connection; if it cannot be drained (the server is gone and it is
    reconnecting), close it, so its reconnect loop never outlives its owner."""
    try:
        await nc.drain()
    except Exception:
        await nc.close()


async def open_event_store(
    settings: JetsourceSettings, registry: EventRegistry, provision: bool = False
) -> tuple[NATS, JetStreamEventStore]:
    nc = await connect(settings)
    store = JetStreamEventStore(nc, registry, settings.eventstore)
    if provision:
        await store.ensure_streams()
    else:
        await store.start()
    return nc, store


async def open_snapshot_store(
    nc: NATS, settings: JetsourceSettings, provision: bool = False
) -> JetStreamSnapshotStore:
    snapshots = JetStreamSnapshotStore(
        nc, settings.snapshots, settings.eventstore.request_timeout_s
    )
    if provision:
        await snapshots.ensure_stream()
    else:
        await snapshots.start()
    return snapshots
