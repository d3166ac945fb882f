"""The docs and the settings cannot drift apart.

- docs/settings.md lists every `JETSOURCE_*` variable of every settings class, with its
  default and bounds, generated from the classes (`scripts/settings_doc.py --write`);
  41 settings (`JETSOURCE_EVENTSTORE__DUPLICATE_WINDOW_S`, `JETSOURCE_QUERY__MAX_GRAPH_DEPTH`,
  `JETSOURCE_PROJECTOR__TIMELINE_KEEP`, ...) were named nowhere in the docs.
- Every `JETSOURCE_*` variable the README, docs/ or the Helm chart's README name is a
  real setting (or one read outside the classes, or a stream / bucket name): a
  misspelt variable in the docs is ignored by every service, with only a warning.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from jetsource.core.settings import OTHER_NAMES, OTHER_PREFIXES, OTHER_VARIABLES, unknown_variables

ROOT = Path(__file__).resolve().parents[2]


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts/settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


settings_doc = _load_script()

# Names in the docs that are not variables: streams, buckets, headers, examples.
NOT_VARIABLES = {
    "JETSOURCE_KEYS",  # the personal-data keys bucket
    "JETSOURCE_LEASES",  # the partition leases bucket
    "JETSOURCE_READMODELS",  # the read-model control bucket
    "JETSOURCE_FENCED",  # what the lease-fenced Lua script returns
    "JETSOURCE_PROBE",  # the write probe's subject
    "JETSOURCE_X__Y",  # the example of a bad setting
    "JETSOURCE_NATS__URLS",  # the example of a misspelt one
    "JETSOURCE_TEST",  # "JETSOURCE_TEST_*"
    "JETSOURCE_BENCH",  # "JETSOURCE_BENCH_*"
}


def test_the_settings_page_lists_every_setting_as_the_code_has_it() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.render(page) == page, (
        "docs/settings.md differs from the settings classes: run "
        ".venv/bin/python scripts/settings_doc.py --write"
    )


def _documents() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "helm" / "jetsource" / "README.md",
    ]


def _real(variable: str) -> bool:
    if variable in OTHER_VARIABLES or variable.startswith(OTHER_PREFIXES):
        return True
    top = variable.removeprefix("JETSOURCE_").lower()
    if top in OTHER_NAMES and "__" not in top:
        return True  # read outside the classes: JETSOURCE_OUTPUT, JETSOURCE_DEBUG, ...
    for _, cls in settings_doc.READERS:
        if top.split("__")[0] in cls.model_fields and not unknown_variables(cls, {variable: ""}):
            return True
    return False


def test_every_variable_the_docs_name_is_a_setting() -> None:
    wrong = []
    for document in _documents():
        text = document.read_text()
        # `JETSOURCE_NATS__USER/__PASSWORD` names JETSOURCE_NATS__PASSWORD too.
        for match in re.finditer(r"JETSOURCE_[A-Z0-9_]+(?:/__[A-Z0-9_]+)*", text):
            first, *others = match.group(0).split("/")
            names = [first] + [first.rsplit("__", 1)[0] + other for other in others]
            for name in names:
                name = name.rstrip("_")
                if name in NOT_VARIABLES or _real(name):
                    continue
                line = text.count("\n", 0, match.start()) + 1
                wrong.append(f"{document.relative_to(ROOT)}:{line}: {name}")
    assert wrong == [], "\n".join(wrong)
