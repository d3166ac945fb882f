"""What every benchmark shares: latency stats, CPU accounting, aims and markdown tables.

A benchmark module's ``main(argv)`` prints its tables and returns them (``list[Table]``);
``QUICK`` is the argv of its quick mode (small sizes: a check that the code still runs,
not a measurement). ``python -m bench`` runs them all and writes bench/results.md.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.js.api import StorageType, StoreCompression, StreamConfig

from jetsource.devstack.servers import stop_pid

CLK_TCK = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile of ``values`` (any unit; nearest rank, no interpolation)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Stats:
    """Latencies in seconds of one row's operations and the wall time they took."""

    def __init__(self, name: str, latencies: list[float], seconds: float) -> None:
        self.name, self.latencies, self.seconds = name, sorted(latencies), seconds
        self.cpu: CpuReport | None = None

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The q-quantile latency in milliseconds."""
        return pct(self.latencies, q) * 1000

    @property
    def p50(self) -> float:
        return self.pct(0.5)

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    def line(self, peer: Stats | None = None, unit: str = "cmd/s") -> str:
        ratio = f"  {self.rate / peer.rate:6.1f}x best peer" if peer and peer.rate else ""
        return (
            f"{self.name:<44} {self.rate:>8,.0f} {unit:<5}  p50 {self.p50:7.2f} ms  "
            f"p99 {self.p99:7.2f} ms{ratio}"
        )

    def summary(self, unit: str = "cmd/s") -> str:
        return f"{self.rate:,.0f} {unit}, p50 {ms(self.p50)}, p99 {ms(self.p99)}"

    def latency(self) -> str:
        return f"p50 {ms(self.p50)}, p99 {ms(self.p99)}"


def ms(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


# -- CPU -------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3 of stat(5), utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that ended and were waited for (not of
    those still running, such as the servers a benchmark started)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuReport:
    """CPU seconds each process spent while a row ran, and the operations it did."""

    seconds: dict[str, float]
    wall: float
    operations: int

    def per_op_ms(self) -> dict[str, float]:
        n = max(1, self.operations)
        return {name: s / n * 1000 for name, s in self.seconds.items()}

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def cells(self) -> str:
        """ "client 0.41 + publisher 1.20 + nats-server 0.30 = 1.91 ms CPU/op; 1.6 of 2 cores"."""
        per = self.per_op_ms()
        parts = " + ".join(f"{name} {v:.2f}" for name, v in per.items())
        total = self.total / max(1, self.operations) * 1000
        busy = self.total / self.wall if self.wall else 0.0
        if len(per) > 1:
            parts += f" = {total:.2f}"
        return f"{parts} ms; {busy:.1f} of {CPUS} cores busy"

    def ceiling(self) -> float:
        """Operations/s if every core did only this work at this CPU cost per op."""
        per = self.total / max(1, self.operations)
        return CPUS / per if per else float("inf")


class CpuMeter:
    """CPU seconds of this process (the client: resource.getrusage) and of the server
    processes given by pid (/proc/<pid>/stat), between start() and stop()."""

    def __init__(self, pids: dict[str, int] | None = None, client: str = "client") -> None:
        self.pids = pids or {}
        self.client = client
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0

    def _read(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {self.client: self_cpu_seconds()}
        for name, pid in self.pids.items():
            out[name] = proc_cpu_seconds(pid)
        return out

    def start(self) -> CpuMeter:
        self._start = self._read()
        self._t0 = time.perf_counter()
        return self

    def stop(self, operations: int) -> CpuReport:
        wall = time.perf_counter() - self._t0
        end = self._read()
        seconds = {}
        for name, before in self._start.items():
            after = end.get(name)
            if before is not None and after is not None:
                seconds[name] = after - before
        return CpuReport(seconds, wall, operations)


# -- aims and tables -------------------------------------------------------------------


@dataclass
class Aim:
    """One aim from issue 23 and whether this run's figure meets it."""

    text: str
    met: bool

    @staticmethod
    def at_least(text: str, value: float, target: float) -> Aim:
        return Aim(text, value == value and value >= target)

    @staticmethod
    def at_most(text: str, value: float, target: float) -> Aim:
        return Aim(text, value == value and value <= target)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[list[str], list[Aim]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    label_columns: int = 1  # the leading cells that name a row

    def row(self, cells: Iterable[str], aims: Iterable[Aim] = ()) -> None:
        self.rows.append((list(cells), list(aims)))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def has_aims(self) -> bool:
        return any(aims for _, aims in self.rows)

    @property
    def misses(self) -> list[str]:
        return [
            f"{', '.join(cells[: self.label_columns])}: {a.text}"
            for cells, aims in self.rows
            for a in aims
            if not a.met
        ]

    def markdown(self) -> str:
        columns = list(self.columns)
        if self.has_aims:
            columns += ["aim (issue 23)", "verdict"]
        lines = [f"### {self.title}", "", "| " + " | ".join(columns) + " |"]
        lines.append("|" + "---|" * len(columns))
        for cells, aims in self.rows:
            cells = cells + [""] * (len(self.columns) - len(cells))
            if self.has_aims:
                if aims:
                    missed = [a.text for a in aims if not a.met]
                    verdict = (
                        "**misses its aim**: " + "; ".join(missed) if missed else "meets its aim"
                    )
                    cells += ["; ".join(a.text for a in aims), verdict]
                else:
                    cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines) + "\n"


@dataclass
class StreamDisk:
    """A file-storage stream's bytes on disk, split the way nats-server writes them: the
    newest message block is written as messages come and compressed (s2) only when it is
    sealed, once it is full (8 MB for a stream without limits); every older block is
    sealed. So right after a short run up to one block per stream is still plain, a
    constant; what each message costs in the long run is the sealed blocks' size over
    their messages, plus its share of the files beside the blocks (the index)."""

    now: int  # every file of the stream's directory
    messages: int
    sealed_bytes: int  # the sealed blocks
    sealed_messages: float  # their messages, estimated from their share of the accounting
    other_bytes: int  # files that are not message blocks (the index: grows per subject)
    # The files beside the blocks per message, when measured later than the blocks (the
    # server writes its index now and then, and in full when it stops).
    beside_per_message: float | None = None

    @property
    def per_message_sealed(self) -> float | None:
        """Each message's bytes in the long run: in a sealed block, plus its share of the
        files beside the blocks (the index keeps state per subject)."""
        if self.sealed_messages <= 0 or not self.messages:
            return None
        beside = self.beside_per_message
        if beside is None:
            beside = self.other_bytes / self.messages
        return self.sealed_bytes / self.sealed_messages + beside


def stream_dir(root: Path, stream: str) -> Path:
    return next(p for p in root.rglob(stream) if p.is_dir() and p.parent.name == "streams")


def beside_blocks(root: Path, stream: str) -> int:
    """Bytes of a stream's files that are not message blocks (index, metadata)."""
    return sum(
        f.stat().st_size
        for f in stream_dir(root, stream).rglob("*")
        if f.is_file() and f.suffix != ".blk"
    )


def stream_disk(root: Path, stream: str, messages: int, acct_bytes: int) -> StreamDisk:
    """``messages`` and ``acct_bytes`` from the stream's info (its state)."""
    home = stream_dir(root, stream)
    now = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    blocks = sorted(
        (home / "msgs").glob("*.blk"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0
    )
    other = now - sum(b.stat().st_size for b in blocks)
    if len(blocks) < 2 or not messages:
        return StreamDisk(now, messages, 0, 0.0, other)
    # The newest block is plain: its size is about its messages' share of the accounting.
    last = blocks[-1].stat().st_size
    sealed_messages = max(0.0, (acct_bytes - last) / (acct_bytes / messages))
    sealed = sum(b.stat().st_size for b in blocks[:-1])
    return StreamDisk(now, messages, sealed, sealed_messages, other)


def scratch_dir(prefix: str) -> Path:
    """A temp directory for a benchmark's servers and files, removed when the process
    exits (after every ``finally`` has stopped the servers in it). Benchmarks used to
    leave theirs in the temp dir: about 230 of them, up to 1.2 GB each, after a few
    `make bench`. JETSOURCE_BENCH_KEEP=1 keeps it (its path is printed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("JETSOURCE_BENCH_KEEP") == "1":
        print(f"keeping {path}", file=sys.stderr)
    else:
        atexit.register(shutil.rmtree, path, True)
    return path


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server this bench started, and reap it."""
    if proc is not None and proc.poll() is None:
        stop_pid(proc.pid)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def show(tables: list[Table]) -> list[Table]:
    for table in tables:
        print()
        print(table.markdown())
    return tables


def exit_on_signals() -> None:
    """SIGTERM (a time limit, `kill`) ends the benchmark like Ctrl-C does: as an
    exception, so every ``finally`` stops the servers it started. By default SIGTERM
    killed the process outright and left nats-server, Valkey, ArcadeDB and the services
    running (they run in sessions of their own)."""

    def stop_here(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop_here)


def raw_stream(name: str, subject: str) -> StreamConfig:
    """A stream for raw-publish baselines, configured as the event store's streams are
    (file storage, S2 compression, direct gets)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        storage=StorageType.FILE,
        compression=StoreCompression.S2,
        allow_direct=True,
    )
