"""`jetsource observe import FILE.jsonl [--follow]`: the JSONL ingest adapter.

Each line is one canonical event in JSON (``process_id``, ``event_type``, ``data``,
... as in ``proto/jetsource/process/v1/events.proto``; unknown fields are refused).
Lines are normalized (``jetsource.domains.process.adapters``: ids from the file's
identity and the line's offset unless the line has its own, explicit causation),
recorded through the observer in batches, and only then is the position saved to the
state file (``FILE.jetsource-position`` by default): a re-run resumes after the last
recorded line, and re-reading lines already recorded (a crash between the two, a
deleted state file) gives duplicates, never doubles.

``--follow`` keeps reading as the file grows (a partly written last line waits for
its newline) until SIGINT/SIGTERM. A refused line stops the import (exit 1) naming
the line and field, with the position saved just before it. Exit codes: 0 ok,
1 refused, 2 usage, 3 the observer is unreachable, 130 stopped by a signal before the
end of the file (without ``--follow``; the same command resumes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from jetsource._gen.process.v1 import events_pb2 as epb
from jetsource._gen.process.v1 import observer_pb2 as pb
from jetsource._gen.process.v1 import observer_pb2_grpc as pb_grpc
from jetsource.cli import output as out
from jetsource.cli.output import Mode
from jetsource.client import open_channel
from jetsource.core import aio
from jetsource.core.aio import wait_event
from jetsource.core.errors import ValidationError
from jetsource.core.settings import JetsourceSettings

# The process domain (and with it every domain) is imported by the command that runs.
if TYPE_CHECKING:
    from jetsource.domains.process.adapters import JsonlAdapter, Line, PositionFile

app = typer.Typer(help="Feed the process ledger: ingest adapters.", no_args_is_help=True)
INTERRUPTED = 130  # stopped by a signal before the end of the file (as 128 + SIGINT)


def observer_target(flag: str | None) -> str:
    """``--observer``, else ``JETSOURCE_CLIENT__OBSERVER``, else the local observer."""
    if flag:
        return flag
    if os.environ.get("JETSOURCE_CLIENT__OBSERVER"):
        return os.environ["JETSOURCE_CLIENT__OBSERVER"]
    from jetsource.observer.settings import ObserverOptions

    host = os.environ.get("JETSOURCE_OBSERVER__GRPC_HOST", ObserverOptions().grpc_host)
    port = os.environ.get("JETSOURCE_OBSERVER__GRPC_PORT", str(ObserverOptions().grpc_port))
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class TooLargeError(Exception):
    """One event over the observer's gRPC message limit (``index`` in its batch)."""

    def __init__(self, index: int, details: str) -> None:
        super().__init__(details)
        self.index, self.details = index, details


class Importer:
    def __init__(
        self,
        path: Path,
        adapter: JsonlAdapter,
        state: PositionFile,
        stub: pb_grpc.ObserverServiceStub,
        metadata: Any,
        batch: int,
        timeout: float,
        give_up_s: float,
    ) -> None:
        self.path, self.adapter, self.state = path, adapter, state
        self.stub, self.metadata = stub, metadata
        self.batch, self.timeout, self.give_up_s = batch, timeout, give_up_s
        self.lines = self.events = self.recorded = self.duplicates = 0

    async def send(self, events: list[epb.CanonicalEvent], first: int = 0) -> None:
        """Record ``events`` (``first``: the first one's index in the batch). A request
        over the observer's gRPC message limit is split in two, in order: the same
        bytes would never pass; one event alone over it is :class:`TooLargeError`."""
        from jetsource.domains.process.batching import too_large

        try:
            await self.call(events)
        except grpc.aio.AioRpcError as exc:
            if not too_large(exc):
                raise
            if len(events) == 1:
                raise TooLargeError(first, exc.details() or "") from None
            half = len(events) // 2
            await self.send(events[:half], first)
            await self.send(events[half:], first + half)

    async def call(self, events: list[epb.CanonicalEvent]) -> None:
        """One RecordBatch; while the observer is unreachable, resend the same events
        (same ids) with backoff for up to ``give_up_s``."""
        from jetsource.domains.process.batching import too_large

        started, backoff = time.monotonic(), 0.1
        while True:
            try:
                response = await self.stub.RecordBatch(
                    pb.RecordBatchRequest(events=events),
                    timeout=self.timeout,
                    metadata=self.metadata,
                )
            except grpc.aio.AioRpcError as exc:
                if (
                    exc.code().name not in out.UNAVAILABLE_NAMES
                    or too_large(exc)
                    or time.monotonic() - started > self.give_up_s
                ):
                    raise
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            self.events += len(events)
            dup = sum(1 for p in response.positions if p.duplicate)
            self.duplicates += dup
            self.recorded += len(events) - dup
            return

    async def step(self, f: Any, follow: bool) -> bool:
        """Read, record and save one batch; False when no complete line was waiting."""
        from jetsource.domains.process.batching import MAX_REQUEST_BYTES, encoded_size

        lines: list[Line] = []
        events: list[epb.CanonicalEvent] = []
        numbers: list[int] = []  # each event's line
        size = 0
        refused: ValidationError | None = None
        for line in self.adapter.lines(f, follow_partial=follow):
            try:
                normalized = self.adapter.normalize(line)
            except ValidationError as exc:
                refused = exc
                break
            lines.append(line)
            events += normalized
            numbers += [line.number] * len(normalized)
            size += sum(encoded_size(e) for e in normalized)
            # Bounded in bytes too (a line normalized is in this batch: its causation
            # is remembered), so a request stays far below gRPC's message limit.
            if len(lines) >= self.batch or size >= MAX_REQUEST_BYTES:
                break
        if events:
            try:
                await self.send(events)
            except TooLargeError as exc:
                number = numbers[exc.index]
                raise ValidationError(
                    f"line {number}: its event is {events[exc.index].ByteSize()} bytes, over "
                    f"the observer's gRPC message limit ({exc.details}); the lines before "
                    "it in this batch are recorded (importing again finds them), the "
                    "position is saved before the batch",
                    f"line {number}",
                ) from None
        if lines:
            self.adapter.advance(lines[-1])
            self.state.save(self.adapter.position)
            self.lines += len(lines)
        if refused is not None:
            raise refused
        return bool(lines)

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "state": str(self.state.path),
            "lines": self.lines,
            "events": self.events,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "offset": self.adapter.offset,
            "line": self.adapter.line_number,
        }


async def run_import(
    importer: Importer,
    f: Any,
    follow: bool,
    poll_s: float,
    stop: asyncio.Event,
    progress: Progress | None,
) -> bool:
    """Read ``f`` (the file, opened binary) from the adapter's position. False when a
    signal stopped an import without ``follow`` before the end of the file."""
    task = None
    if progress is not None:
        task = progress.add_task(importer.path.name, total=importer.path.stat().st_size)
    while not stop.is_set():
        if importer.adapter.replaced(f):
            # Another --state alone took a new file's lines for the old one's (the same
            # derived ids, answered as duplicates): a new file needs a new --source-id.
            raise ValidationError(
                f"{importer.path} no longer holds what was recorded up to the saved "
                f"position ({importer.adapter.offset} bytes): truncated or replaced; for "
                "a new file give a new --source-id and another --state file (with the "
                "same source id its lines would be taken for the old file's)",
                "state",
            )
        moved = await importer.step(f, follow)
        if progress is not None and task is not None:
            progress.update(
                task, completed=importer.adapter.offset, total=os.fstat(f.fileno()).st_size
            )
        if moved:
            continue
        if not follow:
            return True
        await wait_event(stop, poll_s)
    return follow  # --follow ends at a signal; an import ends at the end of the file


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="A JSONL file: one canonical event per line"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep reading as the file grows"),
    state: Path | None = typer.Option(
        None, "--state", help="Position file (default: FILE.jetsource-position)"
    ),
    source_id_: str | None = typer.Option(
        None, "--source-id", help="Identity of the file in derived event ids (default: its path)"
    ),
    source: str = typer.Option("jsonl", "--source", help="The events' source when a line has none"),
    batch: int = typer.Option(500, "--batch", min=1, max=1000, help="Lines per RecordBatch"),
    observer: str | None = typer.Option(
        None,
        "--observer",
        callback=out.target,
        help="host:port (default: JETSOURCE_CLIENT__OBSERVER)",
    ),
    timeout: float = typer.Option(10.0, "--timeout", callback=out.seconds, help="Seconds per call"),
    give_up: float = typer.Option(
        60.0,
        "--give-up",
        callback=out.seconds_or_zero,
        help="Seconds to keep resending while the observer is away",
    ),
    poll: float = typer.Option(
        0.2, "--poll", callback=out.seconds, help="With --follow: seconds between looks"
    ),
    output: Mode | None = typer.Option(None, "--output", "-o", case_sensitive=False),
) -> None:
    """Record a JSONL file of canonical events (resumable, idempotent on re-import)."""
    from jetsource.domains.process.adapters import JsonlAdapter, PositionFile, source_id

    mode = out.mode(output)
    if output is not None:
        out.set_mode(output)
    if not file.is_file():
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"{file}: no such file")
    settings = JetsourceSettings.load()
    state_file = PositionFile(state or file.with_name(file.name + ".jetsource-position"))
    sid = source_id_ or source_id(file)
    try:
        adapter = JsonlAdapter.resume(sid, state_file.load(), source)
    except (ValidationError, ValueError, KeyError) as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"{state_file.path}: {exc}")
    except OSError as exc:
        out.fail(out.USAGE, "INVALID_ARGUMENT", f"--state {state_file.path}: {exc.strerror}")
    target = observer_target(observer)

    async def main() -> tuple[Importer, bool]:
        channel, metadata = open_channel(target, settings.client)
        importer = Importer(
            file,
            adapter,
            state_file,
            pb_grpc.ObserverServiceStub(channel),
            metadata or None,
            batch,
            timeout,
            give_up,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(sig: signal.Signals) -> None:
            if sig != signal.SIGINT:  # its "stopped" line names it (it said Ctrl-C)
                out.signal_arrived(sig.name)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping, sig)
        show = mode != Mode.json and out.stderr().is_terminal
        progress = (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                console=out.stderr(),
                transient=True,
            )
            if show
            else None
        )
        try:
            if progress is not None:
                with progress:
                    done = await run_import(importer, f, follow, poll, stop, progress)
            else:
                done = await run_import(importer, f, follow, poll, stop, None)
        finally:
            await channel.close()
        return importer, done

    try:
        with open(file, "rb") as f:
            importer, done = aio.run(main())
    except ValidationError as exc:
        out.fail(out.REFUSED, "INVALID_ARGUMENT", str(exc), field=exc.field)
    except OSError as exc:  # the file or the state file: unreadable, unwritable
        where = exc.filename if exc.filename is not None else file
        out.fail(out.REFUSED, "FAILED_PRECONDITION", f"{where}: {exc.strerror or exc}")
    except grpc.aio.AioRpcError as exc:
        code = out.exit_code(exc.code())
        where = f"observer at {target}"
        out.fail(code, exc.code().name, f"{where}: {exc.details()}")
    summary = importer.summary()
    if mode == Mode.json:
        out.emit_json(summary)
    else:
        out.fields(summary.items())
    if not done:
        # Ctrl-C (or SIGTERM) before the end of the file: what was recorded is saved in
        # the state file; it printed the report and exit 0 as if the file were done.
        out.fail(
            INTERRUPTED,
            "CANCELLED",
            f"{file}: stopped at line {importer.adapter.line_number} (Ctrl-C); "
            "run the same command again to resume after it",
        )
