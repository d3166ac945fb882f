"""The Valkey client is valkey-py (``valkey.asyncio.Valkey``), with libvalkey's C reply
parser, and nothing in jetsource, its tests' helpers or the benchmarks loads ``redis``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from valkey.asyncio import Valkey
from valkey.asyncio.connection import DefaultParser
from valkey.utils import LIBVALKEY_AVAILABLE

from jetsource.core.settings import JetsourceSettings, ValkeySettings
from jetsource.devstack.servers import free_port
from jetsource.projection.contract import TransientError
from jetsource.projection.valkey import connect_valkey, valkey_io

ROOT = Path(__file__).resolve().parents[2]


def test_no_module_imports_redis() -> None:
    """Every module of the package and the benchmarks, imported in a fresh interpreter,
    and the lazy imports (probes, embedded server clients) run once: no ``redis``."""
    script = textwrap.dedent(
        """
        import importlib, pkgutil, sys
        import jetsource, bench
        for pkg in (jetsource, bench):
            for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                if m.name.endswith("__main__"):
                    continue
                importlib.import_module(m.name)
        import tests.notes_domain
        from jetsource.devstack.probes import probe_valkey
        from jetsource.devstack.servers import ValkeyServer, free_port
        try:
            probe_valkey(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        except Exception:
            pass
        from pathlib import Path
        assert not ValkeyServer(Path("/nonexistent"), port=free_port()).ready()
        loaded = sorted(m for m in sys.modules if m == "redis" or m.startswith("redis."))
        assert not loaded, loaded
        assert "valkey" in sys.modules
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_client_is_valkey_with_the_c_parser() -> None:
    settings = JetsourceSettings(valkey=ValkeySettings(url="redis://127.0.0.1:1/0"))
    client = connect_valkey(settings)
    assert isinstance(client, Valkey)
    # The C parser is picked when libvalkey is installed (the ``valkey[libvalkey]`` extra).
    assert LIBVALKEY_AVAILABLE
    assert DefaultParser.__name__ == "_AsyncLibvalkeyParser"


async def test_an_unreachable_server_is_a_transient_error() -> None:
    settings = JetsourceSettings(valkey=ValkeySettings(url=f"redis://127.0.0.1:{free_port()}/0"))
    client = connect_valkey(settings)
    try:
        with pytest.raises(TransientError, match="valkey"):
            await valkey_io(client.ping())
    finally:
        await client.aclose()
