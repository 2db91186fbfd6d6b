"""Logging worth turning on: -vv is fhirimg's own request log (method, path, status), not httpx or
httpcore; --log-file writes JSON lines (0600); no patient data at the default level."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.helpers import REPO, SAMPLE
from tests.servers.fhir_server import FhirTestServer

runner = CliRunner()
# What the sample study's headers say about the patient (sample_data/make_sample_data.py).
PATIENT_DATA = ("Yamada", "FHIRIMG-0002", "19800215", "1980-02-15")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("logging") / "out"
    result = runner.invoke(
        app, ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "-q", "-j", "1"]
    )
    assert result.exit_code == 0, result.output
    return out


def _fhirimg(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "fhirimg", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


@pytest.mark.server
def test_vv_is_the_request_log_and_the_log_file_json_lines(
    bundles: Path, clean_fhir: FhirTestServer, tmp_path: Path
) -> None:
    log_file = tmp_path / "run.jsonl"
    done = _fhirimg(
        "push", str(bundles), "--server", clean_fhir.base_url, "-vv", "--log-file", str(log_file)
    )
    assert done.returncode == 0, done.stderr
    requests = [line for line in done.stderr.splitlines() if line.startswith("DEBUG fhirimg")]
    assert any(line.endswith("GET metadata -> 200") for line in requests), done.stderr
    # Each bundle's requests name its file (-vv of issue 16): the transaction POST and the
    # ImagingStudy look-up before it.
    names = sorted(p.name for p in bundles.glob("study-*.json"))
    assert names
    for name in names:
        mine = [line for line in requests if line.endswith(f" ({name})")]
        assert any(" POST [base] -> 200 " in line for line in mine), (name, requests)
    assert "httpcore" not in done.stderr
    assert "httpx" not in done.stderr
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    records = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert records
    assert all(set(r) == {"time", "level", "logger", "message"} for r in records)
    assert any(r["message"] == "GET metadata -> 200" for r in records)
    assert any(r["message"].endswith(f" ({names[0]})") for r in records)


@pytest.mark.server
def test_vv_of_convert_push_names_the_bundle_file(
    clean_fhir: FhirTestServer, tmp_path: Path
) -> None:
    done = _fhirimg(
        "convert", str(SAMPLE / "study_b_mr"), "-o", str(tmp_path / "out"), "-j", "1",
        "--push", clean_fhir.base_url, "-vv",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    posts = [
        line
        for line in done.stderr.splitlines()
        if line.startswith("DEBUG fhirimg") and " POST [base] -> 200 " in line
    ]
    assert posts, done.stderr
    assert all(re.search(r" \(study-[0-9a-f-]+\.json\)$", line) for line in posts), posts


def test_the_default_level_shows_no_patient_data_and_the_log_file_gets_warnings(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "convert.jsonl"
    done = _fhirimg(
        "convert", str(SAMPLE / "study_b_mr"), "-o", str(tmp_path / "out"), "-j", "1",
        "--log-file", str(log_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for value in PATIENT_DATA:
        assert value not in done.stderr
    records = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    warned = [r for r in records if r["message"].endswith("[time-left-out]")]
    assert len(warned) == 3
    assert all(r["level"] == "INFO" for r in warned)
    assert "[time-left-out]" not in done.stderr  # only with -v on stderr


def test_an_error_that_ends_the_run_is_in_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "err.jsonl"
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "--timezone", "No/Zone", "--log-file", str(log_file)]
    )
    assert result.exit_code == 2, result.output
    last = json.loads(log_file.read_text(encoding="utf-8").splitlines()[-1])
    assert last["level"] == "ERROR"
    assert "'No/Zone'" in last["message"]
