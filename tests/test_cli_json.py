"""One --json contract: every command prints the versioned envelope of docs/cli-json.schema.json
on stdout, in success and in failure (exit 2 and 3 too), camelCase throughout; validate's
findings each carry a rule code; validate --format text prints compiler-style lines."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.helpers import REPO, SAMPLE

runner = CliRunner()
SCHEMA = json.loads((REPO / "docs" / "cli-json.schema.json").read_text(encoding="utf-8"))
DOWN = "http://127.0.0.1:9/fhir"
FAST = ["--retries", "0", "--timeout", "2"]
CORPUS = REPO / "tests" / "data" / "validate" / "corpus"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("json") / "out"
    result = runner.invoke(
        app, ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "-q", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    return out


def _envelope(args: list[str], code: int) -> dict[str, Any]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["command"] == args[0]
    assert doc["exitCode"] == code
    assert doc["fhirimg"] == metadata.version("fhirimg")
    return doc


CASES = [
    # (args, exit code, summary expected)
    (["convert", "{sample}", "-o", "{tmp}/c", "-q", "-j", "1"], 0, True),
    (["convert", "/nonexistent/in", "-o", "{tmp}/c"], 3, False),
    (["convert", "{sample}", "-o", "{tmp}/c", "--timezone", "No/Zone"], 2, False),
    (["push", "{bundles}", "--dry-run", "-q"], 0, True),
    (["push", "{bundles}", "--server", DOWN, *FAST, "-q"], 3, False),
    (["push", "{bundles}", "--server", "ftp://x/fhir"], 2, False),
    (["validate", "{bundles}", "-q", "-j", "1"], 0, True),
    (["validate", str(CORPUS / "imaging_uid_leading_zero.json"), "-q", "-j", "1"], 1, True),
    (["validate", "/nonexistent/in"], 3, False),
    (["verify", "{bundles}", "-q", *FAST], 4, True),  # no Endpoint: nothing to check
    (["verify", "--server", DOWN, *FAST], 3, False),
    (["watch", "/nonexistent/in", "--once", "-o", "{tmp}/w"], 3, False),
    (["listen", "--push", "ftp://x/fhir"], 2, False),
    (["deidentify", "{sample}", "-o", "{tmp}/d", "--deid-key-file", "{key}", "-q"], 0, True),
    (["deidentify", "/nonexistent/in", "-o", "{tmp}/d", "--deid-key-file", "{key}"], 3, False),
    (["deidentify", "{sample}", "-o", "{tmp}/d", "--deid-key-file", "/nonexistent/key"], 2, False),
]


@pytest.mark.parametrize(("args", "code", "summary"), CASES, ids=lambda v: str(v)[:40])
def test_every_command_prints_the_envelope(
    args: list[str], code: int, summary: bool, bundles: Path, tmp_path: Path
) -> None:
    key = tmp_path / "deid.key"
    key.write_text("a-key-for-the-json-test\n", encoding="utf-8")
    key.chmod(0o600)
    values = {
        "sample": str(SAMPLE / "study_b_mr"),
        "bundles": str(bundles),
        "tmp": tmp_path,
        "key": key,
    }
    doc = _envelope([a.format(**values) for a in args], code)
    if summary:
        assert doc["summary"] is not None
    else:
        assert doc["summary"] is None
        assert len(doc["errors"]) == 1
        assert doc["errors"][0]["code"] == {2: "usage", 3: "cannot-start"}[code]
        assert doc["errors"][0]["message"]


def test_push_summary_is_camel_case(bundles: Path) -> None:
    doc = _envelope(["push", str(bundles), "--dry-run", "-q"], 0)
    assert "elapsedS" in doc["summary"]
    assert "elapsed_s" not in json.dumps(doc)


def test_validate_summary_and_rule_codes() -> None:
    doc = _envelope(["validate", str(CORPUS / "imaging_uid_leading_zero.json"), "-j", "1"], 1)
    assert doc["summary"]["files"] == 1
    assert doc["summary"]["failed"] == 1
    assert doc["summary"]["errors"] >= 1
    findings = doc["files"][0]["findings"]
    assert all(f["rule"] for f in findings)
    assert any(f["rule"].startswith("img-") for f in findings)


def test_validate_format_text_is_one_line_per_finding() -> None:
    path = CORPUS / "imaging_uid_leading_zero.json"
    result = runner.invoke(app, ["validate", str(path), "--format", "text", "-j", "1", "-q"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines
    pattern = re.compile(r"^(.+?):(Bundle[^:]*): (error|warning): ([a-z0-9-]+): (.+)$")
    for line in lines:
        match = pattern.match(line)
        assert match, line
        assert match.group(1) == str(path)
    assert any(": error: img-uid-syntax: " in line for line in lines)
