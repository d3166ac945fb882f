"""Root of the `jetsource` command: sub-commands register here."""

from __future__ import annotations

import typer

from jetsource.cli import infra

app = typer.Typer(
    help="jetsource: event-sourced Context Service on NATS JetStream.", no_args_is_help=True
)
app.add_typer(infra.app, name="infra")
app.command("up")(infra.up_all)


def main() -> None:
    app()
