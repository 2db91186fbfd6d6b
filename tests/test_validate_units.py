"""Unit and property tests of the validator's pieces: UIDs, version detection, layers, API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhirimg.validate import (
    ALL_LAYERS,
    FAST_LAYERS,
    Finding,
    Severity,
    detect_version,
    validate_paths,
    validate_resource,
)
from fhirimg.validate.bundle_layer import query_problem
from fhirimg.validate.imaging_layer import uid_problem
from fhirimg.validate.server import outcome_findings

CORPUS = Path(__file__).parent / "data" / "validate" / "corpus"

components = st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**12).map(str))


@given(st.lists(components, min_size=1, max_size=12))
def test_uids_of_digits_without_leading_zeros_are_valid(parts: list[str]) -> None:
    uid = ".".join(parts)
    assert (uid_problem(uid) is None) == (len(uid) <= 64)


@given(st.lists(components, min_size=1, max_size=6), st.integers(min_value=0, max_value=5))
def test_a_leading_zero_is_invalid(parts: list[str], where: int) -> None:
    parts[where % len(parts)] = "0" + parts[where % len(parts)]
    assert uid_problem(".".join(parts)) is not None


@pytest.mark.parametrize(
    ("query", "ok"),
    [
        ("identifier=urn:dicom:uid|urn:oid:1.2.3", True),
        ("identifier:exact=a&_id=b", True),
        ("identifier", False),
        ("identifier=", False),
        ("=x", False),
        ("a=b c", False),
        ("a=%zz", False),
    ],
)
def test_query_grammar(query: str, ok: bool) -> None:
    assert (query_problem(query) is None) is ok


def test_version_detection() -> None:
    r5_study = {
        "resourceType": "ImagingStudy",
        "series": [{"modality": {"coding": [{"code": "CT"}]}}],
    }
    r4_study = {"resourceType": "ImagingStudy", "series": [{"modality": {"code": "CT"}}]}
    assert detect_version({"resourceType": "Bundle", "entry": [{"resource": r5_study}]}) == "r5"
    assert detect_version(r4_study) == "r4"
    assert detect_version({"resourceType": "Media"}) == "r4"


def test_api_signature_and_fast_layers_skip_invariants() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "total": 1}
    fast = validate_resource(bundle, fhir_version="r4", layers=FAST_LAYERS, source="x.json")
    full = validate_resource(bundle, fhir_version="r4", layers=ALL_LAYERS, source="x.json")
    assert all(isinstance(f, Finding) for f in full)
    assert not [f for f in fast if f.layer == "invariant"]
    assert [f.location for f in full if f.layer == "invariant" and f.severity == "error"] == [
        "Bundle"
    ]
    assert {f.file for f in full} == {"x.json"}


def test_other_resource_types_get_information_not_errors() -> None:
    found = validate_resource(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, layers=ALL_LAYERS
    )
    assert [f.severity for f in found] == [Severity.INFORMATION]


def test_validate_paths_parallel_equals_serial() -> None:
    # with two processes, the first file is checked in the main process before the fork
    files = sorted(str(p) for p in CORPUS.glob("imaging_*.json"))
    serial = validate_paths(files, jobs=1)
    parallel = validate_paths(files, jobs=2)
    assert serial == parallel
    assert serial


def test_outcome_mapping_defaults() -> None:
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "x", "location": ["Patient.name"]},
            {"severity": "information", "code": "informational", "details": {"text": "ok"}},
        ],
    }
    found = outcome_findings(oo, "f")
    assert [(f.severity, f.location, f.message) for f in found] == [
        (Severity.WARNING, "Patient.name", "x"),
        (Severity.INFORMATION, "$", "ok"),
    ]


def test_split_parts_are_found_by_their_literal_names(tmp_path: Path) -> None:
    from fhirimg.validate.runner import sibling_binaries

    # glob characters in a name are taken as they are; the folder is listed once per process
    base = "st[1]*"
    for name, ids in ((f"{base}.json", ["a"]), (f"{base}.part-2.json", ["b", "c"])):
        urls = ",".join(f'{{"request": {{"url": "Binary/{i}"}}}}' for i in ids)
        (tmp_path / name).write_text(f'{{"entry": [{urls}]}}')
    (tmp_path / "st[1]x.part-3.json").write_text('{"request": {"url": "Binary/z"}}')
    os.utime(tmp_path, (1e9, 1e9))  # a settled folder: its listing is kept
    assert sibling_binaries(tmp_path / f"{base}.json") == {"b", "c"}
    assert sibling_binaries(tmp_path / f"{base}.part-2.json") == {"a"}
    (tmp_path / f"{base}.part-10.json").write_text('{"request": {"url": "Binary/d"}}')
    assert sibling_binaries(tmp_path / f"{base}.json") == {"b", "c", "d"}  # listed again


_json_trees = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["", " ", "x"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "_a", "b", "_b", "id", "", "_"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(_json_trees)
def test_the_json_layer_shortcut_agrees_with_its_walk(tree: object) -> None:
    from fhirimg.validate.findings import Collector, Layer
    from fhirimg.validate.json_layer import _clean, _walk

    out = Collector("x", Layer.JSON)
    _walk(tree, "X", out, nulls_ok=False)
    assert _clean(tree) == (out.findings == [])


@given(_json_trees, st.integers(min_value=1, max_value=4))
def test_the_depth_shortcut_agrees_with_the_walk(tree: object, limit: int) -> None:
    from fhirimg.validate.json_layer import _deep_location, _within

    if isinstance(tree, dict | list):
        assert _within(tree, limit - 1) == (_deep_location(tree, "X", limit) is None)
