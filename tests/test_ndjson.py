"""``convert --format ndjson``: the NDJSON file set for FHIR Bulk Data ``$import``.

One run over the sample data with Binaries inline, rendered images in Binaries and split bundles
(so that the part files' conditional references are made literal too) is shared by the tests.
"""

from __future__ import annotations

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.errors import InputError
from fhirimg.jsonio import PRIVATE
from fhirimg.model import InstanceRecord
from fhirimg.ndjson import NDJSON_DIR, StudyFiles, write_ndjson
from fhirimg.scan import read_file
from tests.helpers import SAMPLE, load

runner = CliRunner()
ARGS = [
    "--format",
    "ndjson",
    "--binary",
    "inline",
    "--media",
    "--media-content",
    "binary",
    "--media-size",
    "16",
    "--max-entries",
    "3",
    "--dicomweb-url",
    "http://pacs.example/dicom-web",
    "--quiet",
]


def _convert(out: Path, *extra: str) -> None:
    result = runner.invoke(app, ["convert", str(SAMPLE), "--out", str(out), *ARGS, *extra])
    assert result.exit_code == 1, result.output  # the sample holds a truncated file on purpose


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ndjson") / "out"
    _convert(folder)
    return folder


def _lines(out: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((out / NDJSON_DIR).glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            yield path.name, orjson.loads(line)


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def test_one_file_per_type_owner_only(out: Path) -> None:
    files = sorted(p.name for p in (out / NDJSON_DIR).iterdir())
    assert files == [
        "Binary.ndjson",
        "Endpoint.ndjson",
        "ImagingStudy.ndjson",
        "Media.ndjson",
        "Patient.ndjson",
    ]
    for name in files:
        mode = stat.S_IMODE((out / NDJSON_DIR / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    for name, resource in _lines(out):
        assert name == f"{resource['resourceType']}.ndjson"
    summary = load(out / "report.json")["summary"]
    assert summary["ndjson"]["ImagingStudy"] == summary["studies"]["written"] == 5


def test_every_reference_literal_and_resolves_inside_the_set(out: Path) -> None:
    lines = list(_lines(out))
    keys = [f"{r['resourceType']}/{r['id']}" for _, r in lines]
    assert len(keys) == len(set(keys)), "an id written twice"
    known = set(keys)
    refs = [ref for _, r in lines for ref in _references(r)]
    assert refs, "the set has references to check"
    for ref in refs:
        assert ref in known, f"{ref} does not resolve inside the set"
    text = b"".join(p.read_bytes() for p in (out / NDJSON_DIR).glob("*.ndjson"))
    assert b"urn:uuid:" not in text
    assert b"?identifier" not in text  # no conditional reference left


def test_patients_once_and_every_instance_placed(out: Path) -> None:
    lines = list(_lines(out))
    patients = [r for _, r in lines if r["resourceType"] == "Patient"]
    studies = [r for _, r in lines if r["resourceType"] == "ImagingStudy"]
    assert len(patients) < len(studies)  # the sample has a patient with two studies
    subjects = {s["subject"]["reference"] for s in studies}
    assert subjects == {f"Patient/{p['id']}" for p in patients}
    placed = {
        i["uid"] for s in studies for series in s.get("series", ()) for i in series["instance"]
    }
    converted = [
        f["path"] for f in load(out / "report.json")["files"] if f["status"] == "converted"
    ]
    expected = set()
    for path in converted:
        record = read_file(path)
        assert isinstance(record, InstanceRecord), path
        expected.add(record.sop_instance_uid)
    assert placed == expected
    binaries = [r for _, r in lines if r["resourceType"] == "Binary"]
    assert len(binaries) >= len(expected)  # one per instance, and the rendered images'


def test_every_line_passes_validate(out: Path) -> None:
    result = runner.invoke(
        app, ["validate", str(out / NDJSON_DIR), "--layers", "all", "--json", "--jobs", "2"]
    )
    assert result.exit_code == 0, result.output[-3000:]
    doc = orjson.loads(result.stdout)
    assert [r["fhirVersion"] for r in doc["files"]] == ["r4"] * 5  # checked as FHIR, each file
    severities = {f["severity"] for r in doc["files"] for f in r["findings"]}
    assert severities <= {"information"}
    # dom-6 (no narrative) is said of each Patient line: each line was checked on its own
    patients = [r for r in doc["files"] if r["file"].endswith("Patient.ndjson")]
    lines = (out / NDJSON_DIR / "Patient.ndjson").read_bytes().count(b"\n")
    assert len({f["file"] for f in patients[0]["findings"]}) == lines


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_measurements_set_validates_as_its_release(tmp_path: Path, release: str) -> None:
    """The SR corpus (issue 20): Observations, and in R5 ImagingSelection and BodyStructure, each
    line checked as the set's release without --fhir-version."""
    out = tmp_path / "out"
    args = ["convert", str(SAMPLE.parent / "sr"), "--out", str(out), "--format", "ndjson"]
    result = runner.invoke(app, [*args, "--fhir-version", release, "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / NDJSON_DIR / "Observation.ndjson").is_file()
    result = runner.invoke(app, ["validate", str(out / NDJSON_DIR), "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    doc = orjson.loads(result.stdout)
    assert {r["fhirVersion"] for r in doc["files"]} == {release}


def test_validate_names_the_bad_line(tmp_path: Path, out: Path) -> None:
    shutil.copy(out / NDJSON_DIR / "Binary.ndjson", tmp_path)  # what the studies link to
    bad = tmp_path / "ImagingStudy.ndjson"
    lines = (out / NDJSON_DIR / "ImagingStudy.ndjson").read_bytes().splitlines()
    study = orjson.loads(lines[0])
    study["status"] = "not-a-status"
    bad.write_bytes(lines[1] + b"\n" + orjson.dumps(study) + b"\n")
    result = runner.invoke(app, ["validate", str(bad), "--layers", "fast", "--json"])
    assert result.exit_code == 1, result.output
    errors = [
        f
        for r in orjson.loads(result.stdout)["files"]
        for f in r["findings"]
        if f["severity"] == "error"
    ]
    assert errors
    assert {f["file"] for f in errors} == {f"{bad}:2"}


def test_byte_identical_on_a_second_run(out: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _convert(again, "--jobs", "1")
    for path in sorted((out / NDJSON_DIR).glob("*.ndjson")):
        assert (again / NDJSON_DIR / path.name).read_bytes() == path.read_bytes(), path.name


def test_unresolvable_reference_refused_nothing_replaced(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0a7a3e36-7a43-5a55-9a7e-000000000001",
                "resource": {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "subject": {"reference": "urn:uuid:0a7a3e36-7a43-5a55-9a7e-00000000dead"},
                },
                "request": {"method": "POST", "url": "ImagingStudy"},
            }
        ],
    }
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    (tmp_path / NDJSON_DIR).mkdir()
    (tmp_path / NDJSON_DIR / "Patient.ndjson").write_bytes(b"old\n")
    with pytest.raises(InputError, match="names no resource of its study"):
        write_ndjson(tmp_path, tmp_path, [StudyFiles("1.2", ("b.json",))], modes=PRIVATE)
    assert (tmp_path / NDJSON_DIR / "Patient.ndjson").read_bytes() == b"old\n"
    assert not list((tmp_path / NDJSON_DIR).glob("*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--binary", "beside"], "--binary inline"),
        (["--push", "http://fhir.example/fhir"], "not with --push"),
    ],
)
def test_ndjson_refused_with(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(
        app, ["convert", str(SAMPLE), "--out", str(tmp_path), "--format", "ndjson", *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
