"""A graph URI with ``user:password@`` is refused by its variable when settings load,
the password masked. The neo4j driver refuses such a URI with the URI whole in its
message: the password was written in three log lines and a traceback of the projector
(``projector failed: ConfigurationError ... Given URI: 'bolt://neo4j:<password>@...'``)."""

from __future__ import annotations

import os

import pydantic
import pytest

from jetsource.core.settings import settings_error
from jetsource.projection.settings import ProjectorSettings as Settings

VARIABLE = "JETSOURCE_GRAPH__URI"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("JETSOURCE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", "/nonexistent-secrets")


@pytest.mark.parametrize(
    "uri",
    [
        "bolt://neo4j:gsecret7@graph:7687",
        "neo4j+s://neo4j:gsecret7@graph.example.com",
        "bolt://gsecret7@graph:7687",
    ],
)
def test_credentials_in_the_graph_uri_are_refused_and_not_echoed(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VARIABLE, uri)
    with pytest.raises(pydantic.ValidationError) as caught:
        Settings.load()
    message = settings_error(caught.value, Settings)
    assert message.startswith(f"bad setting: {VARIABLE}="), message
    assert "gsecret7" not in message, message
    assert "***@" in message and "JETSOURCE_GRAPH__PASSWORD" in message, message


def test_a_plain_graph_uri_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VARIABLE, "bolt://graph:7687")
    assert Settings.load().graph.uri == "bolt://graph:7687"
