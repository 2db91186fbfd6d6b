"""``fhirimg convert`` through the CLI (typer's CliRunner), and the short form's default folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.helpers import SAMPLE, pydicom_file

runner = CliRunner()


def test_short_form_writes_default_folder_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["convert", "."])
    assert result.exit_code == 0, result.output
    assert "fhirimg-out/" in result.output
    assert len(list((tmp_path / "fhirimg-out").glob("study-*.json"))) == 1
    report = json.loads((tmp_path / "fhirimg-out" / "report.json").read_text())
    assert report["summary"]["files"]["converted"] == 1


def test_json_summary_and_partial_exit(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "--out", str(tmp_path), "--json", "--quiet"]
    )
    assert result.exit_code == 1, result.output  # the sample holds a truncated file on purpose
    summary = json.loads(result.stdout)["summary"]
    assert summary["files"]["failed"] == 1
    assert summary["studies"] == {"total": 5, "written": 5, "failed": 0}
    assert summary["exitCode"] == 1


def test_failed_files_named_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "truncated.dcm" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timezone", "Mars/Olympus"], "unknown time zone"),
        (["--fhir-version", "r3"], "Invalid value for '--fhir-version'"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_input_cannot_start() -> None:
    result = runner.invoke(app, ["convert", "/nonexistent/dicom"])
    assert result.exit_code == 3, result.output  # as on every command (test_cli_exit_codes)
    assert "no such file or folder: /nonexistent/dicom" in result.output


def test_unwritable_output_exits_3(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["convert", str(SAMPLE), "--out", str(blocker / "out")])
    assert result.exit_code == 3, result.output


def test_no_patient_data_in_output(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "--out", str(tmp_path), "-v"])
    for secret in ("Sample^Alice", "Alice", "FHIRIMG-0001", "19700101", "1970-01-01"):
        assert secret not in result.output


def test_python_dash_m_works(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhirimg",
            "convert",
            str(SAMPLE),
            "-o",
            str(tmp_path),
            "-q",
            "-j",
            "2",
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert len(list(tmp_path.glob("study-*.json"))) == 5


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("convert", "validate", "push"):
        assert command in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "0.1.0"


def test_internal_error_is_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug gets exit 70 and one line, no traceback (it could carry patient data)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret patient detail")

    monkeypatch.setattr("fhirimg.cli.convert_cmd.convert", boom)
    monkeypatch.setattr(sys, "argv", ["fhirimg", "convert", str(SAMPLE), "-q"])
    from fhirimg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 70
    err = capsys.readouterr().err
    assert "internal error" in err
    assert "Traceback" not in err
    assert "secret patient detail" not in err


@pytest.mark.parametrize("option", ["--dicomweb-url", "--push"])
def test_urls_are_checked(tmp_path: Path, option: str) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(tmp_path), option, "URL"])
    assert result.exit_code == 2, result.output
    assert "http(s) URL" in result.output
