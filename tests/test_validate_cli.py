"""``fhirimg validate`` through Typer's CliRunner: exit codes, --json, --strict, folders, stdin,
--server against a loopback $validate endpoint, and docs coverage of every option."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.cli._app import load_commands

CORPUS = Path(__file__).parent / "data" / "validate" / "corpus"
DOCS = Path(__file__).parent.parent / "docs" / "validate.md"
runner = CliRunner()


def test_valid_bundle_exits_0() -> None:
    result = runner.invoke(app, ["validate", "-j", "1", str(CORPUS / "valid_r4.json")])
    assert result.exit_code == 0, result.output


def test_broken_bundle_exits_1_and_names_the_location() -> None:
    result = runner.invoke(
        app, ["validate", "-j", "1", "--json", str(CORPUS / "imaging_uid_leading_zero.json")]
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    locations = {f["location"] for f in doc["files"][0]["findings"] if f["severity"] == "error"}
    assert "Bundle.entry[3].resource.series[0].uid" in locations


def test_strict_turns_warnings_into_errors() -> None:
    path = str(CORPUS / "imaging_count_series_instances.json")  # a warning only
    assert runner.invoke(app, ["validate", "-j", "1", path]).exit_code == 0
    result = runner.invoke(app, ["validate", "-j", "1", "--strict", path])
    assert result.exit_code == 1, result.output


def test_missing_path_exits_3() -> None:
    result = runner.invoke(app, ["validate", "/nonexistent/bundle.json"])
    assert result.exit_code == 3, result.output


def test_bad_fhir_version_exits_2() -> None:
    result = runner.invoke(app, ["validate", "--fhir-version", "r6", str(CORPUS / "valid_r4.json")])
    assert result.exit_code == 2, result.output


def test_bad_layers_exits_2() -> None:
    result = runner.invoke(app, ["validate", "--layers", "magic", str(CORPUS / "valid_r4.json")])
    assert result.exit_code == 2, result.output


def test_stdin() -> None:
    data = (CORPUS / "schema_bad_code.json").read_text()
    result = runner.invoke(app, ["validate", "--json", "-"], input=data)
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["files"][0]["file"] == "<stdin>"


def test_folder_skips_reports_and_binaries_and_runs_in_parallel(tmp_path: Path) -> None:
    shutil.copy(CORPUS / "valid_r4_beside.json", tmp_path / "study.json")
    shutil.copytree(CORPUS / "valid_r4_beside.binaries", tmp_path / "study.binaries")
    (tmp_path / "study.binaries" / "junk.json").write_text("not json")
    (tmp_path / "report.json").write_text('{"converted": 1}')
    shutil.copy(CORPUS / "valid_r5.json", tmp_path / "r5.json")
    result = runner.invoke(app, ["validate", "--json", "-j", "2", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = {Path(f["file"]).name: f for f in json.loads(result.stdout)["files"]}
    assert set(files) == {"study.json", "report.json", "r5.json"}
    assert files["r5.json"]["fhirVersion"] == "r5"
    assert [f["severity"] for f in files["report.json"]["findings"]] == ["information"]


class _Handler(BaseHTTPRequestHandler):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "expression": ["Bundle.entry[0].resource.gender"],
                "diagnostics": "server says no",
            }
        ],
    }
    paths: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        type(self).paths.append(self.path)
        body = json.dumps(self.outcome).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def validate_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def test_server_findings_are_merged(validate_server: str) -> None:
    result = runner.invoke(
        app,
        [
            "validate",
            "--json",
            "-j",
            "1",
            "--server",
            validate_server,
            str(CORPUS / "valid_r4.json"),
        ],
    )
    assert result.exit_code == 1, result.output
    findings = json.loads(result.stdout)["files"][0]["findings"]
    server = [f for f in findings if f["layer"] == "server"]
    assert server == [
        {
            "severity": "error",
            "file": str(CORPUS / "valid_r4.json"),
            "location": "Bundle.entry[0].resource.gender",
            "message": "server says no",
            "layer": "server",
            "rule": "server",  # every finding has a rule code; the server's: its layer
        }
    ]
    assert _Handler.paths[-1] == "/fhir/Bundle/$validate"


def test_unreachable_server_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(
        app,
        [
            "validate",
            "-j",
            "1",
            "--server",
            f"http://127.0.0.1:{port}",
            str(CORPUS / "valid_r4.json"),
        ],
    )
    assert result.exit_code == 3, result.output


def test_every_option_has_help_and_docs() -> None:
    import typer.main

    load_commands()

    command = typer.main.get_command(app).commands["validate"]  # type: ignore[attr-defined]
    docs = DOCS.read_text()
    for param in command.params:
        if param.param_type_name == "option":
            assert param.help, param.name
            for opt in param.opts:
                if opt.startswith("--"):
                    assert re.search(re.escape(opt) + r"\b", docs), opt
