"""fhirimg.push.merge: an ImagingStudy merged with the server's, never replacing it (issue 10)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirimg import ConvertOptions, MapOptions, convert, jsonio
from fhirimg.errors import InputError
from fhirimg.push.merge import (
    current_from_search,
    merge_bundle,
    merge_imaging_study,
    merged_study_entry,
)
from fhirimg.validate import ALL_LAYERS, Severity, validate_resource
from tests.helpers import SAMPLE, bundles, resources

DCM = "http://dicom.nema.org/resources/ontology/DCM"
BINARY_EXT = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
OTHER_EXT = "https://example.org/fhir/StructureDefinition/other"
STUDY_UID = {"system": "urn:dicom:uid", "value": "urn:oid:1.2.840.99"}
CT_IMAGE = {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}
SERIES_POOL = ["1.2.840.99.1", "1.2.840.99.2", "1.2.840.99.3", "1.2.840.99.4"]
INSTANCE_POOL = [f"1.2.840.99.9.{n}" for n in range(1, 9)]
ENDPOINTS = ["Endpoint/1", "Endpoint/2", "urn:uuid:5f0f9a2c-0000-5000-8000-000000000001"]
DICOMWEB = "http://pacs.example.org/dicom-web"


# --------------------------------------------------------------------------- builders


def modality(code: str, release: str = "r4") -> dict[str, Any]:
    coding = {"system": DCM, "code": code}
    return coding if release == "r4" else {"coding": [coding]}


def _sort_key(element: dict[str, Any]) -> tuple[bool, int, str]:
    number = element.get("number")
    return (number is None, number or 0, element["uid"])


def instance(uid: str, number: int | None = None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "extension" in fields:
        out["extension"] = fields.pop("extension")
    out["uid"] = uid
    out["sopClass"] = CT_IMAGE
    if number is not None:
        out["number"] = number
    out.update(fields)
    return out


def series(
    uid: str, instances: list[dict[str, Any]], number: int | None = None, **fields: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid}
    if number is not None:
        out["number"] = number
    out["modality"] = fields.pop("modality", modality("CT"))
    if "description" in fields:
        out["description"] = fields.pop("description")
    out["numberOfInstances"] = len(instances)
    out.update(fields)
    if instances:  # fhirimg never writes an empty list (FHIR JSON forbids them)
        out["instance"] = sorted(instances, key=_sort_key)
    return out


def study(all_series: list[dict[str, Any]], release: str = "r4", **fields: Any) -> dict[str, Any]:
    """An ImagingStudy as fhirimg writes it: element order, sorted series, counts consistent."""
    ordered = sorted(all_series, key=_sort_key)
    codes = dict.fromkeys(
        s["modality"]["code"] if "code" in s["modality"] else s["modality"]["coding"][0]["code"]
        for s in ordered
    )
    out: dict[str, Any] = {"resourceType": "ImagingStudy"}
    for key in ("id", "meta"):
        if key in fields:
            out[key] = fields.pop(key)
    out["identifier"] = [STUDY_UID, *fields.pop("identifier", [])]
    out["status"] = "available"
    out["modality"] = fields.pop("modality", [modality(c, release) for c in codes])
    out["subject"] = fields.pop("subject", {"reference": "Patient/p1"})
    for key in ("started", "endpoint"):
        if key in fields:
            out[key] = fields.pop(key)
    out["numberOfSeries"] = len(ordered)
    out["numberOfInstances"] = sum(s["numberOfInstances"] for s in ordered)
    out.update(fields)
    out["series"] = ordered
    return out


def uids(resource: dict[str, Any]) -> dict[str, str]:
    """Instance UID -> series UID."""
    return {i["uid"]: s["uid"] for s in resource["series"] for i in s.get("instance", [])}


def instances_by_uid(resource: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["uid"]: i for s in resource["series"] for i in s.get("instance", [])}


def containers(obj: Any) -> set[int]:
    """ids of every dict and list inside ``obj`` (to prove nothing is shared)."""
    found: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.add(id(item))
            stack.extend(item.values())
        elif isinstance(item, list):
            found.add(id(item))
            stack.extend(item)
    return found


# --------------------------------------------------------------------------- hypothesis


@st.composite
def studies(draw: st.DrawFn, release: str = "r4") -> dict[str, Any]:
    """Canonical ImagingStudy resources over small UID pools, so that two of them overlap."""
    placed = draw(
        st.dictionaries(
            st.sampled_from(INSTANCE_POOL), st.sampled_from(SERIES_POOL), min_size=1, max_size=8
        )
    )
    extra_series = draw(st.lists(st.sampled_from(SERIES_POOL), max_size=2, unique=True))
    optional_int = st.none() | st.integers(0, 3)
    all_series = []
    for series_uid in dict.fromkeys([*placed.values(), *extra_series]):
        members = []
        for uid in sorted(u for u, s in placed.items() if s == series_uid):
            fields: dict[str, Any] = {}
            if draw(st.booleans()):
                fields["title"] = draw(st.sampled_from(["A", "B"]))
            if draw(st.booleans()):
                ref = draw(st.sampled_from(["Binary/x", "Binary/y"]))
                fields["extension"] = [{"url": BINARY_EXT, "valueReference": {"reference": ref}}]
            members.append(instance(uid, draw(optional_int), **fields))
        extra: dict[str, Any] = {}
        if draw(st.booleans()):
            extra["description"] = draw(st.sampled_from(["one", "two"]))
        if draw(st.booleans()):
            extra["started"] = draw(st.sampled_from(["2024-03-12", "2024-03-12T10:00:00+01:00"]))
        code = draw(st.sampled_from(["CT", "MR", "OT"]))
        made = series(
            series_uid, members, draw(optional_int), modality=modality(code, release), **extra
        )
        if not members:  # a series listed without its instances, as some tools do
            made["numberOfInstances"] = draw(st.integers(1, 5))
        all_series.append(made)
    fields = {}
    if draw(st.booleans()):
        fields["description"] = draw(st.sampled_from(["study one", "study two"]))
    if draw(st.booleans()):
        fields["started"] = draw(st.sampled_from(["2024-03-12", "2024-03-13T08:00:00Z"]))
    refs = draw(st.lists(st.sampled_from(ENDPOINTS), max_size=3, unique=True))
    if refs:
        fields["endpoint"] = [{"reference": r} for r in refs]
    accessions = draw(st.lists(st.sampled_from(["ACC1", "ACC2"]), max_size=2, unique=True))
    fields["identifier"] = [{"system": "urn:oid:1.2.3", "value": a} for a in accessions]
    return study(all_series, release, **fields)


@given(studies(), studies(), st.booleans())
def test_union_of_uids_and_placement(a: dict[str, Any], b: dict[str, Any], newer: bool) -> None:
    merged = merge_imaging_study(a, b, "r4", newer=newer)
    top, base = (b, a) if newer else (a, b)
    # every instance of either, once, in the series the newer one puts it in
    assert uids(merged) == {**uids(base), **uids(top)}
    # every series of either, but those whose instances all moved to another series
    series_only = {s["uid"] for s in [*a["series"], *b["series"]] if "instance" not in s}
    homes = set(uids(merged).values())
    assert {s["uid"] for s in merged["series"]} == homes | series_only


@given(studies(), studies(), st.booleans())
def test_counts_recomputed_and_consistent(
    a: dict[str, Any], b: dict[str, Any], newer: bool
) -> None:
    merged = merge_imaging_study(a, b, "r4", newer=newer)
    top, base = (b, a) if newer else (a, b)
    assert merged["numberOfSeries"] == len(merged["series"])
    for s in merged["series"]:
        if "instance" in s:
            assert s["numberOfInstances"] == len(s["instance"])
        else:
            claims = [
                x["numberOfInstances"]
                for x in (*top["series"], *base["series"])
                if x["uid"] == s["uid"] and "instance" not in x
            ]
            assert s["numberOfInstances"] == claims[0]  # the newer one's claim
    assert merged["numberOfInstances"] == sum(s["numberOfInstances"] for s in merged["series"])
    assert merged["numberOfInstances"] >= len(uids(merged))


@given(studies(), studies())
def test_sorted_like_the_mapping(a: dict[str, Any], b: dict[str, Any]) -> None:
    merged = merge_imaging_study(a, b, "r4")
    assert merged["series"] == sorted(merged["series"], key=_sort_key)
    for s in merged["series"]:
        assert s.get("instance", []) == sorted(s.get("instance", []), key=_sort_key)


@given(studies())
def test_merging_a_study_with_itself_gives_it_back(a: dict[str, Any]) -> None:
    assert merge_imaging_study(a, a, "r4") == a
    assert merge_imaging_study(a, a, "r4", newer=False) == a


@given(studies(), studies())
def test_merging_again_changes_nothing(a: dict[str, Any], b: dict[str, Any]) -> None:
    merged = merge_imaging_study(a, b, "r4")
    assert merge_imaging_study(merged, merged, "r4") == merged
    assert merge_imaging_study(a, merged, "r4") == merged
    assert merge_imaging_study(merged, b, "r4") == merged


@given(studies(), studies(), st.booleans())
def test_deterministic_and_independent_of_key_order(
    a: dict[str, Any], b: dict[str, Any], newer: bool
) -> None:
    first = merge_imaging_study(a, b, "r4", newer=newer)
    again = merge_imaging_study(a, b, "r4", newer=newer)
    assert jsonio.dumps(first) == jsonio.dumps(again)
    reversed_keys = {k: a[k] for k in reversed(a)}
    assert jsonio.dumps(merge_imaging_study(reversed_keys, b, "r4", newer=newer)) == jsonio.dumps(
        first
    )


@given(studies(), studies(), st.booleans())
def test_inputs_unchanged_and_not_shared(a: dict[str, Any], b: dict[str, Any], newer: bool) -> None:
    before = copy.deepcopy((a, b))
    merged = merge_imaging_study(a, b, "r4", newer=newer)
    assert (a, b) == before
    assert not containers(merged) & (containers(a) | containers(b))


@given(studies(), studies())
def test_old_bundle_pushed_again_loses_nothing(a: dict[str, Any], b: dict[str, Any]) -> None:
    server = merge_imaging_study(a, b, "r4")  # b pushed after a
    assert merge_imaging_study(server, a, "r4", newer=False) == server
    assert merge_imaging_study(server, b, "r4", newer=False) == server


@given(studies(), studies())
def test_older_incoming_never_rolls_back(old: dict[str, Any], current: dict[str, Any]) -> None:
    merged = merge_imaging_study(current, old, "r4", newer=False)
    assert set(uids(merged)) == set(uids(current)) | set(uids(old))
    assert {k: v for k, v in uids(merged).items() if k in uids(current)} == uids(current)
    kept = instances_by_uid(merged)
    for uid, item in instances_by_uid(current).items():
        assert kept[uid].items() >= item.items()
    for key in ("description", "started", "subject"):
        if key in current:
            assert merged[key] == current[key]


@given(studies(), studies())
def test_newer_values_win(old: dict[str, Any], new: dict[str, Any]) -> None:
    merged = merge_imaging_study(old, new, "r4")
    got = instances_by_uid(merged)
    for uid, item in instances_by_uid(new).items():
        for key, value in item.items():
            assert got[uid][key] == value
    for uid, item in instances_by_uid(old).items():
        assert set(got[uid]) >= set(item)  # what the newer lacks is kept


@settings(max_examples=50)
@given(studies("r5"), studies("r5"))
def test_r5_shapes_union_by_code(a: dict[str, Any], b: dict[str, Any]) -> None:
    merged = merge_imaging_study(a, b, "r5")
    codes = [m["coding"][0]["code"] for m in merged["modality"]]
    assert codes == list(
        dict.fromkeys(m["coding"][0]["code"] for m in a["modality"] + b["modality"])
    )
    assert merge_imaging_study(merged, merged, "r5") == merged


# --------------------------------------------------------------------------- explicit cases


def test_late_series_is_added() -> None:
    six = series("1.2.840.99.1", [instance(f"1.2.840.99.1.{n}", n) for n in range(1, 7)], 2)
    late = series("1.2.840.99.2", [instance("1.2.840.99.2.1", 1)], 1, description="localizer")
    server = study([six], id="s1", meta={"versionId": "4", "lastUpdated": "2024-05-01T00:00:00Z"})
    merged = merge_imaging_study(server, study([late]), "r4")
    assert merged["id"] == "s1"
    assert "meta" not in merged
    assert merged["numberOfSeries"] == 2
    assert merged["numberOfInstances"] == 7
    assert [(s["uid"], s["numberOfInstances"]) for s in merged["series"]] == [
        ("1.2.840.99.2", 1),
        ("1.2.840.99.1", 6),
    ]
    assert merged == merge_imaging_study(merged, study([late]), "r4")


def test_same_instance_different_values() -> None:
    old = study([series("1.2.840.99.1", [instance("1.2.840.99.1.1", 1, title="OLD")], 1)])
    new = study([series("1.2.840.99.1", [instance("1.2.840.99.1.1", 3, title="NEW")], 1)])
    lacking = study([series("1.2.840.99.1", [instance("1.2.840.99.1.1")], 1)])

    (got,) = merge_imaging_study(old, new, "r4")["series"][0]["instance"]
    assert (got["number"], got["title"]) == (3, "NEW")
    (got,) = merge_imaging_study(old, lacking, "r4")["series"][0]["instance"]
    assert (got["number"], got["title"]) == (1, "OLD")  # what the newer lacks is kept
    (got,) = merge_imaging_study(old, new, "r4", newer=False)["series"][0]["instance"]
    assert (got["number"], got["title"]) == (1, "OLD")  # an older incoming does not roll back


def test_series_and_study_fields() -> None:
    uid = "1.2.840.99.1"
    old = study(
        [series(uid, [instance(uid + ".1", 1)], 1, description="AXIAL", bodySite={"display": "x"})],
        description="CT CHEST",
        started="2024-03-12T10:15:30+01:00",
        referrer={"display": "Dr. R"},
    )
    new = study(
        [series(uid, [instance(uid + ".2", 2)], 1, modality=modality("MR"))],
        started="2024-03-12",
        description="CT CHEST (corrected)",
    )
    merged = merge_imaging_study(old, new, "r4")
    (s,) = merged["series"]
    assert s["modality"]["code"] == "MR"
    assert s["description"] == "AXIAL"
    assert s["bodySite"] == {"display": "x"}
    assert [i["uid"] for i in s["instance"]] == [uid + ".1", uid + ".2"]
    assert merged["description"] == "CT CHEST (corrected)"
    assert merged["referrer"] == {"display": "Dr. R"}
    # a date only (converted without a time zone) does not erase the known time
    assert merged["started"] == "2024-03-12T10:15:30+01:00"
    corrected = merge_imaging_study(old, {**new, "started": "2024-03-11"}, "r4")
    assert corrected["started"] == "2024-03-11"  # a corrected date wins
    assert [m["code"] for m in merged["modality"]] == ["CT", "MR"]
    assert list(merged) == [
        "resourceType", "identifier", "status", "modality", "subject", "started", "referrer",
        "numberOfSeries", "numberOfInstances", "description", "series",
    ]  # fmt: skip


def test_instance_that_moved_series() -> None:
    old = study(
        [
            series("1.2.840.99.1", [instance("1.2.840.99.9.1", 1)], 1),
            series("1.2.840.99.2", [instance("1.2.840.99.9.2", 1)], 2),
        ]
    )
    new = study([series("1.2.840.99.3", [instance("1.2.840.99.9.1", 1, title="T")], 3)])
    merged = merge_imaging_study(old, new, "r4")
    # the newer placement wins; series 1 lost its only instance and is gone
    assert uids(merged) == {"1.2.840.99.9.1": "1.2.840.99.3", "1.2.840.99.9.2": "1.2.840.99.2"}
    assert instances_by_uid(merged)["1.2.840.99.9.1"]["title"] == "T"
    assert merged["numberOfSeries"] == 2
    back = merge_imaging_study(old, new, "r4", newer=False)
    assert uids(back) == {"1.2.840.99.9.1": "1.2.840.99.1", "1.2.840.99.9.2": "1.2.840.99.2"}


def test_series_without_instances_keeps_its_count() -> None:
    listed_elsewhere = series("1.2.840.99.5", [], 5)
    listed_elsewhere["numberOfInstances"] = 40  # another tool listed the series only
    old = study([listed_elsewhere])
    new = study([series("1.2.840.99.1", [instance("1.2.840.99.1.1", 1)], 1)])
    merged = merge_imaging_study(old, new, "r4")
    assert [s["uid"] for s in merged["series"]] == ["1.2.840.99.1", "1.2.840.99.5"]
    assert merged["numberOfInstances"] == 41
    assert "instance" not in merged["series"][1]
    # one that lists nothing and claims nothing says nothing: dropped
    empty = {**listed_elsewhere, "numberOfInstances": 0}
    assert merge_imaging_study(study([empty]), new, "r4") == new
    # once its instances are listed, they are what counts
    listed = study([series("1.2.840.99.5", [instance("1.2.840.99.5.1", 1)], 5)])
    assert merge_imaging_study(old, listed, "r4")["numberOfInstances"] == 1


def test_r5_shapes() -> None:
    uid = "1.2.840.99.1"
    laterality = {"coding": [{"system": "http://snomed.info/sct", "code": "7771000"}]}
    old = study(
        [series(uid, [instance(uid + ".1", 1)], 1, modality=modality("CT", "r5"))],
        "r5",
        basedOn=[{"type": "ServiceRequest", "identifier": {"value": "ACC1"}}],
    )
    new = study(
        [
            series(uid, [instance(uid + ".2", 2)], 1, modality=modality("CT", "r5")),
            series(
                "1.2.840.99.2",
                [instance("1.2.840.99.2.1", 1)],
                2,
                modality=modality("MR", "r5"),
                laterality=laterality,
            ),
        ],
        "r5",
        modality=[
            modality("SR", "r5"),
            {"coding": [{"system": DCM, "code": "CT"}], "text": "CT"},
            modality("MR", "r5"),
        ],
    )
    merged = merge_imaging_study(old, new, "r5")
    assert merged["modality"] == [
        {"coding": [{"system": DCM, "code": "CT"}], "text": "CT"},  # the newer one's, by code
        {"coding": [{"system": DCM, "code": "SR"}]},
        {"coding": [{"system": DCM, "code": "MR"}]},
    ]
    assert merged["basedOn"] == old["basedOn"]
    assert merged["series"][1]["laterality"] == laterality
    assert merged["numberOfInstances"] == 3
    findings = validate_resource(merged, fhir_version="r5", layers=ALL_LAYERS)
    assert [f for f in findings if f.severity == Severity.ERROR] == []


def test_endpoint_union() -> None:
    uid = "1.2.840.99.1"
    old = study(
        [series(uid, [instance(uid + ".1", 1)], 1, endpoint=[{"reference": "Endpoint/9"}])],
        endpoint=[{"reference": "Endpoint/2"}, {"reference": "Endpoint/1"}],
    )
    new = study(
        [series(uid, [instance(uid + ".1", 1)], 1)],
        endpoint=[
            {"reference": "Endpoint/3"},
            {"reference": "Endpoint/1", "display": "PACS"},
            {"reference": "Endpoint/3"},
        ],
    )
    merged = merge_imaging_study(old, new, "r4")
    assert merged["endpoint"] == [
        {"reference": "Endpoint/2"},
        {"reference": "Endpoint/1", "display": "PACS"},
        {"reference": "Endpoint/3"},
    ]
    # The old conversion put the series at Endpoint/9; the new one lists it without a
    # series.endpoint, so at its study endpoints: the series lives at all of them.
    assert merged["series"][0]["endpoint"] == [
        {"reference": "Endpoint/9"},
        {"reference": "Endpoint/3"},
        {"reference": "Endpoint/1", "display": "PACS"},
    ]


def test_two_sources_say_where_each_series_lives() -> None:
    """Issue 10 item 5: a study held by two PACS lists both endpoints; a series only one holds
    names that one in series.endpoint; a series both hold names none (it is at every one)."""
    shared, only_a, only_b = "1.2.840.99.1", "1.2.840.99.2", "1.2.840.99.3"
    pacs_a = study(
        [
            series(shared, [instance(shared + ".1", 1)], 1),
            series(only_a, [instance(only_a + ".1", 1)], 2),
        ],
        endpoint=[{"reference": "Endpoint/a"}],
    )
    pacs_b = study(
        [
            series(shared, [instance(shared + ".1", 1)], 1),
            series(only_b, [instance(only_b + ".1", 1)], 3),
        ],
        endpoint=[{"reference": "Endpoint/b"}],
    )
    merged = merge_imaging_study(pacs_a, pacs_b, "r4")
    assert merged["endpoint"] == [{"reference": "Endpoint/a"}, {"reference": "Endpoint/b"}]
    where = {s["uid"]: s.get("endpoint") for s in merged["series"]}
    assert where == {
        shared: None,
        only_a: [{"reference": "Endpoint/a"}],
        only_b: [{"reference": "Endpoint/b"}],
    }
    # Either order, and pushing either conversion again, gives the same answer.
    assert merge_imaging_study(pacs_b, pacs_a, "r4")["series"] == merged["series"]
    assert merge_imaging_study(merged, pacs_a, "r4") == merged
    assert merge_imaging_study(merged, pacs_b, "r4", newer=False) == merged
    # The series only PACS A held reaches PACS B too: it then lives at both.
    later_b = study(
        [series(only_a, [instance(only_a + ".1", 1)], 2)], endpoint=[{"reference": "Endpoint/b"}]
    )
    again = merge_imaging_study(merged, later_b, "r4")
    assert {s["uid"]: s.get("endpoint") for s in again["series"]}[only_a] == [
        {"reference": "Endpoint/a"},
        {"reference": "Endpoint/b"},
    ]
    # One source only: no series.endpoint (as fhirimg writes it).
    same = merge_imaging_study(pacs_a, pacs_a, "r4")
    assert all("endpoint" not in s for s in same["series"])


def test_endpoint_resolved_before_merging() -> None:
    uid = "1.2.840.99.1"
    local = "urn:uuid:5f0f9a2c-0000-5000-8000-000000000001"
    current = study(
        [series(uid, [instance(uid + ".1", 1)], 1)], id="7", endpoint=[{"reference": "Endpoint/1"}]
    )
    incoming = study([series(uid, [instance(uid + ".2", 2)], 1)], endpoint=[{"reference": local}])
    entry = {
        "fullUrl": "urn:uuid:s",
        "resource": incoming,
        "request": {"method": "PUT", "url": "x"},
    }
    unresolved = merged_study_entry(entry, current, "r4")["resource"]
    assert unresolved["endpoint"] == [{"reference": "Endpoint/1"}, {"reference": local}]
    resolved = merged_study_entry(entry, current, "r4", resolved={local: "Endpoint/1"})
    assert resolved["resource"]["endpoint"] == [{"reference": "Endpoint/1"}]
    assert incoming["endpoint"] == [{"reference": local}]


def test_binary_extension_kept() -> None:
    uid = "1.2.840.99.1"
    link = {"url": BINARY_EXT, "valueReference": {"reference": "Binary/b1"}}
    other = {"url": OTHER_EXT, "valueString": "x"}
    old = study([series(uid, [instance(uid + ".1", 1, extension=[link, other])], 1)])
    new = study([series(uid, [instance(uid + ".1", 1, title="T")], 1)])
    (got,) = merge_imaging_study(old, new, "r4")["series"][0]["instance"]
    assert got["extension"] == [link, other]
    assert list(got) == ["extension", "uid", "sopClass", "number", "title"]

    relinked = {"url": BINARY_EXT, "valueReference": {"reference": "urn:uuid:b2"}}
    new = study([series(uid, [instance(uid + ".1", 1, extension=[relinked])], 1)])
    (got,) = merge_imaging_study(old, new, "r4")["series"][0]["instance"]
    assert got["extension"] == [relinked, other]


def test_meta_id_and_text() -> None:
    uid = "1.2.840.99.1"
    server_meta = {
        "versionId": "12",
        "lastUpdated": "2024-05-01T00:00:00Z",
        "source": "#abc",
        "tag": [{"code": "t"}],
    }
    old = study(
        [series(uid, [instance(uid + ".1", 1)], 1)],
        id="srv-1",
        meta=server_meta,
        text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    )
    new = study([series(uid, [instance(uid + ".1", 1)], 1)])
    merged = merge_imaging_study(old, new, "r4")
    assert merged["id"] == "srv-1"
    assert "meta" not in merged
    assert "text" not in merged
    with_meta = {**new, "meta": {"versionId": "1", "profile": ["http://example.org/p"]}}
    merged = merge_imaging_study(old, with_meta, "r4")
    assert merged["meta"] == {"profile": ["http://example.org/p"]}
    assert list(merged)[:3] == ["resourceType", "id", "meta"]
    # an older incoming keeps the newer (server) meta, less what the server manages
    kept = merge_imaging_study(old, new, "r4", newer=False)
    assert kept["meta"] == {"source": "#abc", "tag": [{"code": "t"}]}
    assert kept["text"] == old["text"]


def test_identifiers_union() -> None:
    uid = "1.2.840.99.1"
    acc = {"type": {"text": "ACSN"}, "system": "urn:oid:1.2.3", "value": "A1"}
    old = study([series(uid, [instance(uid + ".1", 1)], 1)], identifier=[acc])
    new = study(
        [series(uid, [instance(uid + ".1", 1)], 1)],
        identifier=[{"system": "urn:oid:1.2.3", "value": "A1"}, {"use": "secondary", "value": "S"}],
    )
    merged = merge_imaging_study(old, new, "r4")
    assert merged["identifier"] == [
        STUDY_UID,
        {"system": "urn:oid:1.2.3", "value": "A1"},
        {"use": "secondary", "value": "S"},
    ]


def test_refuses_what_cannot_be_merged() -> None:
    uid = "1.2.840.99.1"
    one = study([series(uid, [instance(uid + ".1", 1)], 1)])
    other = {**one, "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4"}]}
    with pytest.raises(InputError, match="two different studies"):
        merge_imaging_study(one, other, "r4")
    with pytest.raises(InputError, match="not an ImagingStudy"):
        merge_imaging_study({"resourceType": "Patient"}, one, "r4")
    broken = copy.deepcopy(one)
    del broken["series"][0]["instance"][0]["uid"]
    with pytest.raises(InputError, match="without a uid"):
        merge_imaging_study(broken, one, "r4")


# --------------------------------------------------------------------------- entries and bundles


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": "urn:uuid:5f0f9a2c-0000-5000-8000-0000000000aa",
        "resource": resource,
        "request": {
            "method": "PUT",
            "url": "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.840.99",
        },
    }


def test_entry_without_a_current_study_is_a_conditional_create() -> None:
    resource = study([series("1.2.840.99.1", [instance("1.2.840.99.1.1", 1)], 1)])
    entry = _entry(resource)
    before = copy.deepcopy(entry)
    out = merged_study_entry(entry, None, "r4")
    assert out == {
        "fullUrl": entry["fullUrl"],
        "resource": resource,
        "request": {
            "method": "POST",
            "url": "ImagingStudy",
            "ifNoneExist": "identifier=urn:dicom:uid|urn:oid:1.2.840.99",
        },
    }
    assert out["resource"] is not resource
    assert entry == before


def test_entry_with_a_current_study_is_a_versioned_update() -> None:
    uid = "1.2.840.99.1"
    current = study([series(uid, [instance(uid + ".1", 1)], 1)], id="abc", meta={"versionId": "7"})
    entry = _entry(study([series(uid, [instance(uid + ".2", 2)], 1)]))
    out = merged_study_entry(entry, current, "r4")
    assert out["fullUrl"] == entry["fullUrl"]  # Media entries still reference the study by it
    assert out["request"] == {"method": "PUT", "url": "ImagingStudy/abc", "ifMatch": 'W/"7"'}
    assert out["resource"]["id"] == "abc"
    assert out["resource"]["numberOfInstances"] == 2
    unversioned = {k: v for k, v in current.items() if k != "meta"}
    assert merged_study_entry(entry, unversioned, "r4")["request"] == {
        "method": "PUT",
        "url": "ImagingStudy/abc",
    }
    with pytest.raises(InputError, match="no id"):
        merged_study_entry(entry, {k: v for k, v in current.items() if k != "id"}, "r4")


def test_merge_bundle_replaces_only_the_study_entry() -> None:
    uid = "1.2.840.99.1"
    patient = {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}, "request": {}}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [patient, _entry(study([series(uid, [instance(uid + ".2", 2)], 1)]))],
    }
    before = copy.deepcopy(bundle)
    current = study([series(uid, [instance(uid + ".1", 1)], 1)], id="abc", meta={"versionId": "1"})
    out = merge_bundle(bundle, current, "r4")
    assert bundle == before
    assert out["entry"][0] == patient
    assert out["entry"][1]["request"]["ifMatch"] == 'W/"1"'
    assert merge_bundle({**bundle, "entry": [patient]}, current, "r4")["entry"] == [patient]
    with pytest.raises(InputError, match="2 ImagingStudy entries"):
        merge_bundle({**bundle, "entry": [*bundle["entry"], bundle["entry"][1]]}, current, "r4")


def test_current_from_search() -> None:
    match = {"resource": {"resourceType": "ImagingStudy", "id": "1"}, "search": {"mode": "match"}}
    include = {"resource": {"resourceType": "Patient", "id": "p"}, "search": {"mode": "include"}}
    outcome = {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
    found = {"resourceType": "Bundle", "type": "searchset", "entry": [outcome, match, include]}
    assert current_from_search(found) == match["resource"]
    assert current_from_search({"resourceType": "Bundle", "entry": []}) is None
    other = {"resource": {"resourceType": "ImagingStudy", "id": "2"}}
    with pytest.raises(InputError, match="2 ImagingStudy resources match one study: 1, 2"):
        current_from_search({"entry": [match, other]})


# --------------------------------------------------------------------------- converted sample data


@pytest.fixture(scope="module", params=["r4", "r5"])
def study_a(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Study A converted three times: its CT series alone, its late localizer alone, both."""
    release: str = request.param
    out: dict[str, dict[str, Any]] = {}
    for name, folders in (
        ("ct", ["study_a_ct"]),
        ("localizer", ["study_a_ct_localizer"]),
        ("all", ["study_a_ct", "study_a_ct_localizer"]),
    ):
        folder = tmp_path_factory.mktemp(f"{release}-{name}")
        options = ConvertOptions(
            out_dir=folder, jobs=1, fhir_version=release, mapping=MapOptions(dicomweb_url=DICOMWEB)
        )
        convert([SAMPLE / f for f in folders], options)
        (out[name],) = bundles(folder).values()
    return release, out


def _study(bundle: dict[str, Any]) -> dict[str, Any]:
    (resource,) = resources(bundle, "ImagingStudy")
    return resource


def test_converted_pieces_merge_into_the_whole_study(study_a: Any) -> None:
    release, converted = study_a
    ct, localizer, whole = (_study(converted[n]) for n in ("ct", "localizer", "all"))
    assert (ct["numberOfInstances"], localizer["numberOfInstances"]) == (5, 1)
    assert jsonio.dumps(merge_imaging_study(ct, localizer, release)) == jsonio.dumps(whole)
    assert merge_imaging_study(localizer, ct, release) == whole
    assert merge_imaging_study(whole, ct, release, newer=False) == whole
    assert merge_imaging_study(whole, whole, release) == whole


def test_merged_bundles_validate(study_a: Any, tmp_path: Path) -> None:
    release, converted = study_a
    server = {
        **_study(converted["ct"]),
        "id": "study-a",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T00:00:00Z"},
    }
    server["subject"] = {"reference": "Patient/p1"}
    server["endpoint"] = [{"reference": "Endpoint/e1"}]
    for current in (server, None):
        bundle = merge_bundle(converted["localizer"], current, release)
        findings = validate_resource(bundle, fhir_version=release, layers=ALL_LAYERS)
        assert [f for f in findings if f.severity != Severity.INFORMATION] == [], findings
    merged = _study(merge_bundle(converted["localizer"], server, release))
    assert merged["numberOfInstances"] == 6
    assert merged["id"] == "study-a"
    assert "meta" not in merged


def test_push_bundle_merges_in_the_bundles_release(study_a: Any) -> None:
    """push_bundle's read-merge-write against a mock server, R4 and R5 alike (the FHIR test
    server is R4 only): the late localizer's bundle goes as PUT ImagingStudy/<id> with ifMatch,
    holding the union in the bundle's release, with the server's Endpoint referenced once."""
    import httpx

    from fhirimg.http import FhirClient, RetryPolicy
    from fhirimg.push import push_bundle

    release, converted = study_a
    server = {**_study(converted["ct"]), "id": "s1", "meta": {"versionId": "4"}}
    server["subject"] = {"reference": "Patient/p1"}
    server["endpoint"] = [{"reference": "Endpoint/e1"}]
    found = {"Patient": "p1", "Endpoint": "e1", "ImagingStudy": None}
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            rtype = request.url.path.rsplit("/", 1)[-1]
            resource = server if rtype == "ImagingStudy" else {"resourceType": rtype}
            if found[rtype]:
                resource = {**resource, "id": found[rtype]}
            entry = [{"resource": resource, "search": {"mode": "match"}}]
            return httpx.Response(200, json={"resourceType": "Bundle", "entry": entry})
        body = jsonio.loads(request.content)
        sent.append(body)
        answers = [{"response": {"status": "200 OK"}} for _ in body["entry"]]
        return httpx.Response(200, json={"resourceType": "Bundle", "entry": answers})

    retry = RetryPolicy(max_attempts=1)
    with FhirClient(
        "http://fhir.test/r4", retry=retry, transport=httpx.MockTransport(handler)
    ) as c:
        result = push_bundle(c, converted["localizer"])
    assert (result.status, result.merge, result.conflicts) == ("pushed", "merged", 0), result.error
    (body,) = sent
    (entry,) = [e for e in body["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
    assert entry["request"] == {"method": "PUT", "url": "ImagingStudy/s1", "ifMatch": 'W/"4"'}
    merged = entry["resource"]
    assert merged["numberOfInstances"] == 6
    assert merged["endpoint"] == [{"reference": "Endpoint/e1"}]
    assert merged["subject"] == {"reference": "Patient/p1"}
    assert all("endpoint" not in s for s in merged["series"])  # one source: the study's
    whole = {**_study(converted["all"]), "id": "s1", "subject": server["subject"]}
    assert merged == {**whole, "endpoint": server["endpoint"]}
    assert ("coding" in merged["modality"][0]) == (release == "r5")
