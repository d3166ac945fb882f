"""The README's shell walkthrough, taken from the README (not retyped) and run verbatim
against a fresh stack (#18: it failed at `ctx close --expected-version 7`, and its dated
`--at` answered NOT_FOUND on every new install).

``JETSOURCE_TEST_README`` names another file to take it from (default: README.md).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cli_fixtures import JETSOURCE, CliStack, cli_stack

pytestmark = pytest.mark.e2e
__all__ = ["cli_stack"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]
MARK = "Then work a context from the shell"
VENV_LINE = "J=.venv/bin/jetsource"


def walkthrough(path: Path) -> str:
    """The first ```bash block after MARK."""
    text = path.read_text()
    start = text.index(MARK)
    block = re.search(r"```bash\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no ```bash block after {MARK!r} in {path}"
    return block.group(1)


def readme() -> Path:
    name = os.environ.get("JETSOURCE_TEST_README", "README.md")
    path = Path(name)
    return path if path.is_absolute() else ROOT / path


def test_walkthrough_block_is_found_and_uses_the_venv() -> None:
    script = walkthrough(readme())
    assert script.splitlines()[0] == VENV_LINE, script
    assert "$J ctx create" in script and "$J ctx show" in script


def test_readme_walkthrough_runs_verbatim(cli_stack: CliStack, tmp_path: Path) -> None:
    script = walkthrough(readme())
    assert VENV_LINE in script
    script = script.replace(VENV_LINE, f"J={JETSOURCE}", 1)
    # -e: every step must succeed; -x: the failing step is named in stderr.
    r = subprocess.run(
        ["bash", "-e", "-x", "-o", "pipefail", "-c", script],
        env=cli_stack.env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    for line in r.stderr.splitlines():  # only bash's trace: no error from any command
        assert line.startswith("+"), (line, r.stderr)
    # What the walkthrough says it shows.
    assert "story-1 at version 9" in r.stdout, r.stdout  # the close, at the expected version
    assert "(story-1, version 9, now) [closed]" in r.stdout, r.stdout
    assert "(story-1, version 3, at 3 " in r.stdout, r.stdout
    if '--at "$T"' in script:
        assert re.search(r"\(story-1, version 5, at \d{4}-", r.stdout), r.stdout
