"""deploy/Dockerfile read statically (no Docker engine here): multi-stage, pinned bases,
a numeric non-root user in the final stage, commands that exist, a build context that
holds what the image copies."""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import COMPOSE, DOCKERFILE, ROOT, SCRIPTS


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        joined = " ".join(p for p in pending if p)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        pending = []
    assert not pending, "dangling line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for i in instructions:
        if i.keyword == "FROM":
            found.append([])
        assert found, f"line {i.line}: {i.keyword} before the first FROM"
        found[-1].append(i)
    return found


# An exact version tag (python:3.11.14-slim-bookworm), optionally with a digest, or a
# digest alone. Never `latest`, never a moving tag such as `3.11` or `3.11-slim`.
PINNED = re.compile(
    r"^(?P<repo>[a-z0-9./_-]+)"
    r"(?::(?P<tag>[A-Za-z0-9._-]+))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
EXACT_TAG = re.compile(r"^\d+\.\d+\.\d+(-[A-Za-z0-9.]+)*$")


def base_problem(image: str) -> str | None:
    m = PINNED.match(image)
    if m is None:
        return f"{image}: not an image reference"
    tag, digest = m.group("tag"), m.group("digest")
    if tag == "latest" or (tag is None and digest is None):
        return f"{image}: unpinned (latest)"
    if digest is None and not EXACT_TAG.match(tag or ""):
        return f"{image}: tag {tag!r} moves; pin an exact version or a digest"
    return None


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return stages(parse(DOCKERFILE.read_text()))


def test_it_is_multi_stage_and_the_runtime_copies_the_builders_venv(
    dockerfile: list[list[Instruction]],
) -> None:
    assert len(dockerfile) >= 2
    names = [s[0].args.split()[-1] for s in dockerfile]
    final = dockerfile[-1]
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert any(c.startswith(f"--from={names[0]} ") for c in copies), copies
    # The build tooling stays behind: the runtime installs nothing itself.
    assert not [i for i in final if i.keyword == "RUN" and "pip install" in i.args]


def test_every_base_image_is_pinned(dockerfile: list[list[Instruction]]) -> None:
    for stage in dockerfile:
        image = stage[0].args.split()[0]
        assert base_problem(image) is None, base_problem(image)


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("python:3.11.14-slim-bookworm@sha256:" + "a" * 64, True),
        ("python:3.11.14-slim-bookworm", True),
        ("python@sha256:" + "b" * 64, True),
        ("python:3.11", False),
        ("python:3.11-slim", False),
        ("python:latest", False),
        ("python", False),
    ],
)
def test_the_pin_check_tells_pinned_from_moving(image: str, pinned: bool) -> None:
    assert (base_problem(image) is None) is pinned


def test_the_final_stage_runs_as_a_numeric_non_root_user(
    dockerfile: list[list[Instruction]],
) -> None:
    users = [i.args for i in dockerfile[-1] if i.keyword == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, users[-1]
    assert not group or (group.isdigit() and int(group) != 0), users[-1]
    # The chart's securityContext runs as the same user.
    values = yaml.safe_load((ROOT / "helm/jetsource/values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == int(user)
    assert values["podSecurityContext"]["runAsUser"] == int(user)


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
    return parsed


def test_entrypoint_and_cmd_name_console_scripts(dockerfile: list[list[Instruction]]) -> None:
    final = dockerfile[-1]
    commands = [exec_form(i.args) for i in final if i.keyword in {"CMD", "ENTRYPOINT"}]
    assert commands, "no CMD or ENTRYPOINT"
    for command in commands:
        assert command[0] in SCRIPTS, f"{command[0]} is no console script of pyproject.toml"
    # And what compose runs in the image: a console script, or python for the probe.
    compose = yaml.safe_load(COMPOSE.read_text())
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("jetsource:"):
            assert service["command"][0] in SCRIPTS, name
            probe = service.get("healthcheck", {}).get("test", [])
            assert probe[1:3] in ([], ["python", "/opt/jetsource/healthcheck.py"]), name
    assert set(SCRIPTS) == {
        "jetsource",
        "jetsource-publisher",
        "jetsource-projector",
        "jetsource-snapshotter",
        "jetsource-query",
        "jetsource-observer",
        "jetsource-process-query",
        "jetsource-ingest",
    }


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(c, glob) for c in candidates):
            verdict = not negate
    return verdict


def test_the_build_context_holds_what_the_image_copies(
    dockerfile: list[list[Instruction]],
) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in dockerfile:
        for i in stage:
            if i.keyword == "COPY" and "--from=" not in i.args:
                copied += [a for a in i.args.split()[:-1] if not a.startswith("--")]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    # Local state and secrets never reach the daemon.
    for path in (".venv/bin/python", ".jetsource/nats", "tests/conftest.py", ".git/config"):
        assert ignored(path, patterns), path
    assert not ignored("services/jetsource/cli/app.py", patterns)
    assert ignored("services/jetsource/__pycache__/x.pyc", patterns)


def test_the_probe_script_the_image_ships_is_the_one_in_deploy() -> None:
    copies = [
        i.args
        for i in parse(DOCKERFILE.read_text())
        if i.keyword == "COPY" and "healthcheck.py" in i.args
    ]
    assert copies == ["deploy/healthcheck.py /opt/jetsource/healthcheck.py"]
    assert Path(ROOT / "deploy/healthcheck.py").is_file()
