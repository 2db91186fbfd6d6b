"""convert end to end on the bundled sample data and on pydicom's own test files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirimg import ConvertOptions, MapOptions, convert
from fhirimg.validate import ALL_LAYERS, Severity, resource_errors, validate_resource
from tests.helpers import (
    GOLDEN,
    REPO,
    SAMPLE,
    bundles,
    load,
    pydicom_file,
    report_bytes,
    resources,
    study_by_uid,
)

STUDY_A = "2.25.85155649098386921766494752360926339228"
STUDY_B = "2.25.199473283427071051488146072373703684864"
STUDY_ODD = "2.25.306098183423042513751258575779725731402"
DICOMWEB = "http://pacs.example.org/dicom-web"


@pytest.fixture(scope="module")
def sample_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    cwd = os.getcwd()
    os.chdir(REPO)  # relative input paths make report.json independent of the checkout location
    try:
        convert(
            ["sample_data/dicom"],
            ConvertOptions(out_dir=out, jobs=1, mapping=MapOptions(dicomweb_url=DICOMWEB)),
        )
    finally:
        os.chdir(cwd)
    return out


def test_every_file_is_accounted_for(sample_out: Path) -> None:
    report = load(sample_out / "report.json")
    on_disk = sorted(str(p.relative_to(REPO)) for p in SAMPLE.rglob("*") if p.is_file())
    assert sorted(f["path"] for f in report["files"]) == on_disk
    by_path = {f["path"]: f for f in report["files"]}
    assert by_path["sample_data/dicom/misc/notes.txt"]["status"] == "skipped"
    assert by_path["sample_data/dicom/dicomdir/DICOMDIR"]["status"] == "skipped"
    truncated = by_path["sample_data/dicom/misc/truncated.dcm"]
    assert truncated["status"] == "failed"
    assert "truncated" in truncated["reason"]
    assert report["summary"]["files"] == {
        "total": 23,
        "converted": 20,
        "skipped": 2,
        "duplicate": 0,
        "failed": 1,
    }


def test_golden_bundles(sample_out: Path) -> None:
    """Whole-bundle golden files; regenerate with FHIRIMG_UPDATE_GOLDEN=1 after a deliberate change."""
    got = {name: (sample_out / name).read_bytes() for name in bundles(sample_out)}
    got["report.json"] = report_bytes(sample_out)
    target = GOLDEN / "sample"
    if os.environ.get("FHIRIMG_UPDATE_GOLDEN"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name, data in got.items():
            (target / name).write_bytes(data)
    expected = {p.name: p.read_bytes() for p in sorted(target.iterdir())}
    assert sorted(got) == sorted(expected)
    for name, data in got.items():
        assert data == expected[name], f"{name} differs from tests/golden/sample/{name}"


def test_bundles_validate_with_models(sample_out: Path) -> None:
    for name, bundle in bundles(sample_out).items():
        assert resource_errors(bundle, "r4") == [], name


def test_bundles_pass_every_validator_layer(sample_out: Path) -> None:
    """What convert writes, the strict validator accepts: no error, no warning."""
    for name, bundle in bundles(sample_out).items():
        findings = validate_resource(bundle, fhir_version="r4", layers=ALL_LAYERS, source=name)
        assert [f for f in findings if f.severity != Severity.INFORMATION] == [], name


def test_study_split_across_folders_is_one_study(sample_out: Path) -> None:
    bundle = study_by_uid(sample_out, STUDY_A)
    (study,) = resources(bundle, "ImagingStudy")
    assert study["numberOfSeries"] == 2
    assert study["numberOfInstances"] == 6
    # sorted by series number, then instance number
    assert [s["number"] for s in study["series"]] == [1, 2]
    assert [i["number"] for i in study["series"][1]["instance"]] == [1, 2, 3, 4, 5]


def test_study_a_mapping(sample_out: Path) -> None:
    bundle = study_by_uid(sample_out, STUDY_A)
    (patient,) = resources(bundle, "Patient")
    (study,) = resources(bundle, "ImagingStudy")
    (endpoint,) = resources(bundle, "Endpoint")
    assert patient["name"] == [
        {"family": "Sample", "given": ["Alice", "Jane"], "prefix": ["Dr."], "suffix": ["PhD"]}
    ]
    ident = patient["identifier"][0]
    assert ident["system"].startswith("urn:oid:2.25.")
    assert ident["value"] == "FHIRIMG-0001"
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:" + STUDY_A}
    acsn = study["identifier"][1]
    assert acsn["type"]["coding"][0]["code"] == "ACSN"
    assert acsn["value"] == "ACC-A-0001"
    assert study["started"] == "2024-03-12T10:15:30.125+01:00"  # (0008,0201) +0100 applied
    assert study["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    axial = study["series"][1]
    assert axial["bodySite"]["code"] == "43799004"
    assert axial["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    assert axial["instance"][0]["sopClass"]["system"] == "urn:ietf:rfc:3986"
    assert endpoint["address"] == DICOMWEB
    assert study["endpoint"] == [{"reference": bundle["entry"][1]["fullUrl"]}]
    requests = [e["request"] for e in bundle["entry"]]
    assert requests[0]["ifNoneExist"] == f"identifier={ident['system']}|FHIRIMG-0001"
    assert requests[2] == {
        "method": "PUT",
        "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY_A}",
    }


def test_japanese_names(sample_out: Path) -> None:
    (patient,) = resources(study_by_uid(sample_out, STUDY_B), "Patient")
    assert [n["family"] for n in patient["name"]] == ["Yamada", "山田", "やまだ"]
    assert [n["given"] for n in patient["name"]] == [["Tarou"], ["太郎"], ["たろう"]]


def test_odd_values_degrade_with_warnings(sample_out: Path) -> None:
    (study,) = resources(study_by_uid(sample_out, STUDY_ODD), "ImagingStudy")
    assert "started" not in study  # 1996.06.11 is not a DA
    numbers = [i.get("number") for i in study["series"][0]["instance"]]
    assert None in numbers  # '1A' left out
    report = load(sample_out / "report.json")
    (odd,) = [s for s in report["studies"] if s["studyInstanceUid"] == STUDY_ODD]
    assert any("1996.06.11" in w for w in odd["warnings"])
    assert any("'1A'" in w for w in odd["warnings"])


def test_deterministic_and_jobs_independent(tmp_path: Path) -> None:
    runs = []
    for n, jobs in enumerate((1, 2, 1)):
        out = tmp_path / f"out{n}"
        convert([SAMPLE], ConvertOptions(out_dir=out, jobs=jobs))
        runs.append(
            {
                p.name: report_bytes(out) if p.name == "report.json" else p.read_bytes()
                for p in sorted(out.iterdir())
                if p.is_file()
            }
        )
    assert runs[0] == runs[1] == runs[2]


def test_duplicates_and_conflicts(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    ct = pydicom_file("CT_small.dcm")
    shutil.copy(ct, src / "a" / "ct.dcm")
    shutil.copy(ct, src / "b" / "ct-copy.dcm")  # identical: counted once
    import pydicom

    ds = pydicom.dcmread(ct)
    ds.SeriesInstanceUID = "1.2.3.4.5"  # same SOP Instance UID, other series: a conflict
    ds.save_as(src / "b" / "ct-conflict.dcm")
    report = convert([src], ConvertOptions(out_dir=tmp_path / "out", jobs=1))
    assert report.files["converted"] == 1
    assert report.files["duplicate"] == 1
    assert report.files["failed"] == 1
    assert "conflict" in report.failures[0][1]


def test_output_folder_inside_input_is_not_read(tmp_path: Path) -> None:
    shutil.copy(pydicom_file("CT_small.dcm"), tmp_path / "ct.dcm")
    for _ in range(2):
        report = convert([tmp_path], ConvertOptions(out_dir=tmp_path / "fhirimg-out", jobs=1))
    assert report.files == {"converted": 1, "skipped": 0, "duplicate": 0, "failed": 0}


def test_pydicom_test_files(tmp_path: Path) -> None:
    """pydicom's own test corpus (test_files with the dicomdirtests tree, and charset_files):
    no crash, every file accounted for, every bundle valid."""
    corpus = pydicom_file("CT_small.dcm").parent.parent
    assert (corpus / "charset_files").is_dir()
    assert (corpus / "test_files" / "dicomdirtests").is_dir()
    files = [p for p in corpus.rglob("*") if p.is_file()]
    report = convert([corpus], ConvertOptions(out_dir=tmp_path, jobs=2))
    assert sum(report.files.values()) == len(files)
    assert report.files["converted"] > 100
    assert all(s.ok for s in report.studies), [s.errors for s in report.studies if not s.ok]
    for name, bundle in bundles(tmp_path).items():
        assert resource_errors(bundle, "r4") == [], name
    listed = {f["path"] for f in load(tmp_path / "report.json")["files"]}
    assert listed == {str(p) for p in files}


def test_charset_names_decode(tmp_path: Path) -> None:
    """ISO 2022 IR 87 (Japanese), ISO 2022 IR 149 (Korean) and GB18030 names from pydicom's
    charset files come out decoded, one HumanName per component group."""
    corpus = pydicom_file("CT_small.dcm").parent.parent / "charset_files"
    names = ("chrH31.dcm", "chrI2.dcm", "chrX2.dcm")
    convert([corpus / n for n in names], ConvertOptions(out_dir=tmp_path, jobs=1))
    families = {
        tuple(n.get("family", "") for n in p["name"])
        for b in bundles(tmp_path).values()
        for p in resources(b, "Patient")
    }
    assert ("Yamada", "山田", "やまだ") in families
    assert ("Hong", "洪", "홍") in families
    assert ("Wang", "王") in families


_CT_BYTES = pydicom_file("CT_small.dcm").read_bytes()
_MR_BYTES = pydicom_file("MR_small.dcm").read_bytes()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kinds=st.lists(
        st.sampled_from(["ct", "mr", "ct-copy", "junk", "cut", "empty", "text"]),
        min_size=1,
        max_size=8,
    ),
    nested=st.booleans(),
)
def test_every_input_file_is_accounted_for(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], nested: bool
) -> None:
    """Whatever mix of files a folder holds, each ends up in report.json exactly once, with a
    status, and the counts add up."""
    src = tmp_path_factory.mktemp("mix")
    made = []
    for n, kind in enumerate(kinds):
        folder = src / (f"d{n % 3}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "ct": _CT_BYTES,
            "mr": _MR_BYTES,
            "ct-copy": _CT_BYTES,
            "junk": bytes(range(256)) * 3,
            "cut": _CT_BYTES[: 300 + 37 * n],
            "empty": b"",
            "text": b"hello\n",
        }[kind]
        path = folder / f"f{n}.{'dcm' if n % 2 else 'bin'}"
        path.write_bytes(data)
        made.append(str(path))
    out = tmp_path_factory.mktemp("out")
    report = convert([src], ConvertOptions(out_dir=out, jobs=1))
    listed = [f["path"] for f in load(out / "report.json")["files"]]
    assert sorted(listed) == sorted(made)
    assert sum(report.files.values()) == len(made)
    dicom = [k for k in kinds if k in ("ct", "mr", "ct-copy")]
    assert report.files["converted"] == len({k.removesuffix("-copy") for k in dicom})
    assert report.files["duplicate"] == len(dicom) - report.files["converted"]
