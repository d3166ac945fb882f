"""The demo process tree `jetsource up` records through the SDK: a pipeline with two
stages, each calling a tool, one of them failing and retried, so the registry and the
timelines have something to show (`jetsource process tree <id>`)."""

from __future__ import annotations

import asyncio

from jetsource.sdk import Observer


async def record_demo_tree(target: str, token: str | None = None) -> tuple[str, int]:
    """The root process id and how many events the SDK emitted (``token``: the bearer
    token the observer asks, if any)."""
    observer = Observer(target, source="jetsource up", flush_interval_s=0.01, token=token)
    async with observer:
        async with observer.process("demo-pipeline", kind="pipeline") as root:
            root.emit("config_loaded", {"levels": 2})

            async def stage(level: int) -> None:
                async with observer.process(f"level-{level}", kind="stage") as s:
                    s.emit("level_started", {"level": level})
                    for attempt in (1, 2):
                        try:
                            async with observer.process("search", kind="tool") as tool:
                                tool.emit("tool_called", {"query": f"level {level}"})
                                if level == 2 and attempt == 1:
                                    raise TimeoutError("the tool timed out")
                            break
                        except TimeoutError:
                            s.emit("tool_retried", {"attempt": attempt})

            await asyncio.gather(stage(1), stage(2))
        await observer.flush()
    if observer.stats.sent != observer.stats.emitted:
        raise RuntimeError(
            f"the observer at {target} took {observer.stats.sent} of "
            f"{observer.stats.emitted} demo events"
        )
    return root.process_id, observer.stats.emitted
