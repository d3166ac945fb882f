"""An instance's secrets must be given: an ``app_secret`` or ``shared_secret`` that was
empty (an unset variable in the instances JSON) was taken, and an HMAC keyed with ""
is one anybody can compute, so every forged webhook passed as signed and was stored.
Settings refuse an empty (or blank) secret naming its field, never its value."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from jetsource.core.settings import settings_error
from jetsource.domains.omni import signatures
from jetsource.domains.omni.settings import InstanceConfig
from jetsource.ingest.settings import IngestSettings

FIELDS = [
    ("whatsapp", "cloud", "app_secret"),
    ("whatsapp", "cloud", "verify_token"),
    ("whatsapp", "evolution", "api_key"),
    ("discord", "forwarder", "shared_secret"),
]
NEEDS = {"cloud": "app_secret", "evolution": "api_key", "forwarder": "shared_secret"}


def _config(provider: str, form: str, field: str, value: str) -> InstanceConfig:
    values = {NEEDS[form]: "kept-secret", field: value}
    return InstanceConfig.model_validate({"provider": provider, "format": form, **values})


def _refused_at_load(monkeypatch: pytest.MonkeyPatch, instances: str) -> str:
    """IngestSettings.load() with JETSOURCE_INGEST__INSTANCES set to ``instances`` (no
    secrets directory) refuses them: what it says (settings_error)."""
    monkeypatch.setenv("JETSOURCE_SECRETS_DIR", "/nonexistent-secrets")
    monkeypatch.setenv("JETSOURCE_INGEST__INSTANCES", instances)
    with pytest.raises(ValidationError) as refused:
        IngestSettings.load()
    return settings_error(refused.value, IngestSettings)


@pytest.mark.parametrize(("provider", "form", "field"), FIELDS)
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_secret_is_refused_naming_its_field(
    provider: str, form: str, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        _config(provider, form, field, value)
    assert f"{field} is empty" in str(refused.value)


def test_an_api_key_with_spaces_at_an_end_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refused_at_load(
        monkeypatch,
        '{"evo": {"provider": "whatsapp", "format": "evolution", "api_key": " key-9c1e "}}',
    )
    assert message.startswith("bad setting: JETSOURCE_INGEST__INSTANCES[evo][api_key]: ")
    assert "api_key begins or ends with whitespace" in message
    assert "key-9c1e" not in message


def test_a_request_signed_with_no_key_is_not_authentic() -> None:
    """What an empty app_secret let through: a body signed with the empty key."""
    config = InstanceConfig(provider="whatsapp", format="cloud", app_secret=SecretStr("k-1"))
    body = b'{"object": "whatsapp_business_account"}'
    forged = {"x-hub-signature-256": signatures.sign("", body)}
    assert signatures.problem(config, forged, body) is not None
    good = {"x-hub-signature-256": signatures.sign("k-1", body)}
    assert signatures.problem(config, good, body) is None


# Invisible to str.strip(): a zero-width space, a BOM, a word joiner, a Hangul filler.
INVISIBLE = ["\u200b", "\ufeff", "\u2060\u200b", "\u3164", " \u200b\u00a0"]


@pytest.mark.parametrize(("provider", "form", "field"), FIELDS)
@pytest.mark.parametrize("value", INVISIBLE)
def test_a_secret_that_shows_nothing_is_refused_naming_its_field(
    provider: str, form: str, field: str, value: str
) -> None:
    """str.strip() took "\\u200b" as a secret: a webhook HMAC keyed with a character
    nobody sees (pasted from a page where nothing visible was copied)."""
    with pytest.raises(ValidationError) as refused:
        _config(provider, form, field, value)
    assert f"{field} is empty" in str(refused.value)
    assert "shows nothing" in str(refused.value)


def test_a_secret_of_invisible_characters_is_refused_at_settings_load_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refused_at_load(
        monkeypatch,
        '{"bot": {"provider": "discord", "format": "forwarder", "shared_secret": "\\u200b"}}',
    )
    assert message.startswith("bad setting: JETSOURCE_INGEST__INSTANCES[bot][shared_secret]: ")
    assert "shows nothing" in message
    assert "\u200b" not in message


def test_a_secret_with_something_visible_is_taken() -> None:
    config = _config("discord", "forwarder", "shared_secret", "k\u200b1")
    assert config.shared_secret is not None
    assert config.shared_secret.get_secret_value() == "k\u200b1"
    # api_key keeps its own rule: whitespace at an end (not a format character).
    assert _config("whatsapp", "evolution", "api_key", "\u200bkey").api_key is not None
