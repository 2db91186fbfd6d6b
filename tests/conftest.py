"""Shared fixtures: the strict FHIR test server (tools/fhir-test-server) and test bundles.

``fhir_server`` / ``fhir_server_limited`` start one server each per session (the second refuses
strict transactions over 8 entries, like hosted Medplum). Tests that write to a server take
``clean_fhir`` / ``clean_fhir_limited`` instead, which empty its store first (``POST
[base]/$reset``), so each test sees only its own resources. ``make_bundle`` builds small valid R4
transaction Bundles shaped like ``fhirimg convert`` output (Patient, Endpoint, ImagingStudy,
optional Media and inline Binary entries, optional Binary files beside the bundle).
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirimg import jsonio
from tests.servers.fhir_server import FhirTestServer, start_fhir_server

MRN_SYSTEM = "urn:oid:1.2.826.0.1.3680043.9.7704.1"
ENDPOINT_SYSTEM = "https://fhirimg.dev/fhir/endpoint"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
BINARY_EXT = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
_NS = uuid.UUID("6f1c6c1e-2f0e-4f63-9d5e-0a8b7f0c1d2e")


def _start(**kwargs: Any) -> Iterator[FhirTestServer]:
    # scripts/test.sh (and so CI) sets FHIRIMG_REQUIRE_SERVERS=1: there a server that does not
    # start fails the tests instead of skipping them.
    required = os.environ.get("FHIRIMG_REQUIRE_SERVERS") == "1"
    try:
        server = start_fhir_server(**kwargs)
    except Exception as exc:  # FhirServerError: not installed, or failed to start
        if required:
            pytest.fail(f"FHIR test server did not start: {exc}")
        pytest.skip(f"FHIR test server unavailable (run bash scripts/test.sh): {exc}")
    with server:
        yield server


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (tests/servers/moto_server.py): its endpoint URL."""
    from tests.servers.moto_server import start_moto

    with start_moto() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[FhirTestServer]:
    """The strict FHIR test server, started once per session (shared: reset before writing)."""
    yield from _start()


@pytest.fixture(scope="session")
def fhir_server_limited() -> Iterator[FhirTestServer]:
    """A second server refusing strict transactions of more than 8 entries (like Medplum)."""
    yield from _start(max_strict_entries=8)


@pytest.fixture
def clean_fhir(fhir_server: FhirTestServer) -> FhirTestServer:
    """``fhir_server`` with an empty store: use it in every test that writes."""
    fhir_server.reset()
    return fhir_server


@pytest.fixture
def clean_fhir_limited(fhir_server_limited: FhirTestServer) -> FhirTestServer:
    """``fhir_server_limited`` with an empty store."""
    fhir_server_limited.reset()
    return fhir_server_limited


# --------------------------------------------------------------------------- reading a server back
def search(base_url: str, query: str) -> list[dict[str, Any]]:
    """The resources a search returns (all pages)."""
    out: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/{query}"
    with httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=30) as client:
        while url:
            response = client.get(url)
            response.raise_for_status()
            page = response.json()
            out.extend(e["resource"] for e in page.get("entry") or [] if "resource" in e)
            links = page.get("link") or []
            url = next((ln["url"] for ln in links if ln["relation"] == "next"), None)
    return out


def count(base_url: str, resource_type: str, params: str = "") -> int:
    return len(search(base_url, f"{resource_type}?_count=1000{'&' + params if params else ''}"))


def snapshot(base_url: str) -> dict[str, Any]:
    """The server's content, independent of server-assigned ids: for comparing two runs."""
    patients = {p["id"]: p for p in search(base_url, "Patient?_count=1000")}

    def mrn(ref: str) -> str:
        pid = ref.split("/")[-1]
        return patients[pid]["identifier"][0]["value"] if pid in patients else f"?{ref}"

    studies = sorted(
        (s["identifier"][0]["value"], mrn(s["subject"]["reference"]), s.get("numberOfInstances"))
        for s in search(base_url, "ImagingStudy?_count=1000")
    )
    return {
        "patients": sorted(p["identifier"][0]["value"] for p in patients.values()),
        "endpoints": sorted(
            e["identifier"][0]["value"] for e in search(base_url, "Endpoint?_count=1000")
        ),
        "studies": studies,
        "media": count(base_url, "Media"),
    }


# --------------------------------------------------------------------------- building bundles
def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NS, '|'.join(parts))}"


def instance_bytes(study_uid: str, n: int, size: int = 2048) -> bytes:
    """Deterministic fake DICOM Part 10 bytes (preamble + DICM + filler)."""
    seed = hashlib.sha256(f"{study_uid}/{n}".encode()).digest()
    body = (seed * (size // len(seed) + 1))[:size]
    return b"\0" * 128 + b"DICM" + body


def study_bundle(
    study_uid: str,
    mrn: str,
    *,
    instances: int = 2,
    media: int = 0,
    inline_binaries: int = 0,
    binary_files: bool = False,
    endpoint: str = "pacs-1",
    binary_size: int = 2048,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A valid R4 transaction Bundle for one study, and the Binary files to put beside it."""
    patient_url, endpoint_url, study_url = (
        _urn("patient", mrn),
        _urn("endpoint", endpoint),
        _urn("study", study_uid),
    )
    binaries: dict[str, bytes] = {}
    series_uid = f"{study_uid}.1"
    instance_list = []
    for n in range(1, instances + 1):
        instance: dict[str, Any] = {
            "uid": f"{series_uid}.{n}",
            "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE_STORAGE}"},
            "number": n,
        }
        if binary_files:
            binary_id = str(uuid.uuid5(_NS, f"binary|{study_uid}|{n}"))
            binaries[binary_id] = instance_bytes(study_uid, n, binary_size)
            instance["extension"] = [
                {"url": BINARY_EXT, "valueReference": {"reference": f"Binary/{binary_id}"}}
            ]
        instance_list.append(instance)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
                "name": [{"family": "Test", "given": [mrn]}],
                "gender": "other",
            },
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={MRN_SYSTEM}|{mrn}",
            },
        },
        {
            "fullUrl": endpoint_url,
            "resource": {
                "resourceType": "Endpoint",
                "identifier": [{"system": ENDPOINT_SYSTEM, "value": endpoint}],
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM WADO-RS"}],
                "payloadMimeType": ["application/dicom"],
                "address": f"https://pacs.example/{endpoint}/dicom-web",
            },
            "request": {
                "method": "POST",
                "url": "Endpoint",
                "ifNoneExist": f"identifier={ENDPOINT_SYSTEM}|{endpoint}",
            },
        },
        {
            "fullUrl": study_url,
            "resource": {
                "resourceType": "ImagingStudy",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
                "status": "available",
                "subject": {"reference": patient_url},
                "endpoint": [{"reference": endpoint_url}],
                "numberOfSeries": 1,
                "numberOfInstances": instances,
                "description": "CT HEAD",
                "series": [
                    {
                        "uid": series_uid,
                        "number": 1,
                        "modality": {"system": DCM, "code": "CT"},
                        "numberOfInstances": instances,
                        "instance": instance_list,
                    }
                ],
            },
            "request": {
                "method": "PUT",
                "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{study_uid}",
            },
        },
    ]
    for n in range(1, inline_binaries + 1):
        binary_id = str(uuid.uuid5(_NS, f"inline|{study_uid}|{n}"))
        entries.append(
            {
                "fullUrl": _urn("inline", study_uid, str(n)),
                "resource": {
                    "resourceType": "Binary",
                    "id": binary_id,
                    "contentType": "application/dicom",
                    "data": base64.b64encode(instance_bytes(study_uid, 1000 + n, 256)).decode(),
                },
                "request": {"method": "PUT", "url": f"Binary/{binary_id}"},
            }
        )
    for n in range(1, media + 1):
        sop = f"{series_uid}.{n}"
        entries.append(
            {
                "fullUrl": _urn("media", study_uid, str(n)),
                "resource": {
                    "resourceType": "Media",
                    "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{sop}"}],
                    "status": "completed",
                    "partOf": [{"reference": study_url}],
                    "subject": {"reference": patient_url},
                    "content": {"contentType": "image/png", "url": f"https://img.example/{n}.png"},
                },
                "request": {
                    "method": "PUT",
                    "url": f"Media?identifier=urn:dicom:uid|urn:oid:{sop}",
                },
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, binaries


def write_bundle(
    folder: Path, stem: str, bundle: dict[str, Any], binaries: dict[str, bytes]
) -> Path:
    """Write ``<stem>.json`` (and ``<stem>.binaries/<id>.dcm``) the way ``convert`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.json"
    path.write_bytes(jsonio.dumps(bundle))
    if binaries:
        (folder / f"{stem}.binaries").mkdir(exist_ok=True)
        for binary_id, data in binaries.items():
            (folder / f"{stem}.binaries" / f"{binary_id}.dcm").write_bytes(data)
    return path


MakeFolder = Callable[..., Path]


@pytest.fixture
def make_folder(tmp_path: Path) -> MakeFolder:
    """``make_folder(n, **study_bundle_kwargs)``: a convert-like output folder of ``n`` studies.

    Studies use UIDs ``2.25.<1000+i>`` and patients ``MRN<i % patients>``; a ``report.json`` is
    written too (push must skip it).
    """

    def make(n: int = 2, *, patients: int = 2, name: str = "out", **kwargs: Any) -> Path:
        folder = tmp_path / name
        for i in range(n):
            bundle, binaries = study_bundle(f"2.25.{1000 + i}", f"MRN{i % patients}", **kwargs)
            write_bundle(folder, f"study-{i:03d}", bundle, binaries)
        (folder / "report.json").write_bytes(jsonio.dumps({"files": n, "issues": []}))
        return folder

    return make
