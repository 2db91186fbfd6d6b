"""``convert --push`` with the credentials, TLS and retry options it shares with ``push``, against
the real FHIR test server behind the fault-injecting proxy (which plays the auth server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.conftest import count
from tests.helpers import SAMPLE
from tests.servers.faultproxy import Fault, FaultProxy
from tests.servers.fhir_server import FhirTestServer

pytestmark = pytest.mark.server
runner = CliRunner()
TOKEN = "tok-SECRET-c0nv3rt"
PASSWORD = "pw-SECRET-c0nv3rt"


@pytest.fixture
def proxy(clean_fhir: FhirTestServer) -> Iterator[FaultProxy]:
    with FaultProxy(clean_fhir.base_url) as running:
        yield running


def _convert_push(out: Path, server: str, *extra: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(
        app,
        ["convert", str(SAMPLE), "-o", str(out), "--push", server, "--json", "-q", *extra],
        env=env,
    )


def test_basic_auth_reaches_the_server(
    tmp_path: Path, proxy: FaultProxy, clean_fhir: FhirTestServer
) -> None:
    proxy.require_basic("alice", PASSWORD)
    result = _convert_push(
        tmp_path, proxy.base_url, "--user", "alice", "-vv", env={"FHIRIMG_PASSWORD": PASSWORD}
    )
    assert result.exit_code == 1, result.output  # the sample's truncated file
    assert json.loads(result.stdout)["summary"]["pushed"] == {
        "pushed": 5,
        "skipped": 0,
        "failed": 0,
    }
    assert count(clean_fhir.base_url, "ImagingStudy") == 5
    assert proxy.log
    assert all((s.authorization or "").startswith("Basic ") for s in proxy.log)
    assert PASSWORD not in result.output


def test_bearer_token_option_and_a_wrong_one(
    tmp_path: Path, proxy: FaultProxy, clean_fhir: FhirTestServer
) -> None:
    proxy.require_bearer(TOKEN)
    wrong = _convert_push(tmp_path / "a", proxy.base_url, "--token", "wrong-token-123")
    assert wrong.exit_code == 3, wrong.output
    assert "401" in wrong.output
    assert "wrong-token-123" not in wrong.output
    proxy.clear()
    result = _convert_push(tmp_path / "b", proxy.base_url, "--token", TOKEN)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["summary"]["pushed"]["pushed"] == 5
    assert all(s.authorization == f"Bearer {TOKEN}" for s in proxy.log)
    assert TOKEN not in result.output


def test_retry_options_reach_the_push(
    tmp_path: Path, proxy: FaultProxy, clean_fhir: FhirTestServer
) -> None:
    def is_transaction(method: str, path: str) -> bool:
        return method == "POST" and path.rstrip("/").endswith("/R4")

    proxy.script(Fault("status", status=503, times=2, match=is_transaction))
    result = _convert_push(tmp_path, proxy.base_url, "--retries", "2", "--backoff", "0.01")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["summary"]["pushed"] == {
        "pushed": 5,
        "skipped": 0,
        "failed": 0,
    }
    assert proxy.actions().count("status") == 2
