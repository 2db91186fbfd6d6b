"""``push`` of files that are not the bundles they look like (issue 11 item 10): odd ``entry``
shapes, other JSON, JSON arrays and scalars, bytes that are not UTF-8. Each such file is refused
with its reason (exit 1 for the run), the good bundles beside it are still pushed, with and
without ``--dry-run``, and nothing ends in exit 70."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.push import discover
from tests.conftest import count, search, study_bundle, write_bundle

pytestmark = pytest.mark.server

FAST = ["--backoff", "0.01", "--retries", "1", "--quiet"]

_TX = {"resourceType": "Bundle", "type": "transaction"}


def _study_with(uid: str, mutate: str) -> dict[str, Any]:
    """A good bundle with one part of its ImagingStudy given an odd shape."""
    bundle, _ = study_bundle(uid, f"MRN-{uid}")
    study = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    )
    if mutate == "series":
        study["series"] = 5
    elif mutate == "instance":
        study["series"][0]["instance"] = [None, "x"]
    elif mutate == "extension":
        study["series"][0]["instance"][0]["extension"] = {"url": 1}
    elif mutate == "identifier":
        study["identifier"] = [study["identifier"][0], None, 3]
    elif mutate == "modality":
        study["modality"] = 5
    elif mutate == "number":
        study["series"][0]["number"] = "1"
    return bundle


ODD_STUDIES = ["series", "instance", "extension", "identifier", "modality", "number"]


# file name -> its bytes; each must be refused with a reason that names what is wrong.
ODD: dict[str, tuple[bytes, str]] = {
    "entry-int.json": (jsonio.dumps({**_TX, "entry": 5}), "Bundle.entry is a number"),
    "entry-junk.json": (jsonio.dumps({**_TX, "entry": [None, 1, "x"]}), "entry[0] is null"),
    "entry-missing.json": (jsonio.dumps(_TX), "no entries"),
    "entry-empty.json": (jsonio.dumps({**_TX, "entry": []}), "no entries"),
    "request-junk.json": (
        jsonio.dumps({**_TX, "entry": [{"request": {"method": 7, "url": "Patient"}}]}),
        "request.method",
    ),
    "resource-list.json": (
        jsonio.dumps(
            {**_TX, "entry": [{"resource": [1], "request": {"method": "POST", "url": "X"}}]}
        ),
        "not a FHIR resource",
    ),
    "fullurl-int.json": (
        jsonio.dumps(
            {
                **_TX,
                "entry": [
                    {
                        "fullUrl": 3,
                        "resource": {"resourceType": "Patient"},
                        "request": {"method": "POST", "url": "Patient"},
                    }
                ],
            }
        ),
        "fullUrl is a number",
    ),
    "array.json": (b"[1, 2]", "an array"),
    "scalar.json": (b"5", "a number"),
    "null.json": (b"null", "null"),
    "latin1.json": (b'{"resourceType": "Bundle", "name": "M\xfcller"}', "not a readable JSON"),
    "truncated.json": (b'{"resourceType": "Bundle", "type": "trans', "not a readable JSON"),
}


def _odd_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    for name, (data, _) in ODD.items():
        (folder / name).write_bytes(data)
    good, binaries = study_bundle("2.25.9101", "MRN-GOOD", binary_files=True)
    write_bundle(folder, "study-good", good, binaries)
    return folder


def _summary(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = jsonio.loads(result.stdout)["summary"]
    return data


def test_discover_accounts_for_every_odd_file(tmp_path: Path) -> None:
    folder = _odd_folder(tmp_path)
    (folder / "report.json").write_bytes(jsonio.dumps({"files": []}))
    (folder / "patient.json").write_bytes(jsonio.dumps({"resourceType": "Patient"}))
    files, ignored = discover([folder])
    problems = {f.path.name: f.problem for f in files}
    assert problems.pop("study-good.json") is None
    for name, (_, why) in ODD.items():
        assert why in (problems.pop(name) or ""), name
    assert problems == {}
    # Other JSON in a folder is passed over with its reason, not refused.
    assert {Path(f).name for f, _ in ignored} == {"report.json", "patient.json"}


def test_a_named_file_that_is_no_transaction_is_refused(tmp_path: Path) -> None:
    patient = tmp_path / "patient.json"
    patient.write_bytes(jsonio.dumps({"resourceType": "Patient"}))
    collection = tmp_path / "coll.json"
    collection.write_bytes(jsonio.dumps({"resourceType": "Bundle", "type": "collection"}))
    files, ignored = discover([patient, collection])
    assert ignored == []
    assert [(f.path.name, f.problem) for f in files] == [
        ("patient.json", "resourceType is 'Patient', not Bundle"),
        ("coll.json", "Bundle of type 'collection', not a transaction"),
    ]


@pytest.mark.parametrize("dry_run", [False, True], ids=["push", "dry-run"])
def test_odd_files_are_refused_and_the_good_bundle_pushed(
    tmp_path: Path, clean_fhir: Any, dry_run: bool
) -> None:
    folder = _odd_folder(tmp_path)
    args = ["push", str(folder), "--server", clean_fhir.base_url, *FAST, "--json"]
    result = CliRunner().invoke(app, [*args, *(["--dry-run"] if dry_run else [])])
    assert result.exit_code == 1, result.output
    bundles = {b["file"]: b for b in _summary(result)["bundles"]}
    assert set(bundles) == {*ODD, "study-good.json"}
    for name, (_, why) in ODD.items():
        assert bundles[name]["status"] == "failed", name
        assert why in bundles[name]["error"], (name, bundles[name]["error"])
    assert bundles["study-good.json"]["status"] == ("planned" if dry_run else "pushed")
    assert count(clean_fhir.base_url, "ImagingStudy") == (0 if dry_run else 1)


@pytest.mark.parametrize("mutate", ODD_STUDIES)
def test_odd_imaging_study_shapes_never_crash_push(
    tmp_path: Path, clean_fhir: Any, mutate: str
) -> None:
    """An ImagingStudy of an odd shape inside a well-formed transaction, for a study the server
    already holds: the merge (which walks series, instances, identifiers, modalities) refuses it
    with the reason instead of crashing, and the server's study is left as it was."""
    uid = "2.25.9201"
    base = ["--server", clean_fhir.base_url, *FAST, "--json", "--journal", str(tmp_path / "j")]
    odd = tmp_path / "odd.json"
    odd.write_bytes(jsonio.dumps(_study_with(uid, mutate)))
    # No study on the server yet: nothing to merge, the bundle goes as converted and the strict
    # server refuses it.
    refused = CliRunner().invoke(app, ["push", str(odd), *base])
    assert refused.exit_code == 1, refused.output
    assert _summary(refused)["bundles"][0]["httpStatus"] == 400
    good = tmp_path / "good.json"
    good.write_bytes(jsonio.dumps(study_bundle(uid, f"MRN-{uid}")[0]))
    first = CliRunner().invoke(app, ["push", str(good), *base])
    assert first.exit_code == 0, first.output
    before = search(clean_fhir.base_url, "ImagingStudy")
    planned = CliRunner().invoke(app, ["push", str(odd), *base, "--dry-run"])
    assert planned.exit_code == 0, planned.output  # a dry run reads nothing from the server
    result = CliRunner().invoke(app, ["push", str(odd), *base])
    assert result.exit_code == 1, result.output
    bundle = _summary(result)["bundles"][0]
    assert bundle["status"] == "failed"
    assert "the bundle's ImagingStudy cannot be merged" in bundle["error"], bundle
    assert search(clean_fhir.base_url, "ImagingStudy") == before


@pytest.mark.parametrize("mutate", ODD_STUDIES)
def test_push_dicomweb_plans_odd_imaging_studies_without_a_crash(
    tmp_path: Path, mutate: str
) -> None:
    odd = tmp_path / "odd.json"
    odd.write_bytes(jsonio.dumps(_study_with("2.25.9202", mutate)))
    result = CliRunner().invoke(
        app, ["push", str(odd), "--dicomweb", "http://127.0.0.1:9/dw", "--dry-run", "--json"]
    )
    assert result.exit_code == 1, result.output
    failed = _summary(result)["dicomweb"]["studies"][0]["failed"]
    assert "cannot be read" in failed[0]["reason"], failed


def test_push_dicomweb_refuses_odd_files_without_a_crash(tmp_path: Path) -> None:
    """``push --dicomweb`` plans from the same files: an odd one is a failed study, with its
    reason, and nothing is sent for it (``--dry-run``: no request at all)."""
    folder = _odd_folder(tmp_path)
    result = CliRunner().invoke(
        app,
        ["push", str(folder), "--dicomweb", "http://127.0.0.1:9/dicom-web", "--dry-run", "--json"],
    )
    assert result.exit_code == 1, result.output
    studies = {s["bundle"]: s for s in _summary(result)["dicomweb"]["studies"]}
    assert set(studies) == {*ODD, "study-good.json"}
    for name, (_, why) in ODD.items():
        assert why in studies[name]["failed"][0]["reason"], name
