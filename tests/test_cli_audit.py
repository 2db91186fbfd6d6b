"""report.json as an audit record (fhirimg.audit), the warnings counted by code in the summary,
shown with their codes at -v, and human output that stays one line per message in a log file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg.audit import WARNING_CODES
from fhirimg.cli import app
from tests.helpers import REPO, SAMPLE

runner = CliRunner()
SECRET = "tok-SECRET-audit-3"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One convert with options from the command line, the environment and a config file."""
    folder = tmp_path_factory.mktemp("audit")
    config = folder / "fhirimg.toml"
    config.write_text(
        f'token = "{SECRET}"\ndicomweb_url = "https://pacs.example/dicom-web"\n', encoding="utf-8"
    )
    config.chmod(0o600)
    out = folder / "out"
    args = ["convert", str(SAMPLE / "study_b_mr"), "-o", str(out), "--json", "-q", "-j", "1"]
    args += ["--config", str(config)]
    result = runner.invoke(app, args, env={"FHIRIMG_FHIR_VERSION": "r5"})
    assert result.exit_code == 0, result.output
    text = (out / "report.json").read_text(encoding="utf-8")
    return {
        "summary": json.loads(result.stdout)["summary"],
        "text": text,
        "report": json.loads(text),
    }


def test_the_audit_says_who_ran_what_when(run: dict[str, Any]) -> None:
    audit = run["report"]["audit"]
    assert list(run["report"])[-1] == "audit"  # last: the golden files leave it out
    assert audit["fhirimgVersion"] == metadata.version("fhirimg")
    assert audit["command"] == "convert"
    assert TIME.match(audit["started"])
    assert TIME.match(audit["ended"])
    assert audit["started"] <= audit["ended"]
    assert audit["inputs"] == [str(SAMPLE / "study_b_mr")]
    assert audit["configFile"].endswith("fhirimg.toml")
    options = audit["options"]
    assert options["--token"] == {"value": "***", "from": "config"}
    assert options["--dicomweb-url"] == {
        "value": "https://pacs.example/dicom-web",
        "from": "config",
    }
    assert options["--fhir-version"] == {"value": "r5", "from": "environment"}
    assert options["--json"] == {"value": True, "from": "commandLine"}
    assert "--timezone" not in options  # left at its default
    assert SECRET not in run["text"]


def test_warnings_are_counted_by_code(run: dict[str, Any]) -> None:
    studies = run["report"]["studies"]
    texts = [w for s in studies for w in s.get("warnings", [])]
    assert texts, "the sample's times have no offset: warnings expected"
    assert run["summary"]["warnings"] == {"time-left-out": len(texts)}
    assert run["report"]["summary"]["warnings"] == run["summary"]["warnings"]
    assert run["report"]["audit"]["warnings"] == run["summary"]["warnings"]


def test_every_warning_code_is_documented() -> None:
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for code, _, _ in WARNING_CODES:
        assert f"`{code}`" in text, code


def _convert(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """fhirimg in a child process with stderr a file (not a terminal), as under cron."""
    log = tmp / "stderr.log"
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "fhirimg", "convert", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "80"},
        )
    done.stderr = log.read_text(encoding="utf-8")
    return done


def test_v_shows_each_warning_with_its_code_and_no_line_is_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / ("and-another-one-" * 4) / "out"
    done = _convert([str(SAMPLE / "study_b_mr"), "-o", str(deep), "-v", "-j", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert any(line.endswith("[time-left-out]") and "time 141500" in line for line in lines)
    summary = [line for line in lines if line.startswith("Converted ")]
    assert len(summary) == 1
    assert str(deep) in summary[0]  # the long path whole, on the summary's one line
    assert any(line.startswith("3 warning(s): time-left-out 3") for line in lines)
    # Every line starts as a message starts: no continuation of a wrapped one.
    starts = ("INFO ", "WARNING ", "Converted ", "This run: ", "3 warning(s)")
    assert all(line.startswith(starts) for line in lines), lines


def test_every_list_of_the_summary_is_capped_with_and_n_more(tmp_path: Path) -> None:
    broken = (SAMPLE / "misc" / "truncated.dcm").read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(13):
        (folder / f"t{i:02}.dcm").write_bytes(broken + bytes([i]))
    result = runner.invoke(app, ["convert", str(folder), "-o", str(tmp_path / "out")])
    lines = result.stderr.splitlines()
    assert sum(1 for line in lines if line.startswith("  failed ")) == 10, result.stderr
    assert "  ... and 3 more failed file(s): see report.json" in lines


def test_the_not_rendered_list_is_capped_too(tmp_path: Path) -> None:
    """13 images whose pixel data is cut short: the study converts, 10 are listed as not
    rendered, then "and 3 more" (report.json has them all)."""
    import pydicom
    from pydicom.data import get_testdata_file

    folder = tmp_path / "in"
    folder.mkdir()
    source = get_testdata_file("CT_small.dcm")
    assert source is not None
    for i in range(13):
        bad = pydicom.dcmread(source)
        bad.SOPInstanceUID = f"{bad.SOPInstanceUID}.{i + 1}"
        bad.PixelData = bad.PixelData[:100]
        bad.save_as(folder / f"bad{i:02}.dcm")
    result = runner.invoke(
        app, ["convert", str(folder), "-o", str(tmp_path / "out"), "--media", "-j", "1"]
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert sum(1 for line in lines if line.startswith("  not rendered ")) == 10, result.stderr
    assert "  ... and 3 more image(s) not rendered: see report.json" in lines


def test_storage_option_credentials_are_not_in_the_audit(tmp_path: Path) -> None:
    """fsspec options mix settings and credentials: only the known settings keep their value
    (a URL one without its user info); every other key's value is ``***``."""
    out = tmp_path / "out"
    secret = "S3CRET-" + tmp_path.name
    result = runner.invoke(
        app,
        [
            "convert", str(SAMPLE), "-o", str(out), "-q",
            "--storage-option", f"secret={secret}",
            "--storage-option", f"endpoint_url=http://user:{secret}@127.0.0.1:9",
            "--storage-option", "region_name=eu-west-1",
        ],
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    report = (out / "report.json").read_text()
    assert secret not in report
    assert secret not in result.output
    given = json.loads(report)["audit"]["options"]["--storage-option"]["value"]
    assert given == ["secret=***", "endpoint_url=http://127.0.0.1:9", "region_name=eu-west-1"]
