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
