"""Root of the `jetsource` command: sub-commands register here.

Global options: ``--output table|json|plain`` (also ``JETSOURCE_OUTPUT``) and
``--version``. Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 unavailable.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from jetsource.cli import (
    archive,
    ctx,
    erase,
    infra,
    observe,
    omni,
    output,
    process,
    projector,
    repair,
    sessions,
    streams,
)

app = typer.Typer(
    help="jetsource: event-sourced Context Service on NATS JetStream.\n\n"
    "Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 unavailable "
    "(not reachable or no answer in time: retry with the same -k key).",
    no_args_is_help=True,
)
app.add_typer(infra.app, name="infra")
app.add_typer(ctx.app, name="ctx")
app.add_typer(projector.app, name="projector")
app.add_typer(streams.app, name="streams")
app.add_typer(archive.app, name="archive")
app.add_typer(repair.app, name="repair")
app.add_typer(observe.app, name="observe")
app.add_typer(process.app, name="process")
app.add_typer(sessions.app, name="sessions")
app.add_typer(omni.app, name="omni")
app.command("tui")(sessions.tui)
app.command("erase")(erase.erase)
app.command("up")(infra.up_all)
app.command("down")(infra.down_all)


def _version(value: bool) -> None:
    if value:
        try:
            number = version("jetsource")
        except PackageNotFoundError:  # running from a source tree that was not installed
            number = "unknown"
        typer.echo(f"jetsource {number}")
        raise typer.Exit()


@app.callback()
def root(
    out: output.Mode | None = typer.Option(
        None,
        "--output",
        "-o",
        envvar="JETSOURCE_OUTPUT",
        case_sensitive=False,
        help="table (default on a terminal), plain (default when piped: tab-separated, "
        "no box drawing, no wrapping) or json",
    ),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit"
    ),
) -> None:
    output.set_mode(out)


def main() -> None:
    app()
