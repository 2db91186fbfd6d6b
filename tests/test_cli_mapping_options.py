"""`--coding-system SCHEME=URI`: a private coding scheme's codes get the system the site gives
them (issue 16 item 9; default urn:dicom:scheme:<designator>, tests/test_mapping.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fhirimg.cli import app
from tests.helpers import SAMPLE

runner = CliRunner()


def test_coding_system_maps_a_private_scheme(tmp_path: Path) -> None:
    out = tmp_path / "out"
    uri = "https://codes.example/fhirimg"
    args = ["convert", str(SAMPLE / "study_a_ct"), "-o", str(out), "-q", "-j", "1"]
    result = runner.invoke(app, [*args, "--coding-system", f"99FHIRIMG={uri}"])
    assert result.exit_code == 0, result.output
    text = "".join(p.read_text(encoding="utf-8") for p in out.glob("study-*.json"))
    assert f'"system": "{uri}"' in text
    assert "urn:dicom:scheme:99FHIRIMG" not in text


def test_coding_system_needs_scheme_and_uri(tmp_path: Path) -> None:
    args = ["convert", str(SAMPLE / "study_a_ct"), "-o", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--coding-system", "99FHIRIMG"])
    assert result.exit_code == 2, result.output
    assert "--coding-system takes SCHEME=URI" in result.output
