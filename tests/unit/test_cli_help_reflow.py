"""probe9b: the help kept the docstrings' own line breaks in every paragraph after the
first, so at 80 columns each source line was cut again: `archive compact --help` read
"... up to the" / "version" / "its latest snapshot covers, ..." / "crash" / "and beside
...", `streams restore --help` had nine such one-word lines, and the root's listing
broke `up`'s line after "show it". Prose paragraphs are one line each now, wrapped by
Rich to the terminal; lists and examples stay as written."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from jetsource.cli.lazy import reflow


def _help(*args: str) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-m", "jetsource", *args, "--help"],
        env=os.environ | {"COLUMNS": "80", "TERM": "dumb"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout.splitlines()


def _ragged(lines: list[str]) -> list[str]:
    """Lines of the description (outside the boxes) cut short where the next line goes
    on with the same sentence."""
    found = []
    for line, after in itertools.pairwise(lines):
        if any(c in line + after for c in "│╭╰"):
            continue
        text, going_on = line.strip(), after.strip()
        if text and going_on and len(text) < 45 and going_on[:1].islower():
            found.append(text)
    return found


@pytest.mark.parametrize(
    "args",
    [("archive", "compact"), ("streams", "restore"), ("streams", "backup"), ("sessions", "prune")],
    ids=["archive compact", "streams restore", "streams backup", "sessions prune"],
)
def test_help_prose_is_wrapped_to_the_terminal_not_to_the_source(args: tuple[str, ...]) -> None:
    assert _ragged(_help(*args)) == []


def test_the_roots_listing_keeps_a_commands_line_whole() -> None:
    """`up`'s line in the root's listing broke after "show it"."""
    listing = [line.strip(" │") for line in _help()]
    assert not [line for line in listing if line.endswith("and show it")], listing


def test_lists_and_kept_blocks_stay_as_written() -> None:
    assert reflow("One\ntwo.\n\nThree\nfour.") == "One two.\n\nThree four."
    assert reflow("Steps:\n- one\n- two") == "Steps:\n- one\n- two"
    assert reflow("\b\nkept\nas is") == "\b\nkept\nas is"
    assert (
        reflow("Run:\n  jetsource up\n  jetsource down") == "Run:\n  jetsource up\n  jetsource down"
    )
