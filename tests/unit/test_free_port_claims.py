"""free_port hands a port to one live process at a time, machine-wide.

Each process remembered only its own ports, so two processes picking at once (the
benchmarks' smoke test runs its groups in parallel) could both pick one that was free
when each looked; the later server then found it taken (CI: `jetsource up: refused:
observer: port(s) [26418] on 127.0.0.1 already in use`). The pickers here are child
processes, so this test session keeps none of their ports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

N = 2000  # of 12,768 ports: two unclaimed picks would share ~300

PICK = (
    "import json, sys\n"
    "from jetsource.devstack.servers import free_port\n"
    "print(json.dumps([free_port() for _ in range(int(sys.argv[1]))]), flush=True)\n"
    "sys.stdin.read()\n"
)


@contextmanager
def picker(n: int) -> Iterator[set[int]]:
    """A process that took ``n`` ports and lives until the block ends."""
    child = subprocess.Popen(
        [sys.executable, "-c", PICK, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        ports = set(json.loads(child.stdout.readline()))
        assert len(ports) == n
        yield ports
    finally:
        child.communicate("", timeout=30)
    assert child.returncode == 0


def test_another_live_process_never_gets_a_port_one_was_given() -> None:
    with picker(N) as first, picker(N) as second:
        assert not first & second, f"{len(first & second)} ports handed out twice"


def test_ports_of_an_ended_process_are_handed_out_again() -> None:
    with picker(3000) as first:
        pass
    with picker(3000) as later:
        assert first & later  # ~700 expected: the ended process holds none of them
