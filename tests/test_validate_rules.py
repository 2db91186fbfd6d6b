"""Validation parity (issue 21): every rule of the table, broken alone, in every release it lists.

Each case starts from a valid bundle that ``convert`` wrote for that release (sample DICOM, inline
Binaries, rendered images, an Endpoint), applies the one mutation of the rule (the mutations find
what to change through the table's paths of the release, as the layers do) and asserts that the
bundle and imaging layers report that rule and no other, and that the whole validator refuses it.
A rule without a mutation fails the test, and so does a rule that fires for a release it does not
list (:class:`fhirimg.validate.rules.RuleCollector` raises).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import ConvertOptions, MapOptions, convert
from fhirimg.cli import app
from fhirimg.images.binary import EXTENSION_URL, BinaryMode
from fhirimg.images.rendered import MediaOptions
from fhirimg.validate import ALL_LAYERS, Layer, Severity, has_errors, validate_resource
from fhirimg.validate.rules import (
    RELEASES,
    RULES,
    RuleCollector,
    RuleNotForRelease,
    markdown_table,
    read,
    rendered_type,
    rule,
)
from tests.helpers import REPO

Bundle = dict[str, Any]
RULE_LAYERS = frozenset({Layer.BUNDLE, Layer.IMAGING})
# The study of sample_data/dicom with six series, six Binaries and four rendered images.
STUDY_FILE = "study-045f2aed-5b45-59f5-b139-b1258f97dbfd.json"
CASES = [(r.id, release) for r in RULES for release in r.releases]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Bundle]:
    """The converted bundle of STUDY_FILE in each release."""
    out: dict[str, Bundle] = {}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        for release in RELEASES:
            folder = tmp_path_factory.mktemp(release)
            convert(
                ["sample_data/dicom"],
                ConvertOptions(
                    out_dir=folder,
                    jobs=1,
                    fhir_version=release,
                    binary=BinaryMode.INLINE,
                    media=MediaOptions(),
                    mapping=MapOptions(dicomweb_url="http://pacs.example.org/dicom-web"),
                ),
            )
            out[release] = json.loads((folder / STUDY_FILE).read_text(encoding="utf-8"))
    finally:
        os.chdir(cwd)
    return out


# -- helpers the mutations share ------------------------------------------------------------


def _entries(b: Bundle, rtype: str) -> list[dict[str, Any]]:
    return [e for e in b["entry"] if e["resource"]["resourceType"] == rtype]


def _study(b: Bundle) -> dict[str, Any]:
    resource: dict[str, Any] = _entries(b, "ImagingStudy")[0]["resource"]
    return resource


def _instances(b: Bundle) -> list[dict[str, Any]]:
    return [i for s in _study(b)["series"] for i in s["instance"]]


def _rendered(b: Bundle, release: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in _entries(b, rendered_type(release))]


def _attachment(b: Bundle, release: str) -> dict[str, Any]:
    """The attachment of the first rendered image, where the table says it sits."""
    res = _rendered(b, release)[0]
    return next(a for _, a in read("img-attachment-size", release, res, "") if isinstance(a, dict))


def _size(release: str, n: int) -> int | str:
    return str(n) if release == "r5" else n  # R5 Attachment.size is integer64: a JSON string


def _study_entry(b: Bundle) -> dict[str, Any]:
    return _entries(b, "ImagingStudy")[0]


def _patient_url(b: Bundle) -> str:
    url: str = _entries(b, "Patient")[0]["fullUrl"]
    return url


# -- one mutation per rule id ---------------------------------------------------------------


def _dup_full_url(b: Bundle, release: str) -> None:
    b["entry"].append(copy.deepcopy(b["entry"][-1]))


def _bad_full_url(b: Bundle, release: str) -> None:
    b["entry"][-1]["fullUrl"] = "urn:uuid:not-a-uuid"


def _no_full_url(b: Bundle, release: str) -> None:
    del b["entry"][-1]["fullUrl"]


def _no_method(b: Bundle, release: str) -> None:
    del b["entry"][-1]["request"]["method"]


def _no_resource(b: Bundle, release: str) -> None:
    del b["entry"][-1]["resource"]


def _post_with_id(b: Bundle, release: str) -> None:
    post = next(e for e in b["entry"] if e["request"]["method"] == "POST")
    post["request"]["url"] += "/x1"


def _absolute_url(b: Bundle, release: str) -> None:
    entry = _entries(b, "Binary")[0]
    entry["request"]["url"] = "http://fhir.example.org/" + entry["request"]["url"]


def _url_type(b: Bundle, release: str) -> None:
    entry = _entries(b, "Binary")[0]
    entry["request"]["url"] = "Basic/" + entry["resource"]["id"]


def _put_id(b: Bundle, release: str) -> None:
    _entries(b, "Binary")[0]["resource"]["id"] = "another-id"


def _bad_query(b: Bundle, release: str) -> None:
    _study_entry(b)["request"]["url"] = "ImagingStudy?identifier"


def _none_exist_on_put(b: Bundle, release: str) -> None:
    request = _study_entry(b)["request"]
    request["ifNoneExist"] = request["url"].split("?", 1)[1]


def _other_identifier(b: Bundle, release: str) -> None:
    _study_entry(b)["request"]["url"] = "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3.4"


def _dangling_uuid(b: Bundle, release: str) -> None:
    _study(b)["referrer"] = {"reference": "urn:uuid:0b5e1d6c-0000-4000-8000-000000000000"}


def _dangling_contained(b: Bundle, release: str) -> None:
    _study(b)["referrer"] = {"reference": "#nothing"}


def _bad_relative(b: Bundle, release: str) -> None:
    _study(b)["referrer"] = {"reference": "Practitioner/not an id"}


def _wrong_target(b: Bundle, release: str) -> None:
    _study(b)["referrer"] = {"reference": _patient_url(b)}  # referrer: Practitioner(Role) only


def _bare_study_uid(b: Bundle, release: str) -> None:
    ident = next(i for i in _study(b)["identifier"] if i.get("system") == "urn:dicom:uid")
    ident["value"] = ident["value"].removeprefix("urn:oid:")
    _study_entry(b)["request"]["url"] = f"ImagingStudy?identifier=urn:dicom:uid|{ident['value']}"


def _leading_zero(b: Bundle, release: str) -> None:
    _study(b)["series"][0]["uid"] = "1.02.3"


def _same_series_uid(b: Bundle, release: str) -> None:
    series = _study(b)["series"]
    series[1]["uid"] = series[0]["uid"]


def _same_instance_uid(b: Bundle, release: str) -> None:
    study = _study(b)
    series = study["series"][0]
    series["instance"].append(copy.deepcopy(series["instance"][0]))
    series["numberOfInstances"] += 1
    study["numberOfInstances"] += 1


def _too_few_series(b: Bundle, release: str) -> None:
    study = _study(b)
    study["numberOfSeries"] = len(study["series"]) - 1


def _too_few_instances(b: Bundle, release: str) -> None:
    _study(b)["series"][0]["numberOfInstances"] = 0


def _modality_system(b: Bundle, release: str) -> None:
    # Study and series alike (on the release's paths), so the study list still holds the series'.
    for _, coding in read("img-modality-coding", release, _study(b), ""):
        coding["system"] = "http://example.org/modality"


def _modality_not_listed(b: Bundle, release: str) -> None:
    rule_id = "img-series-modality-in-study"
    _, coding = next(read(rule_id, release, _study(b), "", under="series.modality"))
    coding["code"] = "XA"


def _sop_class_system(b: Bundle, release: str) -> None:
    _instances(b)[0]["sopClass"]["system"] = "urn:oid"


def _link_missing(b: Bundle, release: str) -> None:
    _instances(b)[0]["extension"][0]["valueReference"] = {"reference": "Binary/not-here"}


def _links_swapped(b: Bundle, release: str) -> None:
    first, second = _instances(b)[:2]
    first["extension"], second["extension"] = second["extension"], first["extension"]


def _not_a_mime_type(b: Bundle, release: str) -> None:
    _attachment(b, release)["contentType"] = "png"


def _attachment_to_binary(b: Bundle, release: str) -> None:
    # The rendered image points at a DICOM Binary (size and hash right) but says image/png.
    binary = _entries(b, "Binary")[0]
    raw = base64.b64decode(binary["resource"]["data"])
    att = _attachment(b, release)
    del att["data"]
    att["url"] = binary["fullUrl"]
    att["size"] = _size(release, len(raw))
    att["hash"] = base64.b64encode(hashlib.sha1(raw).digest()).decode()


def _wrong_size(b: Bundle, release: str) -> None:
    att = _attachment(b, release)
    att["size"] = _size(release, int(att["size"]) + 1)


def _wrong_hash(b: Bundle, release: str) -> None:
    _attachment(b, release)["hash"] = base64.b64encode(hashlib.sha1(b"other").digest()).decode()


def _no_preamble(b: Bundle, release: str) -> None:
    _entries(b, "Binary")[0]["resource"]["data"] = base64.b64encode(bytes(200)).decode()


def _not_an_image(b: Bundle, release: str) -> None:
    _attachment(b, release)["contentType"] = "application/pdf"


def _study_ref_to_patient(b: Bundle, release: str) -> None:
    res = _rendered(b, release)[0]
    for _, ref in read("img-rendered-study", release, res, ""):
        ref["reference"] = _patient_url(b)


def _rendered_other_instance(b: Bundle, release: str) -> None:
    res = _rendered(b, release)[0]
    ident = next(i for i in res["identifier"] if i["system"] == "urn:dicom:uid")
    ident["value"] = "urn:oid:1.2.3.4"


def _subject_outside(b: Bundle, release: str) -> None:
    for res in [_study(b), *_rendered(b, release)]:
        res["subject"] = {"reference": "Patient/not-in-bundle"}


def _endpoint_outside(b: Bundle, release: str) -> None:
    _study(b)["endpoint"] = [{"reference": "Endpoint/not-in-bundle"}]


def _facility_with_encounter(b: Bundle, release: str) -> None:
    res = _rendered(b, release)[0]
    res["context"] = [{"reference": "Encounter/e1"}]
    res["facilityType"] = {"text": "Radiology department"}


def _setting_with_encounter(b: Bundle, release: str) -> None:
    res = _rendered(b, release)[0]
    res["context"] = [{"reference": "Encounter/e1"}]
    res["practiceSetting"] = {"text": "Radiology"}


def _no_height(b: Bundle, release: str) -> None:
    del _attachment(b, release)["height"]


def _add_measurement(b: Bundle, rtype: str = "Observation") -> dict[str, Any]:
    """A valid SR measurement (issue 20) appended to the bundle; the mutations below break it."""
    n = sum(1 for e in b["entry"] if e["resource"]["resourceType"] == rtype)
    ident = {
        "system": "urn:ietf:rfc:3986",
        "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{rtype}{n}')}",
    }
    study = _study_entry(b)
    res: dict[str, Any] = {"resourceType": rtype, "identifier": [ident]}
    if rtype == "Observation":
        res |= {
            "partOf": [{"reference": study["fullUrl"]}],
            "status": "final",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "103339001"}]},
            "subject": {"reference": _patient_url(b)},
            "valueQuantity": {"value": 1.5, "system": "http://unitsofmeasure.org", "code": "mm"},
        }
    else:
        uid = study["resource"]["identifier"][0]["value"].removeprefix("urn:oid:")
        series = study["resource"]["series"][0]
        res |= {
            "status": "available",
            "subject": {"reference": _patient_url(b)},
            "studyUid": uid,
            "seriesUid": series["uid"],
            "code": {
                "coding": [
                    {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "111030"}
                ]
            },
            "instance": [{"uid": series["instance"][0]["uid"]}],
        }
    b["entry"].append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'entry-{rtype}{n}')}",
            "resource": res,
            "request": {
                "method": "POST",
                "url": rtype,
                "ifNoneExist": f"identifier={ident['system']}|{ident['value']}",
            },
        }
    )
    return res


def _observation_without_value(b: Bundle, release: str) -> None:
    del _add_measurement(b)["valueQuantity"]


def _unit_not_ucum(b: Bundle, release: str) -> None:
    _add_measurement(b)["valueQuantity"]["system"] = "urn:dicom:scheme:99UNITS"


def _part_of_elsewhere(b: Bundle, release: str) -> None:
    _add_measurement(b)["partOf"] = [{"reference": "ImagingStudy/not-in-the-bundle"}]


def _selection_other_instance(b: Bundle, release: str) -> None:
    _add_measurement(b, "ImagingSelection")["instance"][0]["uid"] = "1.2.3.4.5.6"


MUTATIONS: dict[str, Callable[[Bundle, str], None]] = {
    "bdl-fullurl-unique": _dup_full_url,
    "bdl-fullurl-form": _bad_full_url,
    "bdl-fullurl-missing": _no_full_url,
    "bdl-request": _no_method,
    "bdl-request-resource": _no_resource,
    "bdl-request-url": _post_with_id,
    "bdl-request-url-relative": _absolute_url,
    "bdl-request-url-type": _url_type,
    "bdl-put-id": _put_id,
    "bdl-conditional-query": _bad_query,
    "bdl-ifnoneexist-post": _none_exist_on_put,
    "bdl-conditional-identifier": _other_identifier,
    "bdl-ref-resolves": _dangling_uuid,
    "bdl-ref-contained": _dangling_contained,
    "bdl-ref-form": _bad_relative,
    "bdl-ref-target-type": _wrong_target,
    "img-study-uid-identifier": _bare_study_uid,
    "img-uid-syntax": _leading_zero,
    "img-series-uid-unique": _same_series_uid,
    "img-instance-uid-unique": _same_instance_uid,
    "img-number-of-series": _too_few_series,
    "img-number-of-instances": _too_few_instances,
    "img-modality-coding": _modality_system,
    "img-series-modality-in-study": _modality_not_listed,
    "img-sop-class": _sop_class_system,
    "img-binary-link": _link_missing,
    "img-binary-sop-instance": _links_swapped,
    "img-attachment-content-type": _not_a_mime_type,
    "img-attachment-binary-type": _attachment_to_binary,
    "img-attachment-size": _wrong_size,
    "img-attachment-hash": _wrong_hash,
    "img-dicom-preamble": _no_preamble,
    "img-rendered-content-type": _not_an_image,
    "img-rendered-study": _study_ref_to_patient,
    "img-rendered-instance": _rendered_other_instance,
    "img-subject-ref": _subject_outside,
    "img-endpoint-ref": _endpoint_outside,
    "r5-docref-1": _facility_with_encounter,
    "r5-docref-2": _setting_with_encounter,
    "r5-rendered-docref": _no_height,
    "obs-code-value": _observation_without_value,
    "obs-ucum": _unit_not_ucum,
    "obs-refs-resolve": _part_of_elsewhere,
    "r5-selection-instances": _selection_other_instance,
}


def _broken(valid: dict[str, Bundle], rule_id: str, release: str) -> Bundle:
    bundle = copy.deepcopy(valid[release])
    MUTATIONS[rule_id](bundle, release)
    return bundle


def _bad(findings: list[Any]) -> list[Any]:
    return [f for f in findings if f.severity in (Severity.ERROR, Severity.WARNING)]


# -- the table itself -----------------------------------------------------------------------


def test_every_rule_has_a_mutation() -> None:
    assert sorted(MUTATIONS) == sorted(r.id for r in RULES)


def test_each_release_a_rule_skips_says_why() -> None:
    for r in RULES:
        assert r.releases, r.id
        for release in RELEASES:
            if release in r.paths:
                assert r.paths[release], f"{r.id} reads no element in {release}"
                assert release not in r.not_in, r.id
            else:
                assert len(r.not_in.get(release, "")) > 20, f"{r.id}: why not {release}?"
        assert r.checks, r.id
        assert r.source, r.id


def test_a_rule_reported_for_a_release_it_does_not_list_is_a_bug() -> None:
    out = RuleCollector("x.json", Layer.IMAGING, "r4")
    with pytest.raises(RuleNotForRelease):
        out.fail("r5-docref-1", "DocumentReference.facilityType", "not in R4")
    out.fail("img-uid-syntax", "ImagingStudy.series[0].uid", "bad")
    assert [f.rule for f in out.findings] == ["img-uid-syntax"]


# -- parity: each rule broken alone, in each release it lists ------------------------------


@pytest.mark.parametrize("release", RELEASES)
def test_the_valid_bundle_passes(valid: dict[str, Bundle], release: str) -> None:
    bundle = valid[release]
    assert len(_entries(bundle, rendered_type(release))) == 4
    assert len(_entries(bundle, "Binary")) == 6
    assert all(i["extension"][0]["url"] == EXTENSION_URL for i in _instances(bundle))
    assert _bad(validate_resource(bundle, fhir_version=release, layers=ALL_LAYERS)) == []


@pytest.mark.parametrize(("rule_id", "release"), CASES)
def test_rule_broken_alone_is_refused(valid: dict[str, Bundle], rule_id: str, release: str) -> None:
    bundle = _broken(valid, rule_id, release)
    found = _bad(validate_resource(bundle, fhir_version=release, layers=RULE_LAYERS))
    assert found, f"{rule_id} not found in {release}"
    assert {f.rule for f in found} == {rule_id}, [(f.rule, f.location, f.message) for f in found]
    assert {f.severity for f in found} == {rule(rule_id).severity}
    assert {f.layer for f in found} == {rule(rule_id).layer.value}
    # The whole validator refuses it too (warnings with --strict).
    everything = validate_resource(bundle, fhir_version=release, layers=ALL_LAYERS)
    assert has_errors(everything, strict=True)


@pytest.mark.parametrize(
    ("rule_id", "release"),
    [
        ("bdl-conditional-identifier", "r4"),
        ("bdl-conditional-identifier", "r5"),
        ("img-binary-sop-instance", "r5"),
        ("img-series-modality-in-study", "r5"),
        ("img-rendered-study", "r4"),
        ("r5-docref-1", "r5"),
    ],
)
def test_cli_json_names_the_rule(
    valid: dict[str, Bundle], tmp_path: Path, rule_id: str, release: str
) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(_broken(valid, rule_id, release)), encoding="utf-8")
    result = CliRunner().invoke(
        app, ["validate", "--json", "-j", "1", "--fhir-version", release, str(path)]
    )
    assert result.exit_code == 1, result.output
    [file] = json.loads(result.stdout)["files"]
    assert file["fhirVersion"] == release
    errors = [f for f in file["findings"] if f["severity"] == "error" and "rule" in f]
    assert errors, file
    assert {f["rule"] for f in errors} == {rule_id}
    assert all(
        set(f) == {"severity", "file", "location", "message", "layer", "rule"} for f in errors
    )


def test_cli_json_of_the_valid_bundle_has_no_errors(
    valid: dict[str, Bundle], tmp_path: Path
) -> None:
    path = tmp_path / "study.json"
    path.write_text(json.dumps(valid["r5"]), encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", "--json", "-j", "1", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"][0]["fhirVersion"] == "r5"


def test_a_linked_binary_beside_the_bundle_is_read_for_its_uid(
    valid: dict[str, Bundle], tmp_path: Path
) -> None:
    bundle = copy.deepcopy(valid["r4"])
    first, second = _instances(bundle)[:2]
    binaries = {e["fullUrl"]: e for e in _entries(bundle, "Binary")}
    folder = tmp_path / "study.binaries"
    folder.mkdir()
    for inst in (first, second):
        link = inst["extension"][0]["valueReference"]
        entry = binaries[link["reference"]]
        bundle["entry"].remove(entry)
        bid = entry["resource"]["id"]
        (folder / f"{bid}.dcm").write_bytes(base64.b64decode(entry["resource"]["data"]))
        link["reference"] = f"Binary/{bid}"
    path = tmp_path / "study.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    found = validate_resource(
        bundle, fhir_version="r4", layers=RULE_LAYERS, source=str(path), beside=tmp_path
    )
    assert _bad(found) == []
    first["extension"], second["extension"] = second["extension"], first["extension"]
    found = validate_resource(
        bundle, fhir_version="r4", layers=RULE_LAYERS, source=str(path), beside=tmp_path
    )
    # Each instance names the other's SOP Instance (and SOP Class: the two series differ).
    assert {(f.rule, f.location.rsplit(".", 3)[0]) for f in _bad(found)} == {
        ("img-binary-sop-instance", "Bundle.entry[2].resource.series[0].instance[0]"),
        ("img-binary-sop-instance", "Bundle.entry[2].resource.series[1].instance[0]"),
    }
    assert any("holds SOP Instance" in f.message for f in found)


@pytest.mark.parametrize("release", RELEASES)
def test_a_bundle_without_the_patient_may_name_it_on_the_server(
    valid: dict[str, Bundle], release: str
) -> None:
    """A later part of a split study holds no Patient: ``Patient/<id>`` names the one the first
    part created, so img-subject-ref holds; with the Patient in the bundle it does not."""
    bundle = _broken(valid, "img-subject-ref", release)
    found = validate_resource(bundle, fhir_version=release, layers=RULE_LAYERS)
    assert {f.rule for f in _bad(found)} == {"img-subject-ref"}
    bundle["entry"].remove(_entries(bundle, "Patient")[0])
    for binary in _entries(bundle, "Binary"):
        del binary["resource"]["securityContext"]
    found = validate_resource(bundle, fhir_version=release, layers=RULE_LAYERS)
    assert _bad(found) == []


# -- the docs list the table ----------------------------------------------------------------


def test_docs_list_the_rule_table() -> None:
    text = (REPO / "docs" / "validate.md").read_text(encoding="utf-8")
    assert markdown_table() in text, (
        "docs/validate.md does not hold the current rule table: paste the output of "
        "`python -c 'from fhirimg.validate.rules import markdown_table; print(markdown_table())'`"
    )
    for r in RULES:
        assert text.count(f"| `{r.id}` |") == 1, r.id
