"""Every gRPC client (the CLI's groups, the TUI, the SDK's session emitter) checks the
client's TLS files as it opens its channel: `observe import` with a CA file that is not
there said "FAILED_PRECONDITION: /path: No such file or directory", as if the file it
imports were missing, and named no setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetsource.client import open_channel
from jetsource.core.errors import ValidationError
from jetsource.core.settings import GrpcClientSettings


def test_a_missing_ca_file_is_named_by_its_variable(tmp_path: Path) -> None:
    client = GrpcClientSettings.model_validate({"tls": {"ca_file": str(tmp_path / "ca.pem")}})
    with pytest.raises(ValidationError) as refused:
        open_channel("127.0.0.1:1", client)
    assert refused.value.field == "JETSOURCE_CLIENT__TLS__CA_FILE"
    assert str(tmp_path / "ca.pem") in str(refused.value)


def test_a_ca_file_that_is_no_pem_is_named_by_its_variable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    client = GrpcClientSettings.model_validate({"tls": {"ca_file": str(ca)}})
    with pytest.raises(ValidationError) as refused:
        open_channel("127.0.0.1:1", client)
    assert refused.value.field == "JETSOURCE_CLIENT__TLS__CA_FILE"


def test_observe_import_names_the_setting_not_the_file(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"x": 1}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSOURCE_")}
    env["JETSOURCE_CLIENT__TLS__CA_FILE"] = str(tmp_path / "nowhere.pem")
    command = ["observe", "import", str(events), "--observer", "127.0.0.1:1", "-o", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "jetsource", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "JETSOURCE_CLIENT__TLS__CA_FILE" in done.stdout + done.stderr
    assert "FAILED_PRECONDITION" not in done.stdout + done.stderr
