"""A refusal of the JetStream server's own (its store or a limit full, JetStream off, a
stream sealed) that reaches an admin command unnamed is answered exit 3 `unavailable`
with its meaning and remedy, in every group: it was exit 1 "refused: JetStream error
503/10023: insufficient resources" (retrying will not help, the README's exit 1 says),
while freeing space and running it again does (`archive compact`, `projector ...`,
`erase`, `repair`, `streams ...`;
`tests/integration/archive/test_compact_store_full.py` end to end)."""

from __future__ import annotations

import nats.js.errors
import pytest
import typer

from jetsource.cli import output
from jetsource.cli.output import UNAVAILABLE
from jetsource.cli.projector import _fail_for
from jetsource.eventstore import jsapi
from jetsource.projection.settings import ProjectorSettings


def test_a_server_refusal_is_named_with_its_remedy() -> None:
    said = output.refusal(jsapi.JsApiError(503, 10023, "insufficient resources"))
    assert said is not None
    assert said.startswith("NATS JetStream refused a write: insufficient storage"), said
    assert "err_code 10023" in said and "To recover: free space" in said, said
    api = nats.js.errors.APIError(code=400, err_code=10002, description="limits exceeded")
    assert "account" in (output.refusal(api) or "")
    sealed = output.refusal(jsapi.JsApiError(400, 10109, "invalid operation on sealed stream"))
    assert sealed is not None and "sealed" in sealed


@pytest.mark.parametrize(
    "error",
    [
        jsapi.JsApiError(400, 10071, "wrong last sequence: 3"),  # a lost compare-and-set
        jsapi.JsApiError(404, 10059, "stream not found"),
        ValueError("bad"),
    ],
)
def test_other_errors_are_not_refusals(error: Exception) -> None:
    assert output.refusal(error) is None


def test_the_projector_groups_answer_a_refusal_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as ended:
        _fail_for(jsapi.JsApiError(503, 10023, "insufficient resources"), ProjectorSettings())
    assert ended.value.exit_code == UNAVAILABLE
    err = capsys.readouterr().err
    assert "unavailable" in err and "insufficient storage" in err, err
