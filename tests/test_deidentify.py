"""De-identification (issue 14): ``convert --deidentify`` and ``fhirimg deidentify``.

The leak scan is in tests/test_deid_leaks.py. Here: the same key gives byte-identical output,
another key shares no UID or pseudonym, intervals between a patient's studies are kept, pixel data
is unchanged where it is kept, FHIR and DICOM outputs agree, the files read strictly with pydicom
and are accepted by the real Orthanc over STOW-RS, burned-in images are withheld and reported,
the key and the re-identification map are handled as documented.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.deid import DeidOptions
from fhirimg.deid.actions import action
from tests.helpers import SAMPLE, bundles, load, orthanc_or_skip, resources
from tests.servers.orthanc_server import OrthancServer

KEY = "first-key-0123456789abcdefghij"
OTHER_KEY = "other-key-0123456789abcdefghij"
SYSTEM = "https://research.example.org/pseudonyms"
PSEUDED = "PSEUDED"


def _run(args: list[str], key: str | None = KEY) -> Any:
    env = {"FHIRIMG_DEID_KEY": key} if key is not None else {"FHIRIMG_DEID_KEY": ""}
    return CliRunner().invoke(app, args, env=env)


def _convert(out: Path, key: str = KEY, *more: str) -> Path:
    args = ["convert", str(SAMPLE), "--out", str(out), "--deidentify", "--quiet", "-j", "1"]
    result = _run([*args, "--deid-patient-system", SYSTEM, *more], key)
    assert result.exit_code == 1, result.output  # sample_data holds a truncated file on purpose
    return out


@pytest.fixture(scope="module")
def pixels_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sample_data converted with Binaries inline and rendered images."""
    out = tmp_path_factory.mktemp("deid-pixels")
    return _convert(out, KEY, "--binary", "inline", "--media")


@pytest.fixture(scope="module")
def files_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """sample_data de-identified into DICOM files, with the re-identification map."""
    root = tmp_path_factory.mktemp("deid-files")
    out, reid = root / "out", root / "private" / "reid.json"
    reid.parent.mkdir()
    args = ["deidentify", str(SAMPLE), "--out", str(out), "--reid-map", str(reid), "--quiet"]
    result = _run([*args, "--allow-burned-in"])
    assert result.exit_code == 1, result.output  # the truncated file fails
    return out, reid


def _originals() -> dict[str, Path]:
    """SOP Instance UID -> input file of sample_data (pydicom alone)."""
    found: dict[str, Path] = {}
    for path in sorted(p for p in SAMPLE.rglob("*") if p.is_file()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
                uid = str(ds.SOPInstanceUID)
        except Exception:
            continue
        if uid not in found or "PixelData" in ds:  # misc/truncated.dcm is a cut ct_0001.dcm
            found[uid] = path
    return found


def _pixel_hash(data: Path | bytes) -> str:
    import io

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source, force=True)
    return hashlib.sha256(ds.PixelData).hexdigest()


def _written(out: Path) -> Iterator[Path]:
    return (p for p in sorted(out.rglob("*.dcm")))


# --- the same key, another key -----------------------------------------------------------------


def test_same_key_gives_byte_identical_output(pixels_out: Path, tmp_path: Path) -> None:
    again = _convert(tmp_path / "again", KEY, "--binary", "inline", "--media")
    names = sorted(p.name for p in pixels_out.glob("study-*.json"))
    assert names == sorted(p.name for p in again.glob("study-*.json"))
    assert len(names) == 5
    for name in names:
        assert (pixels_out / name).read_bytes() == (again / name).read_bytes(), name


def test_another_key_into_the_same_folder_reads_every_file_again(tmp_path: Path) -> None:
    """The catalog's records were read with the first key: they are not reused."""
    out = _convert(tmp_path / "out", KEY)
    first, _ = _uids_and_pseudonyms(out)
    for bundle in out.glob("study-*.json"):
        bundle.unlink()
    _convert(out, OTHER_KEY)
    report = load(out / "report.json")
    assert report["summary"]["run"]["full"] is True
    assert report["summary"]["run"]["files"]["unchanged"] == 0
    again, _ = _uids_and_pseudonyms(out)
    assert again
    assert not first & again


def test_watch_once_deidentifies_too(tmp_path: Path) -> None:
    """watch (and listen, which watch converts for) take the same options."""
    out = tmp_path / "out"
    args = ["watch", str(SAMPLE / "study_b_mr"), "--out", str(out), "--once", "--deidentify"]
    result = _run([*args, "--quiet"])
    assert result.exit_code == 0, result.output
    (bundle,) = bundles(out).values()
    patient = resources(bundle, "Patient")[0]
    assert patient["meta"]["security"][0]["code"] == PSEUDED
    original = pydicom.dcmread(next((SAMPLE / "study_b_mr").glob("*.dcm")), force=True)
    text = str(bundle)
    assert str(original.PatientID) not in text
    assert str(original.StudyInstanceUID) not in text


def _uids_and_pseudonyms(out: Path) -> tuple[set[str], set[str]]:
    uids: set[str] = set()
    pseudonyms: set[str] = set()
    for path in out.glob("study-*.json"):
        uids |= set(re.findall(r"2\.25\.\d+", path.read_text()))
        for patient in resources(load(path), "Patient"):
            pseudonyms |= {i["value"] for i in patient.get("identifier", ())}
    return uids, pseudonyms


def test_another_key_shares_no_uid_or_pseudonym(pixels_out: Path, tmp_path: Path) -> None:
    other = _convert(tmp_path / "other", OTHER_KEY)
    uids, pseudonyms = _uids_and_pseudonyms(pixels_out)
    other_uids, other_pseudonyms = _uids_and_pseudonyms(other)
    assert len(uids) > 20
    assert len(other_uids) > 20
    assert len(pseudonyms) == len(other_pseudonyms) >= 3  # sample_data's patients
    assert not uids & other_uids
    assert not pseudonyms & other_pseudonyms


# --- dates ----------------------------------------------------------------------------------------


def _day(text: str) -> dt.date:
    return (
        dt.date.fromisoformat(text[:10])
        if "-" in text
        else dt.datetime.strptime(text, "%Y%m%d").date()
    )


def test_interval_between_two_studies_of_a_patient_is_kept(pixels_out: Path) -> None:
    original: dict[str, set[dt.date]] = {}
    for path in _originals().values():
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        if ds.get("PatientID") and re.fullmatch(r"\d{8}", str(ds.get("StudyDate", ""))):
            original.setdefault(str(ds.PatientID), set()).add(_day(str(ds.StudyDate)))
    shifted: dict[str, set[dt.date]] = {}
    for bundle in bundles(pixels_out).values():
        pid = resources(bundle, "Patient")[0]["identifier"][0]["value"]
        started = resources(bundle, "ImagingStudy")[0].get("started")
        if started:
            shifted.setdefault(pid, set()).add(_day(started))

    def gaps(days: set[dt.date]) -> list[int]:
        ordered = sorted(days)
        return [(b - a).days for a, b in zip(ordered, ordered[1:], strict=False)]

    with_two = [gaps(d) for d in original.values() if len(d) > 1]
    assert with_two  # sample_data has a patient with two studies on two days
    assert sorted(with_two) == sorted(gaps(d) for d in shifted.values() if len(d) > 1)
    assert not {d for ds in original.values() for d in ds} & {
        d for ds in shifted.values() for d in ds
    }


# --- FHIR side ------------------------------------------------------------------------------------


def test_fhir_resources_are_pseudonymised_and_labelled(pixels_out: Path) -> None:
    labelled = 0
    for bundle in bundles(pixels_out).values():
        patient = resources(bundle, "Patient")[0]
        ident = patient["identifier"][0]
        assert ident["system"] == SYSTEM
        assert re.fullmatch(r"[A-Z2-7]{16}", ident["value"])
        assert patient["name"][0]["family"] == ident["value"]
        assert "birthDate" not in patient  # (0010,0030): Z in Table E.1-1
        study = resources(bundle, "ImagingStudy")[0]
        assert [i for i in study["identifier"] if i.get("type")] == []  # no accession
        assert "referrer" not in study
        assert "interpreter" not in study
        assert all("performer" not in s for s in study["series"])
        assert "description" not in study
        for item in bundle["entry"]:
            res = item["resource"]
            if res["resourceType"] in ("Patient", "ImagingStudy", "Binary", "Media"):
                codes = [s["code"] for s in res["meta"]["security"]]
                assert codes == [PSEUDED], res["resourceType"]
                labelled += 1
    assert labelled > 30


def test_sr_content_goes_and_with_it_the_observations(tmp_path: Path) -> None:
    """(0040,A730) Content Sequence is not cleaned (no Clean Structured Content Option), so a
    de-identified study carries no Observation; without --deidentify the same SRs give some."""
    plain = tmp_path / "plain"
    result = _run(["convert", str(SAMPLE.parent / "sr"), "--out", str(plain), "--quiet"], None)
    assert result.exit_code in (0, 1), result.output
    assert any(resources(b, "Observation") for b in bundles(plain).values())
    deid = tmp_path / "deid"
    args = ["convert", str(SAMPLE.parent / "sr"), "--out", str(deid), "--deidentify", "--quiet"]
    result = _run(args)
    assert result.exit_code in (0, 1), result.output
    found = bundles(deid)
    assert found
    assert not any(resources(b, "Observation") for b in found.values())


def test_r5_document_references_are_labelled(tmp_path: Path) -> None:
    out = tmp_path / "r5"
    args = ["convert", str(SAMPLE / "study_b_mr"), "--out", str(out), "--deidentify", "-q"]
    result = _run([*args, "--fhir-version", "r5", "--media", "--media-content", "binary"])
    assert result.exit_code == 0, result.output
    (bundle,) = bundles(out).values()
    documents = resources(bundle, "DocumentReference")
    assert documents
    for res in [*documents, *resources(bundle, "Binary"), *resources(bundle, "Patient")]:
        assert [s["code"] for s in res["meta"]["security"]] == [PSEUDED]


def test_burned_in_images_are_withheld_and_reported(pixels_out: Path, tmp_path: Path) -> None:
    report = load(pixels_out / "report.json")
    warned = {
        Path(f["path"]).name
        for f in report["files"]
        if any("burned-in" in w for w in f.get("warnings", ()))
    }
    assert {"us_rgb.dcm", "sc_rle.dcm"} <= warned
    allowed = _convert(tmp_path / "allowed", KEY, "--binary", "inline", "--allow-burned-in")
    assert load(allowed / "report.json")["summary"]["binaries"] == (
        load(pixels_out / "report.json")["summary"]["binaries"] + len(warned)
    )


# --- DICOM side -----------------------------------------------------------------------------------


def test_dicom_files_are_marked_and_agree_with_fhir(
    files_out: tuple[Path, Path], pixels_out: Path
) -> None:
    out, _ = files_out
    fhir_instances = {
        inst["uid"]
        for b in bundles(pixels_out).values()
        for s in resources(b, "ImagingStudy")[0]["series"]
        for inst in s["instance"]
    }
    fhir_patients = {
        resources(b, "Patient")[0]["identifier"][0]["value"] for b in bundles(pixels_out).values()
    }
    dicom_instances, dicom_patients = set(), set()
    for path in _written(out):
        ds = pydicom.dcmread(path)
        assert ds.PatientIdentityRemoved == "YES"  # (0012,0062)
        methods = {
            (c.CodingSchemeDesignator, c.CodeValue) for c in ds.DeidentificationMethodCodeSequence
        }
        assert {("DCM", "113100"), ("DCM", "113107")} <= methods  # CID 7050
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert not any(elem.tag.is_private for elem in ds)
        dicom_instances.add(str(ds.SOPInstanceUID))
        dicom_patients.add(str(ds.PatientID))
    assert fhir_instances <= dicom_instances
    assert dicom_patients == fhir_patients


def test_pixel_data_is_unchanged(files_out: tuple[Path, Path], pixels_out: Path) -> None:
    out, reid = files_out
    uids = load(reid)["uids"]
    originals = _originals()
    checked = 0
    for path in _written(out):
        ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        source = originals[uids[str(ds.SOPInstanceUID)]]
        assert _pixel_hash(path) == _pixel_hash(source), source.name
        checked += 1
    assert checked >= 12
    import base64

    binaries = 0
    for bundle in bundles(pixels_out).values():
        for binary in resources(bundle, "Binary"):
            if binary["contentType"] != "application/dicom":
                continue
            data = base64.b64decode(binary["data"])
            ds = pydicom.dcmread(__import__("io").BytesIO(data))
            if "PixelData" in ds:
                source = originals[uids[str(ds.SOPInstanceUID)]]
                assert _pixel_hash(data) == _pixel_hash(source)
                binaries += 1
    assert binaries >= 8


def test_files_read_strictly_with_pydicom(files_out: tuple[Path, Path]) -> None:
    out, reid = files_out
    uids = load(reid)["uids"]
    originals = _originals()
    mode = config.settings.reading_validation_mode
    checked = 0
    try:
        config.settings.reading_validation_mode = config.RAISE
        for path in _written(out):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
            source = originals[uids[str(ds.SOPInstanceUID)]]
            try:
                original = pydicom.dcmread(source)
                [e.value for e in original.iterall()]
            except Exception:
                continue  # an input that is not valid itself (sample_data's odd files)
            strict = pydicom.dcmread(path)
            [e.value for e in strict.iterall()]  # every value converted under RAISE
            checked += 1
    finally:
        config.settings.reading_validation_mode = mode
    assert checked >= 12


# --- the key and the re-identification map ------------------------------------------------------


@pytest.mark.parametrize("command", ["convert", "deidentify"])
def test_no_key_is_a_usage_error(command: str, tmp_path: Path) -> None:
    args = [command, str(SAMPLE), "--out", str(tmp_path / "out")]
    result = _run([*args, "--deidentify"] if command == "convert" else args, key=None)
    assert result.exit_code == 2, result.output
    assert "FHIRIMG_DEID_KEY" in result.output
    assert not (tmp_path / "out").exists()


def test_key_file_works_and_is_never_shown(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    out = tmp_path / "out"
    args = ["deidentify", str(SAMPLE / "study_b_mr"), "--out", str(out), "--deid-key-file"]
    result = _run([*args, str(key_file), "-vv"], key=None)
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()


def test_reid_map_is_private_and_never_in_the_output(
    files_out: tuple[Path, Path], tmp_path: Path
) -> None:
    out, reid = files_out
    assert stat.S_IMODE(os.stat(reid).st_mode) == 0o600
    patients = load(reid)["patients"]
    assert {p["patientId"] for p in patients.values()} >= {"FHIRIMG-0003"}
    for path in _written(out):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    inside = ["deidentify", str(SAMPLE), "--out", str(tmp_path), "--reid-map"]
    result = _run([*inside, str(tmp_path / "sub" / "map.json")])
    assert result.exit_code == 2, result.output
    assert "must not be inside the output folder" in result.output


def test_convert_reid_map_agrees_with_deidentify(
    files_out: tuple[Path, Path], tmp_path: Path
) -> None:
    """Both commands give the same pseudonyms and UIDs; the map merges runs, stays 0600."""
    _, reid = files_out
    mapped = tmp_path / "convert-reid.json"
    _convert(tmp_path / "out", KEY, "--reid-map", str(mapped))
    assert stat.S_IMODE(os.stat(mapped).st_mode) == 0o600
    ours, theirs = load(mapped), load(reid)
    assert ours["patients"].keys() == theirs["patients"].keys()
    shared = ours["uids"].keys() & theirs["uids"].keys()
    assert len(shared) > 20
    assert all(ours["uids"][u] == theirs["uids"][u] for u in shared)
    inside = _run(
        ["convert", str(SAMPLE), "--out", str(tmp_path / "o2"), "--deidentify", "--reid-map"]
        + [str(tmp_path / "o2" / "map.json")]
    )
    assert inside.exit_code == 2, inside.output


def test_options_follow_the_profile() -> None:
    """The options change what the table says, as the profile's option columns do."""
    base = DeidOptions(key=KEY.encode())
    assert action(0x00080020, base) == "C"  # Study Date shifted
    assert action(0x00080080, base) == "Z"  # Institution Name
    assert action(0x00101030, base) == "X"  # Patient's Weight: only sex and age by default
    wide = DeidOptions(
        key=KEY.encode(),
        retain_modified_dates=False,
        retain_patient_characteristics=True,
        retain_institution_identity=True,
        clean_descriptors=True,
        keep_private=(0x00091001,),
    )
    assert action(0x00080020, wide) == "Z"
    assert action(0x00080080, wide) == "K"
    assert action(0x00101030, wide) == "K"
    assert action(0x00081030, wide) == "C"
    assert action(0x00091001, wide) == "K"
    assert action(0x00090010, wide) == "K"  # its Private Creator
    assert action(0x00091002, wide) == "X"
    assert action(0x00090011, wide) == "X"


# --- Orthanc ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _stow(orthanc: OrthancServer, files: list[Path]) -> dict[str, Any]:
    """STOW-RS of ``files`` in one request (PS3.18 10.5); the server's answer."""
    boundary = "fhirimg-deid-test"
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + p.read_bytes()
            + b"\r\n"
            for p in files
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    with orthanc.client() as client:
        answer = client.post("/dicom-web/studies", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    doc: dict[str, Any] = answer.json()
    assert not doc.get("00081198", {}).get("Value"), doc["00081198"]  # Failed SOP Sequence
    assert len(doc["00081199"]["Value"]) == len(files)  # Referenced SOP Sequence
    return doc


@pytest.mark.dicomweb
def test_orthanc_accepts_the_files_over_stow_rs(
    orthanc: OrthancServer, files_out: tuple[Path, Path]
) -> None:
    out, _ = files_out
    files = list(_written(out))
    _stow(orthanc, files)
    with orthanc.client() as client:
        ds = pydicom.dcmread(files[0])
        hits = client.post("/tools/lookup", content=str(ds.SOPInstanceUID)).json()
        instance = next(h["ID"] for h in hits if h["Type"] == "Instance")
        tags = client.get(f"/instances/{instance}/simplified-tags").json()
    assert tags["PatientID"] == str(ds.PatientID)
    assert tags["PatientIdentityRemoved"] == "YES"


@pytest.mark.dicomweb
def test_convert_from_dicomweb_deidentifies_and_fetches_by_the_original_uids(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Records from QIDO/WADO metadata are de-identified; the instances for the Binaries are
    fetched by their original UIDs and de-identified too: the same bundle as from the files."""
    sources = sorted((SAMPLE / "study_b_mr").glob("mr_000*.dcm"))
    _stow(orthanc, sources)
    original = pydicom.dcmread(sources[0])
    out, from_files = tmp_path / "dw", tmp_path / "files"
    args = ["--deidentify", "--binary", "inline", "--quiet", "-j", "1"]
    result = _run(
        [
            "convert",
            "--from-dicomweb",
            orthanc.dicomweb_url,
            "--study",
            str(original.StudyInstanceUID),
        ]
        + ["--out", str(out), *args]
    )
    assert result.exit_code == 0, result.output
    result = _run(["convert", *map(str, sources), "--out", str(from_files), *args])
    assert result.exit_code == 0, result.output
    (bundle,) = bundles(out).values()
    (expected,) = bundles(from_files).values()
    binaries = resources(bundle, "Binary")
    assert len(binaries) == len(sources)
    assert [b["data"] for b in binaries] == [b["data"] for b in resources(expected, "Binary")]
    assert str(original.StudyInstanceUID) not in str(bundle)
    assert str(original.PatientID) not in str(bundle)
