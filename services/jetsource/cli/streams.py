"""`jetsource streams ensure`: provision what jetsource keeps in JetStream.

Creates the event stream, the snapshot stream, the dead-letter stream and the
read-model control bucket, or brings existing streams to the configured settings
(replicas, limits, duplicate window). It never deletes or purges anything, so it is
safe to run on every deploy: the Helm chart runs it as a pre-install/pre-upgrade
hook and docker compose as a one-shot service before the services start. Settings
as for the projector (``JETSOURCE_NATS__...``, ``JETSOURCE_EVENTSTORE__...``,
``JETSOURCE_SNAPSHOTS__...``, ``JETSOURCE_PROJECTOR__DLQ_STREAM`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import typer
from nats import errors as nats_errors
from rich.console import Console
from rich.table import Table

from jetsource.core.errors import JetsourceError
from jetsource.eventstore import jsapi
from jetsource.eventstore.bootstrap import redact_url
from jetsource.projector.bootstrap import Projection, open_projection
from jetsource.projector.settings import ProjectorSettings

app = typer.Typer(help="JetStream streams: provision them (idempotent).", no_args_is_help=True)
console = Console()

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


class NatsUnreachableError(Exception):
    pass


async def wait_for_nats(url: str, deadline: float) -> None:
    """Return once one of the NATS servers (``url`` may list several, comma-separated)
    accepts a TCP connection; raise NatsUnreachableError at ``deadline`` (loop time).

    nats-py waits for an absent server forever, and on Python 3.11 a connect given up on
    cannot always be cancelled (a refused attempt can swallow the cancellation), so a
    command that must stop in time checks the servers before it connects."""
    servers = []
    for part in url.split(","):
        split = urlsplit(part.strip())
        servers.append((split.hostname or "127.0.0.1", split.port or 4222))
    loop = asyncio.get_running_loop()
    last: BaseException | None = None
    while True:
        for host, port in servers:
            budget = min(max(deadline - loop.time(), 0.1), 5.0)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), budget)
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if loop.time() + 0.5 >= deadline:
            raise NatsUnreachableError(repr(last))
        await asyncio.sleep(0.5)


async def ensure_all(settings: ProjectorSettings) -> list[Provisioned]:
    """Provision every stream jetsource needs; say per stream what was done."""
    p: Projection = await open_projection(settings, provision=False)
    timeout = settings.eventstore.request_timeout_s
    replies = jsapi.Replies(p.nc)
    await replies.start()
    try:
        replicas = settings.eventstore.replicas
        steps: list[tuple[str, str, Any]] = [
            ("events", settings.eventstore.stream, p.store.ensure_streams),
            ("snapshots", settings.snapshots.stream, p.snapshots.ensure_stream),
            (
                "dead letters",
                settings.projector.dlq_stream,
                lambda: p.dead_letters.ensure_stream(replicas),
            ),
            # A KV bucket is a stream named KV_<bucket>; created once, never changed here.
            ("read-models", f"KV_{settings.projector.control_bucket}", p.control.kv),
        ]
        done = []
        for role, stream, ensure in steps:
            before = await _config(replies, stream, timeout)
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


@app.command()
def ensure(
    timeout: float = typer.Option(
        120.0, "--timeout", min=0.1, help="Give up after this many seconds (NATS unreachable)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON"),
) -> None:
    """Create or update the streams jetsource needs (idempotent).

    The event, snapshot and dead-letter streams and the read-model control bucket:
    created when missing, existing streams brought to the settings. Safe to run
    again: nothing is deleted, stored messages stay.
    """
    settings = ProjectorSettings.load()

    async def go() -> list[Provisioned]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await wait_for_nats(settings.nats_url(), deadline)
        return await asyncio.wait_for(ensure_all(settings), max(deadline - loop.time(), 1.0))

    try:
        done = asyncio.run(go())
    except (NatsUnreachableError, TimeoutError) as exc:
        last = f" (last error: {exc})" if str(exc) else ""
        console.print(
            f"[red]error[/red]: NATS at {redact_url(settings.nats_url())} did not answer "
            f"within {timeout:g} s{last}"
        )
        raise typer.Exit(1) from exc
    except (JetsourceError, jsapi.JsApiError, nats_errors.Error, OSError) as exc:
        console.print(f"[red]error[/red]: {exc!r}")
        raise typer.Exit(1) from exc
    if as_json:
        print(json.dumps([asdict(d) for d in done]))
        return
    table = Table()
    for column in ("role", "stream", "action", "subjects", "replicas", "messages"):
        table.add_column(column, overflow="fold")
    for d in done:
        table.add_row(
            d.role, d.stream, d.action, " ".join(d.subjects), str(d.replicas), str(d.messages)
        )
    console.print(table)
