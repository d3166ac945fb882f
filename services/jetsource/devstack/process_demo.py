"""The demo process tree `jetsource up` records through the SDK: a pipeline with two
stages, each calling a tool, one of them failing and retried, so the registry and the
timelines have something to show (`jetsource process tree <id>`)."""

from __future__ import annotations

import asyncio

from jetsource.client import channel_tls
from jetsource.core.settings import GrpcClientSettings
from jetsource.sdk import Observer


def demo_observer(target: str, security: GrpcClientSettings) -> Observer:
    """The demo's SDK client, secured as the demo's reads are (``JETSOURCE_CLIENT__*``:
    TLS, a client certificate, a server-name override, the bearer token): it sent the
    token alone, in plain text, so against an observer serving TLS the demo failed
    while the reads went through."""
    credentials, options = channel_tls(security)
    token = security.token.get_secret_value() if security.token is not None else ""
    return Observer(
        target,
        source="jetsource up",
        flush_interval_s=0.01,
        token=token or None,
        credentials=credentials,
        channel_options=options,
    )


async def record_demo_tree(target: str, security: GrpcClientSettings) -> tuple[str, int]:
    """The root process id and how many events the SDK emitted (``security``: how the
    observer is reached, as every client of the demo)."""
    observer = demo_observer(target, security)
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
