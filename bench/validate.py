"""Benchmark ``fhirimg validate`` against plain fhir.resources model validation of the same files.

Usage::

    python bench/validate.py [FOLDER] [--files N] [--instances N] [--jobs N]

Without FOLDER, a synthetic set of R4 transaction bundles (Patient, Endpoint, ImagingStudy with
``--instances`` instances over 4 series, one Binary) is written to a temporary folder. Prints
files/s and MB/s for: the floor (orjson + the R4B/R5 model's ``model_validate``, one process),
the fast layers and all layers in one process, and all layers with ``--jobs`` processes, each as a
ratio to the floor (higher is faster). A benchmark, not a test: the figures are only comparable
within one run on one machine.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fhirimg.images.binary import part10_header
from fhirimg.validate import iter_validate, parse_layers
from fhirimg.validate.model_layer import model_class
from fhirimg.validate.runner import default_jobs, discover
from fhirimg.validate.validator import detect_version

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXT = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def synthetic_bundle(n: int, instances: int) -> dict[str, Any]:
    """One transaction bundle shaped like convert output, with deterministic UIDs."""
    root = f"1.2.826.0.1.3680043.8.498.{n + 1}"

    def u(name: str) -> str:
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, root + name)}"

    series = []
    per = max(1, instances // 4)
    for s in range(4):
        series.append(
            {
                "uid": f"{root}.{s + 1}",
                "number": s + 1,
                "modality": {"system": DCM, "code": "CT"},
                "numberOfInstances": per,
                "instance": [
                    {
                        # one instance links to the bundle's one Binary, which holds that
                        # instance (img-binary-sop-instance): the bundle is valid
                        **(
                            {"extension": [{"url": EXT, "valueReference": {"reference": u("bin")}}]}
                            if s == 0 and i == 0
                            else {}
                        ),
                        "uid": f"{root}.{s + 1}.{i + 1}",
                        "sopClass": {
                            "system": "urn:ietf:rfc:3986",
                            "code": f"urn:oid:{CT_IMAGE}",
                        },
                        "number": i + 1,
                    }
                    for i in range(per)
                ],
            }
        )
    # a Part 10 header naming the linked instance (File Meta (0002,0002)/(0002,0003)), then
    # a dataset's worth of bytes
    head = part10_header(CT_IMAGE, f"{root}.1.1")
    data = base64.b64encode(head + b"\0" * 1024).decode()
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": u("pat"),
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:oid:1.2.3", "value": f"P{n}"}],
                    "name": [{"family": "Doe", "given": ["J"]}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier=urn:oid:1.2.3|P{n}",
                },
            },
            {
                "fullUrl": u("ep"),
                "resource": {
                    "resourceType": "Endpoint",
                    "status": "active",
                    "connectionType": {
                        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                        "code": "dicom-wado-rs",
                    },
                    "payloadType": [{"text": "DICOM WADO-RS"}],
                    "address": "https://pacs.example.org/dicomweb",
                },
                "request": {"method": "POST", "url": "Endpoint"},
            },
            {
                "fullUrl": u("bin"),
                "resource": {
                    "resourceType": "Binary",
                    "id": f"b{n}",
                    "contentType": "application/dicom",
                    "data": data,
                },
                "request": {"method": "PUT", "url": f"Binary/b{n}"},
            },
            {
                "fullUrl": u("study"),
                "resource": {
                    "resourceType": "ImagingStudy",
                    "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{root}"}],
                    "status": "available",
                    "subject": {"reference": u("pat")},
                    "endpoint": [{"reference": u("ep")}],
                    "numberOfSeries": 4,
                    "numberOfInstances": per * 4,
                    "series": series,
                },
                "request": {
                    "method": "PUT",
                    "url": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{root}",
                },
            },
        ],
    }


def floor(files: list[str]) -> None:
    """Plain fhir.resources: parse and model_validate each file, nothing else."""
    for f in files:
        obj = orjson.loads(Path(f).read_bytes())
        cls = model_class(detect_version(obj), obj["resourceType"])
        cls.model_validate(obj)


def timed(label: str, fn: Callable[[], None], n: int, mb: float, base: float | None) -> float:
    fn()  # warm-up: loads models, schemas, compiled FHIRPath once, like a long run would
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    ratio = f"{base / seconds:5.2f}x" if base else "1.00x (floor)"
    print(  # noqa: T201 - a benchmark prints its figures
        f"{label:<34} {n / seconds:9.1f} files/s {mb / seconds:8.2f} MB/s  {ratio}"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=default_jobs())
    args = parser.parse_args()
    tmp = None
    folder = args.folder
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="fhirimg-bench-")
        folder = Path(tmp.name)
        for n in range(args.files):
            (folder / f"bundle{n:05d}.json").write_bytes(
                orjson.dumps(synthetic_bundle(n, args.instances))
            )
    files = list(discover([folder]))
    mb = sum(Path(f).stat().st_size for f in files) / 1e6
    print(f"{len(files)} files, {mb:.1f} MB, {args.jobs} jobs")  # noqa: T201

    def run(layers: str, jobs: int) -> Callable[[], None]:
        def go() -> None:
            for _ in iter_validate(files, layers=parse_layers(layers), jobs=jobs):
                pass

        return go

    base = timed("fhir.resources models only", lambda: floor(files), len(files), mb, None)
    timed("validate --layers fast -j 1", run("fast", 1), len(files), mb, base)
    timed("validate --layers all -j 1", run("all", 1), len(files), mb, base)
    timed(f"validate --layers fast -j {args.jobs}", run("fast", args.jobs), len(files), mb, base)
    timed(f"validate --layers all -j {args.jobs}", run("all", args.jobs), len(files), mb, base)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
