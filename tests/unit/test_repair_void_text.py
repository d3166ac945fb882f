"""`repair void --reason/--actor` are free text kept in the void's record: checked by
the rule of free text (jetsource.core.printable) naming the option, a usage error (exit
2) before anything is connected to or written. They were stored as they came: an ESC
or a NUL in --reason, a line break in --actor, a --reason past 1,000 characters cut in
silence."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jetsource.cli import output as out
from jetsource.cli.repair import app

BASE = ["--seq", "7", "--yes", "--json"]


def run(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(app, [*BASE, *args], catch_exceptions=False)
    out.set_mode(None)
    lines = result.stderr.strip().splitlines()
    return result.exit_code, json.loads(lines[-1])["error"] if lines else {}


@pytest.mark.parametrize(
    ("args", "option", "said"),
    [
        (["--reason", "bad \x1b[2J"], "--reason", "U+001B at position 4"),
        (["--reason", "nul\x00"], "--reason", "LF, CR LF or a lone CR"),
        (["--reason", "x" * 1001], "--reason", "1001 characters; at most 1000"),
        (["--reason", "r", "--actor", "ops\nX-Evil: 1"], "--actor", "one line"),
        (["--reason", "r", "--actor", "ops\u2028"], "--actor", "U+2028"),
        (["--reason", "r", "--actor", "a" * 101], "--actor", "at most 100"),
        (["--reason", "bad \udcff bytes"], "--reason", "surrogate"),
        # nothing visible is no reason, as " " was not (core.printable.blank)
        (["--reason", "\u200b\u200b"], "--reason", "must say why"),
        (["--reason", "\u00a0\u202e"], "--reason", "must say why"),
    ],
)
def test_a_void_reason_or_actor_is_checked_naming_the_option(
    args: list[str], option: str, said: str
) -> None:
    code, error = run(*args)
    assert code == 2, error
    assert error["field"] == option and said in str(error["message"]), error


def test_a_void_reason_of_many_lines_is_kept_with_its_breaks_as_lf(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Printable text of any script, tabs and line breaks pass (a lone CR as LF, as
    every text of many lines); nothing else is changed."""
    import jetsource.cli.repair as cli_repair
    import jetsource.projection.repair as repair

    seen: list[tuple[object, ...]] = []

    def void_sequence(*args: object) -> None:
        seen.append(args)

    class Done(Exception):
        pass

    def run_it(work, **_: object) -> None:  # type: ignore[no-untyped-def]
        work(None)
        raise Done

    monkeypatch.setattr(repair, "void_sequence", void_sequence)
    monkeypatch.setattr(cli_repair, "_run", run_it)
    with pytest.raises(Done):
        CliRunner().invoke(
            app,
            [*BASE, "--reason", "a\rb\r\nc\td 日本", "--actor", "öps", "--domain", "context"],
            catch_exceptions=False,
        )
    out.set_mode(None)
    assert seen == [(None, 7, "a\nb\nc\td 日本", "öps", "context")]
