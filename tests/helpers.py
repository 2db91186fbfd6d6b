"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data" / "dicom"
GOLDEN = Path(__file__).resolve().parent / "golden"


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def pydicom_file(name: str) -> Path:
    """A file of the test data pydicom ships (``CT_small.dcm``, ...), never downloaded.

    ``get_testdata_file`` is typed ``str | Dataset | None`` (``read=True`` gives a Dataset, a
    missing file None); this narrows it for mypy and names the file when it is missing.
    """
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), f"pydicom test file {name} not available"
    return Path(path)


def report_bytes(out_dir: Path) -> bytes:
    """``report.json`` of a convert output folder as the golden files pin it: the folder's path
    replaced by ``OUT``, and its ``history`` (the run history: timestamps and fhirimg versions,
    the one part that differs between two runs over the same input, docs/incremental.md)
    replaced by the number of runs. Everything else is compared byte for byte."""
    doc = load(out_dir / "report.json")
    if "history" in doc:
        doc["history"] = f"<{len(doc['history'])} run(s): not compared>"
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE).replace(
        str(out_dir).encode(), b"OUT"
    )


def bundles(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The bundles in a convert output folder, by file name."""
    return {p.name: load(p) for p in sorted(out_dir.glob("study-*.json"))}


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def study_by_uid(out_dir: Path, uid: str) -> dict[str, Any]:
    for bundle in bundles(out_dir).values():
        for study in resources(bundle, "ImagingStudy"):
            if study["identifier"][0]["value"] == "urn:oid:" + uid:
                return bundle
    raise AssertionError(f"no bundle for study {uid}")
