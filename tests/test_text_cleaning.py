"""DICOM text made fit for FHIR on its way in (issue 11, item 11).

One NBSP (Latin-1 0xA0), a C0 control or U+0085 in any text value used to fail the whole study at
the schema layer. :func:`fhirimg.values.fhir_text` cleans one value, :func:`fhirimg.mapping.
clean_text` a record (the one place ``convert`` does it); each cleaning is a warning on its file in
report.json, naming the attribute, never the value.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.bundle import study_bundle
from fhirimg.cli import app
from fhirimg.fhir import release
from fhirimg.mapping import MapOptions, clean_text
from fhirimg.model import Code, InstanceRecord, Issuer
from fhirimg.validate import resource_errors
from fhirimg.validate.schema_layer import schema_for
from fhirimg.values import TextKind, fhir_text
from tests.helpers import bundles, load, pydicom_file, resources

runner = CliRunner()

SPECIAL = (
    [chr(c) for c in range(0xA0)]  # C0, ASCII, DEL, C1 (U+0085 NEL among them)
    + ["\u00a0", "\u1680", "\u2000", "\u200a", "\u202f", "\u205f", "\u3000", "\ufeff"]
    + ["\u2028", "\u2029", "\ufffd", "\U0001f600"]
    + ["\ud800", "\udbff", "\udc00", "\udfff"]  # lone surrogates (a bad decode, JSON "\ud800")
)
# Any text: the characters above often, and every other code point (surrogates included).
TEXT = st.text(
    st.one_of(st.sampled_from(SPECIAL), st.characters(exclude_categories=())), max_size=12
)


def _patterns(kind: TextKind) -> list[re.Pattern[str]]:
    """The R4 and R5 JSON Schema patterns of the FHIR type ``kind`` stands for."""
    return [schema_for(r).patterns[kind.value] for r in ("r4", "r5")]


@pytest.mark.parametrize("kind", list(TextKind))
def test_every_code_point_comes_out_valid(kind: TextKind) -> None:
    """Exhaustive over the BMP (surrogates too) and a few astral code points: the value cleaned
    matches the type's pattern in R4 and R5, and is changed only when it had to be."""
    patterns = _patterns(kind)
    for code in [*range(0x10000), 0x1F600, 0xE0001, 0x10FFFF]:
        raw = f"a{chr(code)}b"
        value, changes = fhir_text(raw, kind)
        assert value is not None, hex(code)
        for pattern in patterns:
            assert pattern.search(value), (hex(code), kind, value)
        if value != raw:
            assert changes, (hex(code), kind)
        char = chr(code)
        if not char.isspace() and unicodedata.category(char) not in ("Cc", "Cs"):
            assert (value, changes) == (raw, ()), (hex(code), kind)  # left alone


@pytest.mark.parametrize(
    ("raw", "kind", "value", "change"),
    [
        ("M\u00fcller\u00a0Anna", TextKind.STRING, "M\u00fcller Anna", "no-break"),
        ("A\x01B\x7fC\x85D\x9b", TextKind.STRING, "ABCD", "control character removed"),
        ("one\u2028two", TextKind.STRING, "one\ntwo", "line or paragraph separator"),
        ("x\ud83dy", TextKind.STRING, "x\ufffdy", "lone surrogate"),
        ("tab\tand\r\nlines", TextKind.STRING, "tab\tand\r\nlines", None),
        ("  padded  ", TextKind.STRING, "padded", None),
        (" C\tT\u00a0 X ", TextKind.CODE, "C T X", "made one space"),
        ("http://issuer.example/a b", TextKind.URI, "http://issuer.example/a%20b", "percent"),
        ("\x00\u00a0\x85", TextKind.STRING, None, "nothing left"),
    ],
)
def test_fhir_text(raw: str, kind: TextKind, value: str | None, change: str | None) -> None:
    got, changes = fhir_text(raw, kind)
    assert got == value
    if change is None:
        assert changes == ()
    else:
        assert any(change in c for c in changes), changes
        assert not any(raw.strip() and raw.strip() in c for c in changes)  # never the value


def _record(text: Any) -> InstanceRecord:
    """A record with ``text`` (drawn per attribute) in every text attribute that reaches FHIR."""
    t = text
    return InstanceRecord(
        path="x.dcm",
        size=1,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid="1.2.3.4.1",
        study_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.4.2",
        instance_number="1",
        image_type=(t(), t()),
        content_label=t(),
        concept_name=t(),
        document_title=t(),
        patient_id=t(),
        issuer_of_patient_id=t(),
        patient_id_issuer=Issuer(t(), t(), "URI"),
        patient_name=f"{t()}^{t()}^{t()}^{t()}^{t()}={t()}^{t()}",
        patient_sex=t(),
        accession_number=t(),
        accession_issuer=Issuer(t(), t(), "URI"),
        study_id=t(),
        study_description=t(),
        referring_physician=t(),
        reading_physicians=(t(),),
        procedure_codes=(Code(t(), "SCT", t()), Code(t(), t(), t())),
        reason_for_procedure=t(),
        reason_codes=(Code(t(), "DCM", t()),),
        department=t(),
        modalities_in_study=(t(), "CT"),
        series_number="1",
        modality=t(),
        series_description=t(),
        body_part_examined=t(),
        laterality=t(),
        performing_physicians=(t(),),
        operators=(t(),),
        manufacturer=t(),
        model_name=t(),
        station_name=t(),
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), version=st.sampled_from(["r4", "r5"]))
def test_any_text_mapped_into_a_bundle_validates(data: st.DataObject, version: str) -> None:
    """Whatever text a DICOM file holds, the bundle of its cleaned record passes the schema
    layer (and every other fast layer), and serialises as UTF-8."""
    record = _record(lambda: data.draw(TEXT))
    cleaned, _ = clean_text(record)
    bundle, _ = study_bundle(
        [cleaned], MapOptions(dicomweb_url="http://pacs/wado"), release(version)
    )
    assert resource_errors(bundle, version) == []
    assert jsonio.loads(jsonio.dumps(bundle)) == bundle


def test_clean_text_warns_by_attribute_never_the_value() -> None:
    record = _record(iter(["Ann\u00a0Lee"] + ["ok"] * 80).__next__)
    cleaned, warnings = clean_text(record)
    assert warnings == (
        "text cleaned in ImageType (0008,0008): no-break or other Unicode space made a plain space",
    )
    assert cleaned.image_type == ("Ann Lee", "ok")
    untouched = _record(lambda: "ok")
    assert clean_text(untouched) == (untouched, ())


def test_clean_text_in_sequences_and_emptied_values() -> None:
    record = InstanceRecord(
        "x.dcm",
        1,
        "1.2",
        "1.2.1",
        "1.2.2",
        "1.2.3",
        procedure_codes=(Code("\x85", "SCT", "knee\u00a0MRI"),),
        accession_issuer=Issuer("\x00", None, None),
        modality="\u00a0",
    )
    cleaned, warnings = clean_text(record)
    assert cleaned.procedure_codes == (Code(None, "SCT", "knee MRI"),)
    assert cleaned.accession_issuer is None
    assert cleaned.modality is None
    assert warnings == (
        "text cleaned in Modality (0008,0060): no-break or other Unicode space made a plain "
        "space; nothing left: left out",
        "text cleaned in CodeValue (0008,0100) in ProcedureCodeSequence (0008,1032): control "
        "character removed; nothing left: left out",
        "text cleaned in CodeMeaning (0008,0104) in ProcedureCodeSequence (0008,1032): no-break "
        "or other Unicode space made a plain space",
        "text cleaned in LocalNamespaceEntityID (0040,0031) in "
        "IssuerOfAccessionNumberSequence (0008,0051): control character removed; nothing left: "
        "left out",
    )


# --- through fhirimg convert, one synthetic file per character class ---

# (character set, attribute, value written, value expected in FHIR, words of the warning)
CLASSES = {
    "nbsp-latin1": ("ISO_IR 100", "StudyDescription", "CT\u00a0Head", "CT Head", "no-break"),
    "c0-control": ("ISO_IR 100", "StudyDescription", "CT\x07Head\x1f", "CTHead", "control"),
    "nel-latin1": ("ISO_IR 100", "StudyDescription", "CT\x85Head", "CTHead", "control"),
    "c1-csi": ("ISO_IR 100", "SeriesDescription", "Axial\x9b", "Axial", "control"),
    "nbsp-in-name": ("ISO_IR 100", "PatientName", "M\u00fcller\u00a0^Anna", None, "no-break"),
    "line-separator-utf8": ("ISO_IR 192", "StudyDescription", "CT\u2028Head", "CT\nHead", "line"),
    "ideographic-space": ("ISO_IR 192", "InstitutionalDepartmentName", "放射線科\u3000", None, ""),
}
_TAGS = {
    "StudyDescription": "(0008,1030)",
    "SeriesDescription": "(0008,103E)",
    "PatientName": "(0010,0010)",
    "InstitutionalDepartmentName": "(0008,1040)",
}


def _dicom(path: Path, charset: str, keyword: str, value: str) -> Path:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["text", keyword, value])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["text", "series", keyword, value])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["text", "instance", keyword, value])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SpecificCharacterSet = charset
    setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("case", sorted(CLASSES))
def test_convert_cleans_each_character_class(tmp_path: Path, case: str) -> None:
    charset, keyword, value, expected, words = CLASSES[case]
    path = _dicom(tmp_path / "in" / "x.dcm", charset, keyword, value)
    assert value.encode("latin-1" if charset == "ISO_IR 100" else "utf-8") in path.read_bytes()
    out = tmp_path / "out"
    result = runner.invoke(app, ["convert", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    report = load(out / "report.json")
    (entry,) = report["files"]
    assert entry["status"] == "converted"
    (warning,) = entry["warnings"]
    assert warning.startswith(f"text cleaned in {keyword} {_TAGS[keyword]}: ")
    assert words in warning
    assert value.strip() not in warning
    assert report["studies"][0]["fileWarnings"] == [{"path": str(path), "warning": warning}]

    (bundle,) = bundles(out).values()
    (study,) = resources(bundle, "ImagingStudy")
    if keyword == "StudyDescription":
        assert study["description"] == expected
    if keyword == "SeriesDescription":
        assert study["series"][0]["description"] == expected
    if keyword == "PatientName":
        (patient,) = resources(bundle, "Patient")
        assert patient["name"][0]["family"] == "M\u00fcller"
    checked = runner.invoke(app, ["validate", "--strict", str(out)])
    assert checked.exit_code == 0, checked.output
    # An incremental re-run rewrites nothing and still reports the warning (from the catalog).
    again = runner.invoke(app, ["convert", str(path), "-o", str(out), "-q"])
    assert again.exit_code == 0, again.output
    rerun = load(out / "report.json")
    assert rerun["summary"]["run"]["studies"]["unchanged"] == 1
    assert rerun["files"] == report["files"]


def test_cleaning_is_shown_with_verbose(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "in" / "x.dcm", "ISO_IR 100", "StudyDescription", "CT\u00a0Head")
    cmd = [sys.executable, "-m", "fhirimg", "convert", str(path), "-o"]
    quiet, loud = (
        subprocess.run(
            [*cmd, str(tmp_path / name), *verbose],
            capture_output=True,
            text=True,
            env=os.environ,
            check=False,
        )
        for name, verbose in (("quiet", []), ("loud", ["-v"]))
    )
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    line = f"{path}: text cleaned in StudyDescription (0008,1030)"
    assert line not in quiet.stderr
    assert line in loud.stderr
    assert "CT\u00a0Head" not in loud.stderr


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_one_pass_check_agrees_with_cleaning_value_by_value(data: st.DataObject) -> None:
    """``clean_text`` gives a record back as it is when one pass over its values finds nothing
    to clean (``mapping._nothing_to_clean``): exactly when cleaning value by value changes
    nothing and says nothing. Mostly plain text, so that both answers occur."""
    plain = st.text(st.sampled_from("AZaz09^=-.|Ä"), min_size=1, max_size=6)
    near = st.sampled_from(["A B", "A  B", " A", "A\tB", "A\u00a0B", "", "A\x00", "A\nB"])
    odd = st.one_of(near, st.text(min_size=0, max_size=4))
    # all plain (nothing to clean), or one odd value somewhere among plain ones
    where = data.draw(st.integers(min_value=-1, max_value=60))
    drawn = iter(range(100))
    record = _record(lambda: data.draw(odd if next(drawn) == where else plain))
    from fhirimg import mapping

    quick = mapping._nothing_to_clean(record)
    assert quick or where >= 0  # all plain: nothing to clean
    if quick:
        assert clean_text(record) == (record, ())
    slow = mapping._clean_each(record)  # value by value: what clean_text did before
    assert quick == (slow == (record, ()))
