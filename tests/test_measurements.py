"""SR measurement and dose reports as FHIR Observations (issue 20; docs/measurements.md).

The corpus is ``sample_data/sr`` (``sample_data/make_sr.py``): study M holds a CT series, a TID
1500 report written with highdicom, a CT dose SR (TID 10011) and a text-only SR; study O holds
TID 1500 reports broken on purpose. Each release is converted once (module fixture) and pinned by
golden bundles (``tests/golden/sr-r4``, ``sr-r5``; regenerate with ``FHIRIMG_UPDATE_GOLDEN=1``),
then checked element by element, validated, and pushed to the FHIR test server.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.dicomweb.records import record_from_json
from fhirimg.model import InstanceRecord
from fhirimg.scan import read_file
from fhirimg.srread import MAX_DEPTH
from tests.conftest import count, search
from tests.helpers import GOLDEN, REPO, load, report_bytes
from tests.servers.fhir_server import FhirTestServer, start_fhir_server

CORPUS = REPO / "sample_data" / "sr"
SCT, DCM = "http://snomed.info/sct", "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
Bundle = dict[str, Any]


def _convert(out: Path, *args: str) -> Any:
    cwd = os.getcwd()
    os.chdir(REPO)  # relative paths keep report.json free of the checkout path
    try:
        return CliRunner().invoke(
            app, ["convert", "sample_data/sr", "-o", str(out), "-j", "1", "-q", *args]
        )
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for release in ("r4", "r5"):
        folder = tmp_path_factory.mktemp(release) / "out"
        result = _convert(folder, "--fhir-version", release)
        assert result.exit_code == 0, result.output
        out[release] = folder
    return out


def _bundles(folder: Path) -> list[Bundle]:
    return [load(p) for p in sorted(folder.glob("study-*.json"))]


def _study_m(folder: Path) -> Bundle:
    """The bundle of study M (CT, TID 1500, dose and text SR series)."""
    return next(b for b in _bundles(folder) if _of(b, "ImagingStudy")[0]["numberOfSeries"] == 4)


def _study_o(folder: Path) -> Bundle:
    return next(b for b in _bundles(folder) if _of(b, "ImagingStudy")[0]["numberOfSeries"] == 1)


def _of(bundle: Bundle, rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _by_url(bundle: Bundle) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def _url_of(bundle: Bundle, rtype: str) -> str:
    return str(
        next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)
    )


def _code(res: dict[str, Any]) -> tuple[str, str]:
    coding = res["code"]["coding"][0]
    return coding.get("system", ""), coding["code"]


def _with_code(bundle: Bundle, system: str, code: str) -> list[dict[str, Any]]:
    return [o for o in _of(bundle, "Observation") if _code(o) == (system, code)]


# --------------------------------------------------------------------------- golden bundles


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_golden(outputs: dict[str, Path], release: str) -> None:
    folder = outputs[release]
    got = {p.name: p.read_bytes() for p in sorted(folder.glob("study-*.json"))}
    got["report.json"] = report_bytes(folder)
    target = GOLDEN / f"sr-{release}"
    if os.environ.get("FHIRIMG_UPDATE_GOLDEN"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name, data in got.items():
            (target / name).write_bytes(data)
    expected = {p.name: p.read_bytes() for p in sorted(target.iterdir())}
    assert sorted(got) == sorted(expected)
    for name, data in got.items():
        assert data == expected[name], f"{name} differs from tests/golden/sr-{release}/"


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_validate_passes(outputs: dict[str, Path], release: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(outputs[release]), "--strict", "--quiet"])
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- TID 1500


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_measurements_codes_values_units_links(outputs: dict[str, Path], release: str) -> None:
    bundle = _study_m(outputs[release])
    urls = _by_url(bundle)
    study_url, patient_url = _url_of(bundle, "ImagingStudy"), _url_of(bundle, "Patient")
    long_axes = _with_code(bundle, SCT, "103339001")
    # 21.5 and 22.5 mm in the two groups, 44 mm derived (TID 1420)
    assert sorted(o["valueQuantity"]["value"] for o in long_axes) == [21.5, 22.5, 44.0]
    for obs in _of(bundle, "Observation"):
        assert obs["subject"] == {"reference": patient_url}
        assert obs["partOf"] == [{"reference": study_url}]
        assert obs["basedOn"][0]["identifier"]["value"] == "ACC-SR-M"
        assert obs["issued"].endswith("Z")
        for quantity in [obs.get("valueQuantity")] + [
            c["valueQuantity"] for c in obs.get("component", ())
        ]:
            if quantity is not None:
                assert quantity["system"] == UCUM
    first = next(o for o in long_axes if o["valueQuantity"]["value"] == 21.5)
    assert first["valueQuantity"] == {
        "value": 21.5, "unit": "millimeter", "system": UCUM, "code": "mm"
    }  # fmt: skip
    assert first["bodySite"]["coding"][0] == {"system": SCT, "code": "10200004", "display": "Liver"}
    assert first["device"] == {"display": "LesionFinder 1.2"}
    # Groups: code from Finding Category, category DCM 125007, Finding as value, members resolve.
    groups = [o for o in _of(bundle, "Observation") if "hasMember" in o and "component" not in o]
    assert len(groups) == 2
    for group in groups:
        assert _code(group) == (SCT, "49755003")
        assert group["category"][0]["coding"][0]["code"] == "125007"
        assert group["valueCodeableConcept"]["coding"][0]["code"] == "52988006"
        members = [urls[m["reference"]] for m in group["hasMember"]]
        assert all(m["resourceType"] == "Observation" for m in members)
        tracking = {i["type"]["coding"][0]["code"]: i["value"] for i in group["identifier"][1:]}
        assert tracking["112039"] in ("lesion-1", "lesion-2")
        assert tracking["112040"].startswith("urn:oid:2.25.")
    shapes = _with_code(bundle, "http://radlex.org", "RID5")
    assert {s["valueCodeableConcept"]["coding"][0]["code"] for s in shapes} == {"RID5800", "C25228"}
    assert {s["valueCodeableConcept"]["coding"][0]["system"] for s in shapes} == {
        "http://radlex.org", "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
    }  # fmt: skip
    # A private scheme keeps its designator as the system (issue 16's rule).
    (score,) = _with_code(bundle, "urn:dicom:scheme:99FHIRIMG", "LV-1")
    assert score["valueQuantity"] == {"value": 3, "unit": "no units", "system": UCUM, "code": "1"}
    # TID 1420: category DCM 126011, derived from both groups, its Observation UID kept.
    (derived,) = [o for o in long_axes if o["valueQuantity"]["value"] == 44.0]
    assert derived["category"][0]["coding"][0]["code"] == "126011"
    group_urls = {u for u, r in urls.items() if r in groups}
    assert {d["reference"] for d in derived["derivedFrom"]} == group_urls
    assert derived["identifier"][0]["system"] == "urn:dicom:uid"
    assert derived["identifier"][0]["type"]["coding"][0]["code"] == "observation-uid"
    # The text-only SR gives nothing: every Observation comes from the two reports.
    assert len(_of(bundle, "Observation")) == 13  # 4 + 5 (groups), 1 derived, 3 dose


def test_r5_regions_are_imaging_selections(outputs: dict[str, Path]) -> None:
    bundle = _study_m(outputs["r5"])
    urls = _by_url(bundle)
    study = _of(bundle, "ImagingStudy")[0]
    listed = {i["uid"]: s["uid"] for s in study["series"] for i in s["instance"]}
    selections = _of(bundle, "ImagingSelection")
    assert len(selections) == 2
    regions = sorted(s["instance"][0]["imageRegion2D"][0]["regionType"] for s in selections)
    assert regions == ["point", "polyline"]
    for selection in selections:
        assert _code(selection) == (DCM, "111030")
        assert selection["derivedFrom"] == [{"reference": _url_of(bundle, "ImagingStudy")}]
        (instance,) = selection["instance"]
        assert listed[instance["uid"]] == selection["seriesUid"]
    polyline = next(
        s for s in selections if s["instance"][0]["imageRegion2D"][0]["regionType"] == "polyline"
    )
    assert polyline["instance"][0]["imageRegion2D"][0]["coordinate"] == [
        2.0,
        2.0,
        8.0,
        2.0,
        8.0,
        6.0,
        2.0,
        2.0,
    ]
    # Every measurement of a group reaches its region by derivedFrom.
    for obs in _with_code(bundle, SCT, "42798000"):
        (ref,) = obs["derivedFrom"]
        assert urls[ref["reference"]]["resourceType"] == "ImagingSelection"
    # The lateralised finding site: bodyStructure (never with bodySite: obs-8).
    kidney = [o for o in _of(bundle, "Observation") if "bodyStructure" in o]
    assert kidney
    assert all("bodySite" not in o for o in kidney)
    body = urls[kidney[0]["bodyStructure"]["reference"]]
    assert body["includedStructure"][0]["laterality"]["coding"][0]["code"] == "7771000"


def test_r4_regions_ride_on_the_extension(outputs: dict[str, Path]) -> None:
    bundle = _study_m(outputs["r4"])
    assert not _of(bundle, "ImagingSelection")
    assert not _of(bundle, "BodyStructure")
    study_url = _url_of(bundle, "ImagingStudy")
    areas = _with_code(bundle, SCT, "42798000")
    assert len(areas) == 2
    for obs in areas:
        assert obs["derivedFrom"] == [{"reference": study_url}]
        (ext,) = obs["extension"]
        assert ext["url"] == "https://fhirimg.dev/fhir/StructureDefinition/image-region"
        parts = {p["url"] for p in ext["extension"]}
        assert parts == {"instance", "regionType", "coordinate"}
    kidney = next(o for o in areas if "Kidney" in o["bodySite"].get("text", ""))
    assert kidney["bodySite"]["text"] == "Kidney, Left"


# --------------------------------------------------------------------------- TID 10011


@pytest.mark.parametrize("release", ["r4", "r5"])
def test_ct_dose(outputs: dict[str, Path], release: str) -> None:
    bundle = _study_m(outputs[release])
    urls = _by_url(bundle)
    (report,) = _with_code(bundle, DCM, "113701")
    values = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in report["component"]}
    assert values["113813"] == {"value": 612.5, "unit": "mGy.cm", "system": UCUM, "code": "mGy.cm"}
    assert values["113812"]["value"] == 2
    assert values["113812"]["code"] == "{events}"
    events = [urls[m["reference"]] for m in report["hasMember"]]
    assert [_code(e) for e in events] == [(DCM, "113819")] * 2
    seen = {}
    for event in events:
        ident = event["identifier"][0]
        assert ident["type"]["coding"][0]["code"] == "113769"
        assert ident["system"] == "urn:dicom:uid"
        assert ident["value"].startswith("urn:oid:2.25.")
        dose = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in event["component"]}
        seen[dose["113830"]["value"]] = dose["113838"]["value"]
        assert dose["113830"]["code"] == "mGy"
        assert dose["113838"]["code"] == "mGy.cm"
    assert seen == {12.5: 312.5, 10.0: 300.0}
    # The conditional create is on the event's UID.
    entry = next(e for e in bundle["entry"] if e["resource"] is events[0])
    assert (
        entry["request"]["ifNoneExist"]
        == f"identifier=urn:dicom:uid|{events[0]['identifier'][0]['value']}"
    )


# --------------------------------------------------------------------------- bad content


def test_bad_content_warns_and_the_rest_converts(outputs: dict[str, Path]) -> None:
    bundle = _study_o(outputs["r4"])
    report = load(outputs["r4"] / "report.json")
    (study,) = [s for s in report["studies"] if s["instances"] == 4]
    warnings = "\n".join(study["warnings"])
    assert "content item 1.1.1.3 (NUM Long Axis) has no Measurement Units Code Sequence" in warnings
    assert (
        "content item 1.1.1.3 (NUM Long Axis) has no Numeric Value (0040,A30A) (it holds text instead)"
        in warnings
    )
    assert (
        "content item 1.1.1.3 (by-reference no concept) refers to 1.1.1, which contains it"
        in warnings
    )
    assert f"nested deeper than {MAX_DEPTH} levels" in warnings
    assert "content item 1.1.1.3 (CONTAINER Measurement Group): a group inside a group" in warnings
    # Each of the four reports still gives its group and its Area measurement.
    assert len(_with_code(bundle, SCT, "42798000")) == 4
    assert len(_with_code(bundle, DCM, "125007")) == 4
    assert all(f["status"] == "converted" for f in report["files"])


def test_deep_tree_record_pickles() -> None:
    """The 1,000-level tree is read flat: the record crosses to a worker process whole."""
    record = read_file(str(CORPUS / "odd" / "deep.dcm"))
    assert isinstance(record, InstanceRecord)
    assert record.sr is not None
    assert max(i.position.count(".") for i in record.sr.items) == MAX_DEPTH
    assert pickle.loads(pickle.dumps(record)) == record


def test_dicomweb_metadata_gives_the_same_content() -> None:
    """WADO-RS metadata (DICOM JSON) of the report is read into the same content tree."""
    path = CORPUS / "measurements.dcm"
    from_file = read_file(str(path))
    assert isinstance(from_file, InstanceRecord)
    assert from_file.sr is not None
    from_json = record_from_json(dcmread(path).to_json_dict(), "http://pacs/x")
    assert isinstance(from_json, InstanceRecord)
    assert from_json.sr == from_file.sr
    assert len(from_file.sr.items) == 36


def test_no_measurements(tmp_path: Path) -> None:
    result = _convert(tmp_path / "out", "--no-measurements", "--fhir-version", "r5")
    assert result.exit_code == 0, result.output
    kinds = {e["resource"]["resourceType"] for b in _bundles(tmp_path / "out") for e in b["entry"]}
    assert kinds == {"Patient", "ImagingStudy"}


def test_highdicom_not_imported_at_run_time(tmp_path: Path) -> None:
    probe = (
        "import sys; from fhirimg.cli import main; sys.argv = sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('highdicom' in sys.modules)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "fhirimg",
            "convert",
            str(CORPUS),
            "-o",
            str(tmp_path / "o"),
            "-j",
            "1",
            "-q",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip().splitlines()[-1] == "False", proc.stderr


# --------------------------------------------------------------------------- the FHIR server


@pytest.mark.server
def test_pushed_found_by_part_of_and_code(clean_fhir: FhirTestServer, tmp_path: Path) -> None:
    """A late SR merges like a late series: first the CT alone, then the whole study; the
    Observations are found by ``part-of`` the study and by ``code``; a re-push creates nothing."""
    base = clean_fhir.base_url
    early = tmp_path / "in"
    shutil.copytree(CORPUS / "ct", early / "ct")
    out = tmp_path / "out"

    def convert_and_push() -> None:
        converted = CliRunner().invoke(
            app, ["convert", str(early), "-o", str(out), "-j", "1", "-q"]
        )
        assert converted.exit_code == 0, converted.output
        pushed = CliRunner().invoke(app, ["push", str(out), "--server", base, "--quiet"])
        assert pushed.exit_code == 0, pushed.output

    convert_and_push()
    assert count(base, "Observation") == 0
    for name in ("measurements.dcm", "dose.dcm", "text.dcm"):
        shutil.copy(CORPUS / name, early / name)
    convert_and_push()  # the late SRs: the study is rebuilt with them and merged on the server
    (study,) = search(base, "ImagingStudy")
    assert study["numberOfInstances"] == 6  # 3 CT + 3 SR: merged, not replaced
    found = search(base, f"Observation?part-of=ImagingStudy/{study['id']}&_count=1000")
    assert len(found) == 13
    axes = search(base, f"Observation?code={SCT}|103339001")
    assert sorted(o["valueQuantity"]["value"] for o in axes) == [21.5, 22.5, 44.0]
    assert all(o["partOf"][0]["reference"] == f"ImagingStudy/{study['id']}" for o in axes)
    group = search(base, f"Observation?code={SCT}|49755003")
    assert len(group) == 2
    assert all(m["reference"].startswith("Observation/") for g in group for m in g["hasMember"])
    # Pushed again: nothing new.
    again = CliRunner().invoke(app, ["push", str(out), "--server", base, "--quiet", "--force"])
    assert again.exit_code == 0, again.output
    assert count(base, "Observation") == 13


# --------------------------------------------------------------------------- fault injection


def test_invalid_observations_cost_their_sr_not_the_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observations that fail validation (units made non-UCUM here) are traced to their SR
    instance, which is left out (fhirimg.partial); the rest of the study is written."""
    monkeypatch.setattr("fhirimg.measurements.UCUM", "http://example.org/not-ucum")
    result = _convert(tmp_path / "out")
    assert result.exit_code == 1, result.output  # files left out: partial
    report = load(tmp_path / "out" / "report.json")
    study = next(s for s in report["studies"] if s["instances"] == 4 and s["series"] == 2)
    dropped = sorted(Path(f["path"]).name for f in study["droppedFiles"])
    assert dropped == ["dose.dcm", "measurements.dcm"]
    assert study["status"] == "written"
    bundle = load(tmp_path / "out" / study["bundle"])
    assert not _of(bundle, "Observation")
    assert len(_of(bundle, "ImagingStudy")[0]["series"]) == 2  # the CT and the text SR


def test_a_mapping_bug_costs_only_that_sr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: object) -> None:
        raise KeyError("injected")

    monkeypatch.setattr("fhirimg.measurements._dose_report", broken)
    result = _convert(tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = load(tmp_path / "out" / "report.json")
    study = next(s for s in report["studies"] if s["series"] == 4)
    assert any("measurements not mapped (internal error KeyError)" in w for w in study["warnings"])
    bundle = load(tmp_path / "out" / study["bundle"])
    assert len(_of(bundle, "Observation")) == 10  # the TID 1500 report's, not the dose report's


@pytest.mark.server
def test_r5_pushed_found_by_part_of_and_code(outputs: dict[str, Path]) -> None:
    """The R5 bundles on the test server in R5 mode (transaction semantics, R4 search
    parameters): Observations found by ``part-of`` and ``code``, regions linked by reference."""
    required = os.environ.get("FHIRIMG_REQUIRE_SERVERS") == "1"
    try:
        server = start_fhir_server(fhir_version="5.0.0")
    except Exception as exc:  # not installed: as conftest's fixtures do
        if required:
            pytest.fail(f"FHIR test server did not start: {exc}")
        pytest.skip(f"FHIR test server unavailable: {exc}")
    with server:
        base = server.base_url
        pushed = CliRunner().invoke(app, ["push", str(outputs["r5"]), "--server", base, "--quiet"])
        assert pushed.exit_code == 0, pushed.output
        study = next(s for s in search(base, "ImagingStudy") if s["numberOfSeries"] == 4)
        found = search(base, f"Observation?part-of=ImagingStudy/{study['id']}&_count=1000")
        assert len(found) == 13
        areas = search(base, f"Observation?code={SCT}|42798000&part-of=ImagingStudy/{study['id']}")
        assert len(areas) == 2
        assert all(a["derivedFrom"][0]["reference"].startswith("ImagingSelection/") for a in areas)
        kidney = [o for o in found if "bodyStructure" in o]
        assert kidney
        assert all(o["bodyStructure"]["reference"].startswith("BodyStructure/") for o in kidney)
