"""Sub-commands loaded when they are used, not when `jetsource` starts.

Each group's module brings its own clients (gRPC stubs, the NATS event store, the graph
driver, the archive...): importing all of them took ~0.6 s before any command ran, for
``--help`` too. The root group here knows each sub-command's name and its one-line help,
and imports a module only when its command is looked up to run (or for its own help).
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import typer
import typer.core
import typer.main

from jetsource.cli import noting_signals
from jetsource.cli.output import Mode


@dataclass(frozen=True)
class Entry:
    """A sub-command: ``module:attr`` (a Typer app for a group, a function for a command)
    and its help, as the root's help lists it (a unit test holds it to the real one)."""

    target: str
    help: str
    group: bool


class LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: name -> Click command, each built on first use.

    ``listing`` (while the root's help is drawn) answers stand-ins carrying the help, so
    ``jetsource --help`` imports no group. ``on_load`` runs on each command built."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        self.loaded: dict[str, Any] = {}
        self.listing = False
        self.on_load: list[Callable[[Any], None]] = []

    def __getitem__(self, name: str) -> Any:
        if name in self.loaded:
            return self.loaded[name]
        entry = self.entries[name]  # KeyError: no such command
        if self.listing:
            return typer.core.TyperCommand(name=name, help=reflow(entry.help))
        command = _build(name, entry)
        for hook in self.on_load:
            hook(command)
        self.loaded[name] = command
        return command

    def __setitem__(self, name: str, command: Any) -> None:
        self.loaded[name] = command
        self.entries.setdefault(name, Entry("", command.help or "", False))

    def __delitem__(self, name: str) -> None:
        del self.entries[name]
        self.loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def reflow(text: str) -> str:
    """``text`` with each prose paragraph on one line, for Rich to wrap to the terminal.

    Typer keeps the single line breaks of a docstring's later paragraphs (and of a
    group's first, in its parent's listing), so the help showed the source's 88-column
    lines cut again at 80: "... up to the" / "version" / "its latest snapshot covers".
    A paragraph starting with ``\b`` (Click's "keep as written") or holding a line that
    starts with a space, ``-``, ``*``, ``$`` or ``|`` (a list, an example, a table) is
    kept as written."""
    out = []
    for paragraph in text.split("\n\n"):
        lines = paragraph.split("\n")
        kept = paragraph.startswith("\b") or any(
            line[:1] in (" ", "\t", "-", "*", "$", "|") for line in lines[1:]
        )
        out.append(paragraph if kept else " ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _reflow_all(command: Any) -> None:
    """:func:`reflow` the help of ``command`` and every command below it."""
    if command.help:
        command.help = reflow(command.help)
    for sub in (getattr(command, "commands", None) or {}).values():
        _reflow_all(sub)


def _build(name: str, entry: Entry) -> Any:
    """The command as the root built it when every sub-command was registered up
    front: inside a parent (so no completion options of its own, and a group of one
    command stays a group)."""
    module_name, attr = entry.target.split(":")
    with noting_signals():  # a Ctrl-C the import lost or said otherwise stops it
        target = getattr(importlib.import_module(module_name), attr)
    parent = typer.Typer(add_completion=False)
    parent.callback()(_nothing)
    if entry.group:
        parent.add_typer(target, name=name)
    else:
        parent.command(name)(target)
    command = typer.main.get_command(parent).commands[name]  # type: ignore[attr-defined]
    _reflow_all(command)
    _both_output_options(command)
    return command


def _set_mode(value: Any) -> Any:
    """An alias's callback: the output mode, as the option it stands for sets it."""
    from jetsource.cli import output

    if value is True:
        output.set_mode(output.Mode.json)
    elif value:
        output.set_mode(value)
    return value


@functools.cache
def _aliases() -> dict[str, Any]:
    """The alias options as Typer builds them (``--json``; ``--output``/``-o`` and
    ``--output`` alone), each passing nothing to the command."""
    template = typer.Typer(add_completion=False)
    help_o = "table, plain or json (json: as --json)"

    @template.command()
    def options(
        as_json: bool = typer.Option(
            False,
            "--json",
            callback=_set_mode,
            help="JSON on stdout, errors too (as --output json)",
        ),
        both: Mode | None = typer.Option(
            None, "--output", "-o", case_sensitive=False, callback=_set_mode, help=help_o
        ),
        long: Mode | None = typer.Option(
            None, "--output", case_sensitive=False, callback=_set_mode, help=help_o
        ),
    ) -> None:
        """The alias options."""

    params = typer.main.get_command(template).params
    for param in params:
        param.expose_value = False
    return {param.name: param for param in params}


def _both_output_options(command: Any) -> None:
    """Every command that prints data takes ``--json`` and ``-o/--output json`` alike:
    the ctx, process and observe commands took only ``-o json`` ("No such option:
    --json"), the projector, streams, archive, repair, erase and omni commands only
    ``--json`` (``-o`` only before the group, as the global option). The missing one is
    added as an alias setting the output mode, as the other does; nothing is removed."""
    subs = getattr(command, "commands", None)
    if subs is not None:
        for sub in subs.values():
            _both_output_options(sub)
        return
    taken = {o for p in command.params for o in getattr(p, "opts", ())}
    if "--output" in taken and "--json" not in taken:
        command.params.append(copy.copy(_aliases()["as_json"]))
    elif "--json" in taken and "--output" not in taken:
        command.params.append(copy.copy(_aliases()["long" if "-o" in taken else "both"]))


def _nothing() -> None:
    """The stand-in parent's callback (a parent with a callback is always a group)."""


class LazyGroup(typer.core.TyperGroup):
    """A TyperGroup whose commands are ``entries`` (set by a subclass), built on use."""

    entries: dict[str, Entry] = {}  # noqa: RUF012 (read only: each group copies it)

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(dict(self.entries))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        commands = self.commands
        assert isinstance(commands, LazyCommands)
        commands.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            commands.listing = False
