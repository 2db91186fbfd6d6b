"""``convert --push``: convert and push in one streaming pass, against the real FHIR test server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from tests.conftest import count, search
from tests.helpers import SAMPLE
from tests.servers.fhir_server import FhirTestServer

pytestmark = pytest.mark.server
runner = CliRunner()


def _convert_push(out: Path, server: str, *extra: str) -> dict[str, object]:
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "--out", str(out), "--push", server, "--json", "-q", *extra]
    )
    assert result.exit_code == 1, result.output  # the sample's truncated file
    summary: dict[str, object] = json.loads(result.stdout)["summary"]
    return summary


def test_convert_push_streams_and_keeps_no_bundles(
    tmp_path: Path, clean_fhir: FhirTestServer
) -> None:
    base = clean_fhir.base_url
    summary = _convert_push(tmp_path, base, "--binary", "beside")
    assert summary["pushed"] == {"pushed": 5, "skipped": 0, "failed": 0}
    # nothing left behind but the report, the journal and the catalog (in .fhirimg/)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".fhirimg",
        ".fhirimg-push-journal.jsonl",
        "report.json",
    ]
    assert count(base, "ImagingStudy") == 5
    assert count(base, "Patient") == 4
    assert count(base, "Binary") == 20
    report = json.loads((tmp_path / "report.json").read_text())
    assert {s["push"] for s in report["studies"]} == {"pushed"}

    # again: the catalog says nothing changed, so no study is built or pushed
    summary = _convert_push(tmp_path, base, "--binary", "beside")
    assert summary["pushed"] == {"pushed": 0, "skipped": 0, "failed": 0}
    # --full builds every study again: the journal says all is there
    summary = _convert_push(tmp_path, base, "--binary", "beside", "--full")
    assert summary["pushed"] == {"pushed": 0, "skipped": 5, "failed": 0}
    assert count(base, "ImagingStudy") == 5
    assert count(base, "Binary") == 20


def test_convert_push_without_journal_is_still_idempotent(
    tmp_path: Path, clean_fhir: FhirTestServer
) -> None:
    base = clean_fhir.base_url
    _convert_push(tmp_path / "a", base)
    _convert_push(tmp_path / "b", base)  # a fresh folder: no journal, the server decides
    assert count(base, "ImagingStudy") == 5
    assert count(base, "Patient") == 4
    study = search(
        base,
        "ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.85155649098386921766494752360926339228",
    )
    assert len(study) == 1
    assert study[0]["numberOfInstances"] == 6


def test_convert_push_unreachable_server_exits_3(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["convert", str(SAMPLE), "--out", str(tmp_path), "--push", "http://127.0.0.1:9/fhir", "-q"],
    )
    assert result.exit_code == 3, result.output
    assert "cannot push" in result.output


def test_split_inline_study_pushes_with_every_reference_resolved(
    tmp_path: Path, clean_fhir: FhirTestServer
) -> None:
    """A study split into part files (--binary inline --max-entries) goes up in an order in which
    the strict server resolves every reference: Patient, Binary parts, the ImagingStudy, Media."""
    base = clean_fhir.base_url
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "convert",
            str(SAMPLE),
            "-o",
            str(out),
            "-q",
            "--binary",
            "inline",
            "--max-entries",
            "4",
            "--media",
        ],
    )
    assert result.exit_code in (0, 1), result.output
    assert list(out.glob("*.part-2.json"))  # really split
    for attempt in range(2):  # twice: the second run adds nothing
        pushed = runner.invoke(app, ["push", str(out), "--server", base, "-q", "--json", "--force"])
        assert pushed.exit_code == 0, pushed.output
        assert count(base, "ImagingStudy") == 5, attempt
        assert count(base, "Patient") == 4, attempt
        assert count(base, "Binary") == 20, attempt
    media = count(base, "Media")
    assert media > 10
    for study in search(base, "ImagingStudy?_count=100"):
        for series in study["series"]:
            for instance in series["instance"]:
                (ext,) = instance["extension"]
                ref = ext["valueReference"]["reference"]
                got = httpx.get(f"{base}/{ref}", headers={"Accept": "application/fhir+json"})
                assert got.status_code == 200, ref  # Binary is not searchable: read it
