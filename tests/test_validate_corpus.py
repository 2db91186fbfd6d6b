"""The broken-bundle corpus: each file has one defect, found at its location by its layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fhirimg.validate import ALL_LAYERS, Layer, Severity, validate_bytes

CORPUS = Path(__file__).parent / "data" / "validate"
MANIFEST: dict[str, dict[str, object]] = json.loads((CORPUS / "manifest.json").read_text())


def _run(name: str, layers: frozenset[Layer] = ALL_LAYERS) -> list[tuple[str, str]]:
    path = CORPUS / "corpus" / name
    spec = MANIFEST[name]
    result = validate_bytes(
        path.read_bytes(),
        source=str(path),
        fhir_version=str(spec["fhirVersion"]),
        layers=layers,
        beside=path.parent,
    )
    return [
        (f.location, f.layer)
        for f in result.findings
        if f.severity in (Severity.ERROR, Severity.WARNING)
    ]


@pytest.mark.parametrize("name", sorted(n for n, s in MANIFEST.items() if s["expect"]))
def test_defect_found_at_its_location(name: str) -> None:
    found = _run(name)
    for location, layer in MANIFEST[name]["expect"]:  # type: ignore[attr-defined]
        assert (location, layer) in found, found


@pytest.mark.parametrize("name", sorted(n for n, s in MANIFEST.items() if not s["expect"]))
def test_valid_bundle_has_no_errors_or_warnings(name: str) -> None:
    assert _run(name) == []


@pytest.mark.parametrize(
    "name", sorted(n for n, s in MANIFEST.items() if not s["expect"] and "r5" not in n)
)
def test_valid_bundle_is_clean_with_auto_detection(name: str) -> None:
    path = CORPUS / "corpus" / name
    result = validate_bytes(path.read_bytes(), source=str(path), beside=path.parent)
    assert result.release == "r4"
    assert not [f for f in result.findings if f.severity is not Severity.INFORMATION]


def test_every_layer_is_covered() -> None:
    layers = {layer for s in MANIFEST.values() for _, layer in s["expect"]}  # type: ignore[attr-defined]
    assert layers == {"json", "model", "schema", "invariant", "bundle", "imaging"}


def test_corpus_files_are_listed() -> None:
    on_disk = {p.name for p in (CORPUS / "corpus").glob("*.json")}
    assert on_disk == set(MANIFEST)
