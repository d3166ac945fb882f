"""Root of the `jetsource` command: sub-commands register here."""

from __future__ import annotations

import typer

from jetsource.cli import ctx, infra, projector, streams

app = typer.Typer(
    help="jetsource: event-sourced Context Service on NATS JetStream.", no_args_is_help=True
)
app.add_typer(infra.app, name="infra")
app.add_typer(ctx.app, name="ctx")
app.add_typer(projector.app, name="projector")
app.add_typer(streams.app, name="streams")
app.command("up")(infra.up_all)
app.command("down")(infra.down_all)


def main() -> None:
    app()
