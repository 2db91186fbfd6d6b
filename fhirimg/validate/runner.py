"""Validate files, folders and stdin, in parallel: what ``fhirimg validate`` calls.

Folders are searched for ``*.json`` (recursively), skipping ``*.binaries/`` folders (the DICOM
files stored beside a bundle). A JSON file without ``resourceType`` (``report.json`` of a convert
run) gives an information finding, not an error. Files are spread over a process pool
(``jobs``); each worker loads schemas, models and compiled FHIRPath once and reuses them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fhirimg.errors import InputError
from fhirimg.http.client import TlsSettings
from fhirimg.validate import invariant_layer, json_layer, model_layer, schema_layer
from fhirimg.validate.findings import Finding, Layer, Severity
from fhirimg.validate.validator import ALL_LAYERS, detect_version, validate_resource

if TYPE_CHECKING:  # the workers never talk to a server: no HTTP import for them
    import httpx

STDIN = "-"


@dataclass(frozen=True)
class FileResult:
    """The findings of one file, and the FHIR release it was checked against."""

    file: str
    release: str | None
    findings: tuple[Finding, ...]
    size: int


def discover(paths: Iterable[str | Path]) -> Iterator[str]:
    """Every file to validate under ``paths`` (``-`` stays as is), in a stable order."""
    for p in paths:
        if str(p) == STDIN:
            yield STDIN
            continue
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.endswith(".binaries"))
                for name in sorted(files):
                    if name.endswith(".json"):
                        yield str(Path(root) / name)
        elif path.is_file():
            yield str(path)
        else:
            raise InputError(f"{p}: no such file or folder")


def validate_bytes(
    data: bytes,
    *,
    source: str,
    fhir_version: str = "auto",
    layers: Collection[Layer] = ALL_LAYERS,
    beside: Path | None = None,
    skip_non_fhir: bool = False,
    known_binaries: Collection[str] = (),
) -> FileResult:
    """Parse and validate one file's bytes (``layers``: see :func:`validate_resource`)."""
    obj, parsed = json_layer.parse(data, source)
    if obj is None:
        return FileResult(source, None, tuple(parsed.findings), len(data))
    if not isinstance(obj, dict) or "resourceType" not in obj:
        severity = Severity.INFORMATION if skip_non_fhir else Severity.ERROR
        message = "not a FHIR resource (no resourceType)" + (": skipped" if skip_non_fhir else "")
        finding = Finding(severity, source, "$", message, Layer.JSON.value)
        return FileResult(source, None, (finding,), len(data))
    release = detect_version(obj) if fhir_version == "auto" else fhir_version
    findings = validate_resource(
        obj,
        fhir_version=release,
        layers=layers,
        source=source,
        beside=beside,
        known_binaries=known_binaries,
    )
    return FileResult(source, release, tuple(findings), len(data))


def _one(args: tuple[str, str, frozenset[Layer], bool]) -> FileResult:
    file, fhir_version, layers, skip_non_fhir = args
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        finding = Finding(Severity.ERROR, file, "$", f"cannot read: {exc.strerror}", "json")
        return FileResult(file, None, (finding,), 0)
    return validate_bytes(
        data,
        source=file,
        fhir_version=fhir_version,
        layers=layers,
        beside=Path(file).parent,
        skip_non_fhir=skip_non_fhir,
        known_binaries=sibling_binaries(Path(file)),
    )


_PART_NAME = re.compile(r"^(?P<base>.+?)(?:\.part-\d+)?\.json$")
_BINARY_URL = re.compile(rb'"url":\s*"Binary/([A-Za-z0-9.\-]{1,64})"')


def sibling_binaries(file: Path) -> set[str]:
    """Ids of the Binaries in the other files of a split study (``<stem>.json`` and its
    ``<stem>.part-N.json``), read from their entries' ``request.url`` line by line, so that a
    link from one part to a Binary in another resolves."""
    match = _PART_NAME.match(file.name)
    if match is None:
        return set()
    base = match["base"]
    siblings = [file.parent / f"{base}.json", *sorted(file.parent.glob(f"{base}.part-*.json"))]
    found: set[str] = set()
    for sibling in siblings:
        if sibling == file or not sibling.is_file():
            continue
        with open(sibling, "rb") as fh:
            for line in fh:
                found.update(m.decode() for m in _BINARY_URL.findall(line))
    return found


def _warm(layers: frozenset[Layer]) -> None:
    """Load models and schemas in a worker before it takes files (keeps per-file time even)."""
    for release in ("r4", "r5"):
        schema_layer.schema_for(release)
        model_layer.model_class(release, "Bundle")
    if Layer.INVARIANT in layers:
        for release in ("r4", "r5"):
            invariant_layer.invariants_for(release)


def iter_validate(
    paths: Sequence[str | Path],
    *,
    fhir_version: str = "auto",
    layers: Collection[Layer] = ALL_LAYERS,
    jobs: int = 1,
    server: str | None = None,
    server_auth: httpx.Auth | None = None,
    server_tls: TlsSettings | None = None,
) -> Iterator[FileResult]:
    """Validate every file under ``paths`` with ``layers``; results come in input order.

    With ``server``, each FHIR file is also sent to ``[server]/[type]/$validate`` (raises
    :class:`fhirimg.errors.ServerUnreachableError` when it cannot be reached), with the
    credentials ``server_auth`` and the CA bundle and client certificate of ``server_tls``.
    """
    wanted = frozenset(layers)
    files = list(discover(paths))
    if not files:
        raise InputError("no JSON files found in " + ", ".join(str(p) for p in paths))
    explicit = {str(p) for p in paths}
    work = []
    for f in files:
        if f == STDIN:
            data = sys.stdin.buffer.read()
            result = validate_bytes(
                data, source="<stdin>", fhir_version=fhir_version, layers=wanted
            )
            if server is not None and result.release is not None:
                from fhirimg.validate.server import server_client, validate_on_server

                with server_client(server, auth=server_auth, tls=server_tls) as client:
                    extra = validate_on_server(
                        server, orjson.loads(data), file="<stdin>", client=client
                    )
                result = FileResult(
                    result.file, result.release, result.findings + tuple(extra), result.size
                )
            yield result
        else:
            work.append((f, fhir_version, wanted, f not in explicit))
    if jobs <= 1 or len(work) <= 1:
        results: Iterator[FileResult] = (_one(item) for item in work)
        yield from _with_server(results, server, server_auth, server_tls)
        return
    chunk = max(1, min(64, len(work) // (jobs * 4)))
    with ProcessPoolExecutor(max_workers=jobs, initializer=_warm, initargs=(wanted,)) as pool:
        yield from _with_server(
            pool.map(_one, work, chunksize=chunk), server, server_auth, server_tls
        )


def _with_server(
    results: Iterable[FileResult],
    server: str | None,
    auth: httpx.Auth | None = None,
    tls: TlsSettings | None = None,
) -> Iterator[FileResult]:
    """Add the ``$validate`` findings of ``server`` to each FHIR file's result (main process)."""
    if server is None:
        yield from results
        return
    from fhirimg.validate.server import server_client, validate_on_server

    with server_client(server, auth=auth, tls=tls) as client:
        for r in results:
            if r.release is None:
                yield r
                continue
            obj = orjson.loads(Path(r.file).read_bytes())
            extra = validate_on_server(server, obj, file=r.file, client=client)
            yield FileResult(r.file, r.release, r.findings + tuple(extra), r.size)


def validate_paths(
    paths: Sequence[str | Path],
    *,
    fhir_version: str = "auto",
    layers: Collection[Layer] = ALL_LAYERS,
    jobs: int = 1,
    server: str | None = None,
) -> list[Finding]:
    """Validate files, folders (``*.json``, recursively) and ``-`` (stdin); return all findings.

    Raises :class:`fhirimg.errors.InputError` when a path does not exist or nothing is found.
    """
    out: list[Finding] = []
    for result in iter_validate(
        paths, fhir_version=fhir_version, layers=layers, jobs=jobs, server=server
    ):
        out.extend(result.findings)
    return out


def default_jobs() -> int:
    """One worker per CPU the process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def findings_json(results: Iterable[FileResult]) -> bytes:
    """The ``--json`` document: every file, its release and its findings."""
    files = [
        {
            "file": r.file,
            "fhirVersion": r.release,
            "findings": [f.as_dict() for f in r.findings],
        }
        for r in results
    ]
    return orjson.dumps({"files": files}, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
