"""An instance's name is a webhook path segment and a part of the read model's keys
(``c:<provider>:<instance>:<conversation>``): settings refuse a name that could make
two conversations share a key, naming it."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from jetsource.domains.omni.settings import InstanceConfig
from jetsource.ingest.settings import IngestOptions

BOT = InstanceConfig(provider="discord", format="forwarder", shared_secret=SecretStr("s"))


@pytest.mark.parametrize("name", ["acme-cloud", "inst0", "a.b_c", "A" * 64])
def test_instance_names_of_letters_digits_dashes_dots_are_taken(name: str) -> None:
    assert name in IngestOptions(instances={name: BOT}).instances


@pytest.mark.parametrize("name", ["a:b", "", "-a", "a/b", "a b", "A" * 65, "é"])
def test_other_instance_names_are_refused_naming_them(name: str) -> None:
    with pytest.raises(ValidationError, match="instance name"):
        IngestOptions(instances={name: BOT})
    with pytest.raises(ValidationError, match="instance name"):  # as JSON from the env
        IngestOptions.model_validate({"instances": {name: BOT.model_dump()}})
