"""Every service runs its loop on uvloop (jetsource.core.runner.run_service)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import uvloop

from jetsource.core.runner import use_uvloop


def test_use_uvloop_makes_new_loops_uvloop_loops() -> None:
    before = asyncio.get_event_loop_policy()
    try:
        use_uvloop()
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    finally:
        asyncio.set_event_loop_policy(before)


def test_a_service_process_serves_on_uvloop() -> None:
    """run_service itself: its serve coroutine sees a uvloop loop."""
    code = (
        "import asyncio\n"
        "from jetsource.core.runner import run_service\n"
        "from jetsource.core.settings import JetsourceSettings\n"
        "async def serve(settings):\n"
        "    print(type(asyncio.get_running_loop()).__module__)\n"
        "run_service('probe', JetsourceSettings(), serve)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.split()[-1].startswith("uvloop"), run.stdout + run.stderr
