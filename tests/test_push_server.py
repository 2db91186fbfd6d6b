"""``fhirimg push`` against the real (strict) FHIR test server: read back, idempotency, refusals,
splitting, dry run, journal. See test_push_faults.py for retries, auth and crash/resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.http import FhirClient, RetryPolicy
from fhirimg.push import Journal, push_bundle
from tests.conftest import (
    MRN_SYSTEM,
    MakeFolder,
    count,
    search,
    snapshot,
    study_bundle,
    write_bundle,
)

pytestmark = pytest.mark.server

FAST = ["--backoff", "0.01", "--retries", "2", "--quiet"]


def push(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["push", *map(str, args)], env=env)


def summary(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = jsonio.loads(result.stdout)["summary"]
    return data


def test_push_and_read_back(clean_fhir: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(2, binary_files=True, media=2, instances=3)
    result = push(folder, "--server", clean_fhir.base_url, *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert summary(result)["pushed"] == 2
    base = clean_fhir.base_url

    studies = search(base, "ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.1000")
    assert len(studies) == 1
    study = studies[0]
    patients = search(base, f"Patient?identifier={MRN_SYSTEM}|MRN0")
    assert len(patients) == 1
    assert study["subject"]["reference"] == f"Patient/{patients[0]['id']}"
    endpoint_ref = study["endpoint"][0]["reference"]
    assert endpoint_ref.startswith("Endpoint/")
    assert httpx.get(f"{base}/{endpoint_ref}").status_code == 200

    # Every instance's Binary is on the server, byte for byte, in the Patient's security context.
    bundle, binaries = study_bundle("2.25.1000", "MRN0", binary_files=True, media=2, instances=3)
    for instance in study["series"][0]["instance"]:
        binary_id = instance["extension"][0]["valueReference"]["reference"].split("/")[1]
        raw = httpx.get(f"{base}/Binary/{binary_id}", headers={"Accept": "application/dicom"})
        assert raw.status_code == 200
        assert raw.content == binaries[binary_id]
        assert raw.headers["X-Security-Context"] == f"Patient/{patients[0]['id']}"
    media = search(base, "Media?_count=100")
    assert len(media) == 4
    study_ids = {f"ImagingStudy/{s['id']}" for s in search(base, "ImagingStudy?_count=100")}
    assert {m["partOf"][0]["reference"] for m in media} <= study_ids


def test_push_twice_leaves_one_of_each(clean_fhir: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(3, patients=2, binary_files=True, instances=2)
    base = clean_fhir.base_url
    first = push(folder, "--server", base, *FAST, "--jobs", "3")
    assert first.exit_code == 0, first.output
    state = snapshot(base)
    # Once more ignoring the journal (really re-sent), once more with it (skipped).
    again = push(folder, "--server", base, *FAST, "--jobs", "3", "--force", "--json")
    assert again.exit_code == 0, again.output
    assert summary(again)["pushed"] == 3
    skipped = push(folder, "--server", base, *FAST, "--json")
    assert skipped.exit_code == 0, skipped.output
    assert summary(skipped)["skipped"] == 3
    assert summary(skipped)["requests"] == 1  # only GET metadata

    assert snapshot(base) == state
    assert count(base, "Patient") == 2
    assert count(base, "Endpoint") == 1
    assert count(base, "ImagingStudy") == 3
    assert count(base, "Binary") == 3 * 2


def test_concurrent_bundles_sharing_a_patient_make_one_patient(
    clean_fhir: Any, make_folder: MakeFolder
) -> None:
    folder = make_folder(8, patients=1)
    result = push(folder, "--server", clean_fhir.base_url, *FAST, "--jobs", "8")
    assert result.exit_code == 0, result.output
    assert count(clean_fhir.base_url, "Patient") == 1
    assert count(clean_fhir.base_url, "Endpoint") == 1
    assert count(clean_fhir.base_url, "ImagingStudy") == 8


def test_refused_bundle_shows_the_server_message(clean_fhir: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(2)
    bad, _ = study_bundle("2.25.9999", "MRN9")
    bad["entry"][2]["resource"]["status"] = "banana"  # not in the required ValueSet
    write_bundle(folder, "zz-bad", bad, {})
    result = push(folder, "--server", clean_fhir.base_url, *FAST, "--json")
    assert result.exit_code == 1, result.output
    assert "zz-bad.json" in result.stderr
    assert "HTTP 400" in result.stderr
    assert "banana" in result.stderr or "status" in result.stderr
    data = summary(result)
    assert (data["pushed"], data["failed"]) == (2, 1)
    failed = next(b for b in data["bundles"] if b["status"] == "failed")
    assert failed["httpStatus"] == 400
    assert failed["issues"]
    # All or nothing: nothing of the refused bundle is on the server.
    assert count(clean_fhir.base_url, "Patient", f"identifier={MRN_SYSTEM}|MRN9") == 0
    # The refusal is not journaled: fixing the file and re-running pushes it.
    bad["entry"][2]["resource"]["status"] = "available"
    write_bundle(folder, "zz-bad", bad, {})
    fixed = push(folder, "--server", clean_fhir.base_url, *FAST, "--json")
    assert fixed.exit_code == 0, fixed.output
    assert (summary(fixed)["pushed"], summary(fixed)["skipped"]) == (1, 2)


def test_max_entries_splits_and_references_resolve(
    clean_fhir_limited: Any, make_folder: MakeFolder
) -> None:
    folder = make_folder(2, media=8, inline_binaries=2, binary_files=True)  # 13 entries each
    base = clean_fhir_limited.base_url
    result = push(folder, "--server", base, *FAST, "--max-entries", "5", "--json")
    assert result.exit_code == 0, result.output
    assert [b["pieces"] for b in summary(result)["bundles"]] == [3, 3]
    studies = search(base, "ImagingStudy?_count=100")
    assert len(studies) == 2
    study_refs = {f"ImagingStudy/{s['id']}" for s in studies}
    media = search(base, "Media?_count=100")
    assert len(media) == 16
    assert {m["partOf"][0]["reference"] for m in media} == study_refs
    patient_refs = {f"Patient/{p['id']}" for p in search(base, "Patient?_count=100")}
    assert {m["subject"]["reference"] for m in media} <= patient_refs
    assert count(base, "Binary") == 2 * (2 + 2)


def test_too_large_is_detected_and_split(clean_fhir_limited: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(3, media=8)  # 11 entries, the server takes 8
    base = clean_fhir_limited.base_url
    result = push(folder, "--server", base, *FAST, "--jobs", "1", "--json")
    assert result.exit_code == 0, result.output
    assert all(b["pieces"] == 2 for b in summary(result)["bundles"])
    assert count(base, "Media") == 24
    # Learned once: after the first refusal the others are cut at 8 from the start.
    # metadata, one refusal, 6 pieces; no ImagingStudy search: the studies are new, and the
    # server declares conditional create (push.transaction.CreateFirst)
    assert summary(result)["requests"] == 1 + 1 + 2 * 3

    refused = push(folder, "--server", base, *FAST, "--force", "--no-auto-split")
    assert refused.exit_code == 1, refused.output
    assert "too many entries" in refused.stderr


def test_dry_run_sends_nothing(clean_fhir: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(2, binary_files=True, media=4)
    result = push(folder, "--server", clean_fhir.base_url, "--dry-run", "--max-entries", "4")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "study-000.json: 7 entries" in out
    assert "PUT Binary/" in out
    assert "POST [base]  4 entries" in out
    assert "piece 2/2" in out
    assert count(clean_fhir.base_url, "Patient") == 0
    assert not (folder / ".fhirimg-push-journal.jsonl").exists()


def test_default_folder_and_journal_location(
    clean_fhir: Any, make_folder: MakeFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_folder(1, name="fhirimg-out")
    monkeypatch.chdir(folder.parent)
    result = push("--server", clean_fhir.base_url, *FAST)
    assert result.exit_code == 0, result.output
    assert (folder / ".fhirimg-push-journal.jsonl").is_file()
    assert count(clean_fhir.base_url, "ImagingStudy") == 1


def test_custom_journal_path(clean_fhir: Any, make_folder: MakeFolder, tmp_path: Path) -> None:
    folder = make_folder(2)
    journal = tmp_path / "elsewhere" / "j.jsonl"
    result = push(folder, "--server", clean_fhir.base_url, *FAST, "--journal", journal)
    assert result.exit_code == 0, result.output
    lines = [jsonio.loads(line) for line in journal.read_bytes().splitlines()]
    assert [(r["kind"], r["file"]) for r in lines] == [
        ("bundle", "study-000.json"),
        ("bundle", "study-001.json"),
    ] or sorted(r["file"] for r in lines) == ["study-000.json", "study-001.json"]
    assert all(r["server"] == clean_fhir.base_url for r in lines)


def test_no_bundles_is_nothing_to_do(tmp_path: Path, fhir_server: Any) -> None:
    # Exit 4, not 3 (issue 11 item 17): the run worked, the folder held nothing to push.
    (tmp_path / "report.json").write_bytes(b"{}")
    result = push(tmp_path, "--server", fhir_server.base_url, *FAST)
    assert result.exit_code == 4, result.output
    assert "no transaction Bundle" in result.output


def test_missing_binary_file_fails_the_bundle(clean_fhir: Any, make_folder: MakeFolder) -> None:
    folder = make_folder(1, binary_files=True)
    next((folder / "study-000.binaries").iterdir()).unlink()
    result = push(folder, "--server", clean_fhir.base_url, *FAST)
    assert result.exit_code == 1, result.output
    assert "missing" in result.stderr
    assert count(clean_fhir.base_url, "ImagingStudy") == 0


def test_push_bundle_library_api(clean_fhir: Any, tmp_path: Path) -> None:
    bundle, binaries = study_bundle("2.25.42", "MRN42", binary_files=True)
    pairs = []
    for binary_id, data in binaries.items():
        (tmp_path / f"{binary_id}.dcm").write_bytes(data)
        pairs.append((binary_id, tmp_path / f"{binary_id}.dcm"))
    journal = Journal(tmp_path / "j.jsonl")
    with FhirClient(clean_fhir.base_url, retry=RetryPolicy(backoff_base=0.01)) as client:
        with journal:
            result = push_bundle(client, bundle, pairs, journal=journal, max_entries=2)
            assert result.status == "pushed", result.error
            assert result.pieces == 2
            assert result.binaries_uploaded == 2
            again = push_bundle(client, bundle, pairs, journal=journal)
            assert again.status == "skipped"
    assert result.references[bundle["entry"][2]["fullUrl"]].startswith("ImagingStudy/")
    assert count(clean_fhir.base_url, "ImagingStudy") == 1


def test_real_converter_output_pushes_twice_without_duplicates(
    clean_fhir: Any, tmp_path: Path
) -> None:
    fhirimg = pytest.importorskip("fhirimg")
    if not hasattr(fhirimg, "convert"):
        pytest.skip("fhirimg.convert is not there yet")
    from fhirimg import ConvertOptions, MapOptions, convert

    sample = Path(__file__).resolve().parent.parent / "sample_data" / "dicom"
    out = tmp_path / "fhirimg-out"
    mapping = MapOptions(dicomweb_url="https://pacs.example/dicom-web")
    convert([sample], ConvertOptions(out_dir=out, jobs=1, mapping=mapping))
    bundles = sorted(p for p in out.glob("*.json") if p.name != "report.json")
    assert bundles
    base = clean_fhir.base_url
    first = push(out, "--server", base, *FAST, "--json")
    assert first.exit_code == 0, first.output
    assert summary(first)["pushed"] == len(bundles)
    state = snapshot(base)
    again = push(out, "--server", base, *FAST, "--force")
    assert again.exit_code == 0, again.output
    assert snapshot(base) == state
    assert count(base, "ImagingStudy") == len(bundles)
    assert count(base, "Endpoint") == 1
    for path in bundles:
        study = next(
            e["resource"]
            for e in jsonio.loads(path.read_bytes())["entry"]
            if e["resource"]["resourceType"] == "ImagingStudy"
        )
        uid = study["identifier"][0]["value"]
        assert len(search(base, f"ImagingStudy?identifier=urn:dicom:uid|{uid}")) == 1


def test_unreadable_part_file_fails_its_study_only(
    clean_fhir: Any, make_folder: MakeFolder
) -> None:
    """A truncated ``<stem>.part-N.json`` (a convert killed mid-write) fails that study, is
    reported like any refusal, and does not stop the run for the other bundles."""
    folder = make_folder(2)
    (folder / "study-000.part-2.json").write_bytes(b'{"resourceType": "Bundle", "entr')
    result = push(folder, "--server", clean_fhir.base_url, *FAST, "--json")
    assert result.exit_code == 1, result.output
    data = summary(result)
    assert (data["pushed"], data["failed"]) == (1, 1)
    failed = next(b for b in data["bundles"] if b["status"] == "failed")
    assert failed["file"] == "study-000.json"
    assert "study-000.part-2.json" in failed["error"]
    assert "study-000.json" in result.stderr
    assert count(clean_fhir.base_url, "ImagingStudy") == 1
