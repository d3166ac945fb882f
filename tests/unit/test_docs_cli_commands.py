"""Every `jetsource` command line the docs show names a command that exists and only
options that command takes: README.md, docs/*.md and the Helm chart's README and NOTES
(code spans, code blocks and the command tables). A renamed or dropped option left in
the docs is a usage error (exit 2) for whoever copies it."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer import _click as click
from typer.testing import CliRunner

from jetsource.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
ROOT_COMMAND: Any = typer.main.get_command(app)
GROUPS = tuple(ROOT_COMMAND.list_commands(click.Context(ROOT_COMMAND)))
# "jetsource ..." or "$J ...", or a code span that starts with a group's name.
LINE = re.compile(r"(?:\bjetsource|\$J)\s+((?:-o\s+\w+\s+)?[a-z][^`|;&#)\n]*)")
SPAN = re.compile(r"`((?:" + "|".join(GROUPS) + r") [^`]*)`")


def _documents() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "helm" / "jetsource" / "README.md",
        ROOT / "helm" / "jetsource" / "templates" / "NOTES.txt",
    ]


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names |= set(param.opts) | set(param.secondary_opts)
    return names


def _resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The command the words name, its path and the words after it."""
    command: Any = ROOT_COMMAND
    path: list[str] = []
    i = 0
    while i < len(words) and hasattr(command, "get_command"):
        word = words[i]
        if word.startswith("-"):  # a global option before the group
            i += 2 if word in ("-o", "--output") else 1
            continue
        sub = command.get_command(click.Context(command), word)
        if sub is None:
            break
        command, path, i = sub, [*path, word], i + 1
    return command, path, words[i:]


def _command_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), 1):
        for match in LINE.finditer(line):
            yield number, match.group(1)
        for match in SPAN.finditer(line):
            yield number, match.group(1)


def test_every_documented_command_and_option_exists() -> None:
    wrong = []
    checked = 0
    for document in _documents():
        for number, text in _command_lines(document.read_text()):
            try:
                words = shlex.split(text)
            except ValueError:
                words = text.split()
            words = [w for w in words if "..." not in w]
            if not words or words[0] not in (*GROUPS, "-o", "--output"):
                continue
            command, path, rest = _resolve(words)
            where = f"{document.relative_to(ROOT)}:{number}"
            if not path:
                continue
            if hasattr(command, "get_command"):
                # A group followed by a word that is no command of it ("a/b" shorthand
                # and prose excepted).
                if rest and re.fullmatch(r"[a-z][a-z-]*", rest[0]):
                    wrong.append(f"{where}: no command {' '.join([*path, rest[0]])!r}")
                continue
            checked += 1
            known = _options(command)
            for word in rest:
                flag = word.split("=")[0]
                if re.fullmatch(r"--[a-z][a-z0-9-]*", flag) and flag not in known:
                    wrong.append(f"{where}: jetsource {' '.join(path)} takes no {flag}")
    assert wrong == [], "\n".join(wrong)
    assert checked > 200, checked  # the docs' command lines were found


def test_every_option_of_a_command_table_row_exists() -> None:
    """`| `process list` | `--status S`, `--kind`, ... |`: each option of the row."""
    wrong = []
    for document in _documents():
        for number, line in enumerate(document.read_text().splitlines(), 1):
            match = re.match(r"\|\s*`(?:jetsource )?([a-z][a-z -]*[a-z])(?: [^`]*)?`", line)
            if not match or match.group(1).split()[0] not in GROUPS:
                continue
            command, path, _ = _resolve(match.group(1).split())
            if not path or hasattr(command, "get_command"):
                continue
            cells = " ".join(line.split("|")[1:3])
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", cells):
                if flag not in _options(command):
                    where = f"{document.relative_to(ROOT)}:{number}"
                    wrong.append(f"{where}: jetsource {' '.join(path)} takes no {flag}")
    assert wrong == [], "\n".join(wrong)


def _commands(command: Any, path: list[str]) -> Iterator[list[str]]:
    if hasattr(command, "get_command"):
        context = click.Context(command)
        for name in command.list_commands(context):
            yield from _commands(command.get_command(context, name), [*path, name])
    else:
        yield path


def test_every_command_is_shown_in_the_docs() -> None:
    """The other way round: each command of `jetsource --help` is shown somewhere
    (`jetsource down` was in --help only)."""
    docs = "\n".join(document.read_text() for document in _documents())
    missing = []
    for path in _commands(ROOT_COMMAND, []):
        # A one-word command only as `jetsource WORD` (`down -v` is docker compose's).
        before = r"(?:jetsource |\$J |`)" if len(path) > 1 else r"(?:jetsource |\$J )"
        if not re.search(before + re.escape(" ".join(path)) + r"\b", docs):
            missing.append(" ".join(path))
    assert missing == [], missing


def test_the_help_names_every_exit_code_the_readme_documents() -> None:
    """README: 0 ok, 1 refused, 2 usage, 3 unavailable, and 130 for Ctrl-C in every
    group; `jetsource --help` and `jetsource projector --help` named all but 130."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("**Exit codes**", 1)[1].split("\n\n", 2)[1]
    codes = re.findall(r"^\| (\d+) \|", table, flags=re.M)
    # 130 in the table too: the CLI's own CANCELLED (Ctrl-C, SIGTERM), apart from the
    # server's CANCELLED (exit 3).
    assert codes == ["0", "1", "2", "3", "130"], codes
    assert "`cancelled` (exit 130) for Ctrl-C" in readme
    runner = CliRunner()
    for argv in (["--help"], ["projector", "--help"]):
        text = " ".join(runner.invoke(app, argv, env={"COLUMNS": "300"}).output.split())
        said = re.findall(r"\b(\d+) (?:ok|refused|usage|unavailable|stopped)", text)
        assert said == codes, (argv, said)
        # a confirmation declined or unanswered is exit 2, as without --yes (not 130)
        assert "2 usage (or a confirmation not given)" in text, (argv, text)


def test_the_help_says_sigterm_stops_with_130_too() -> None:
    """SIGTERM stops a command as Ctrl-C does (exit 130, `cancelled`), but `jetsource
    --help` and `projector --help` said "130 stopped by Ctrl-C", and so did the
    sessions, streams and output texts: each says "Ctrl-C or SIGTERM" now."""
    runner = CliRunner()
    for argv in (["--help"], ["projector", "--help"]):
        text = " ".join(runner.invoke(app, argv, env={"COLUMNS": "300"}).output.split())
        assert "130 stopped by Ctrl-C or SIGTERM" in text, (argv, text)
    only_ctrl_c = re.compile(r"\b130 (?:stopped by|on|interrupted)\s+\(?Ctrl-C(?!\s+or\s+SIGTERM)")
    said = [
        f"{path.name}: {m.group(0)!r}"
        for path in sorted((ROOT / "services" / "jetsource" / "cli").glob("*.py"))
        for m in only_ctrl_c.finditer(path.read_text())
    ]
    assert said == [], said


def test_the_timeout_help_names_the_setting_the_readme_documents() -> None:
    """README: `--timeout SECONDS (default 10, or JETSOURCE_CLIENT__TIMEOUT_S)`; the
    help of ctx and process commands said only "(default 10)", so a user who set the
    variable was told the wrong default."""
    runner = CliRunner()
    for argv in (["ctx", "show", "--help"], ["process", "list", "--help"]):
        text = " ".join(runner.invoke(app, argv, env={"COLUMNS": "300"}).output.split())
        assert "JETSOURCE_CLIENT__TIMEOUT_S" in text, argv
