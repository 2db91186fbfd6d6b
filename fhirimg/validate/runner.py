"""Validate files, folders and stdin, in parallel: what ``fhirimg validate`` calls.

Folders are searched for ``*.json`` and ``*.ndjson`` (one resource a line; recursively, without recursion, so any depth is safe),
skipping ``*.binaries/`` folders (the DICOM files stored beside a bundle) and not following
symlinked folders. A JSON file without ``resourceType`` (``report.json`` of a convert run) gives an
information finding, not an error. Files are spread over a process pool (``jobs``); each worker
loads schemas, models and compiled FHIRPath once and reuses them.

Every file gets a result, whatever it holds: only regular files are read (a FIFO, device or socket
named ``*.json`` is reported, never opened, so it cannot hang or flood the run), files larger than
:data:`MAX_FILE_BYTES` are reported unread, and a file the validator itself fails on gets the
finding "validator could not check this file: <reason>" while the run goes on. File names that are
not UTF-8 are shown with the odd bytes escaped (:func:`display_name`).
"""

from __future__ import annotations

import bisect
import os
import re
import stat
import sys
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from fhirimg.errors import ConfigError, InputError
from fhirimg.http.settings import TlsSettings
from fhirimg.validate import invariant_layer, json_layer, model_layer, schema_layer
from fhirimg.validate.findings import CANNOT_CHECK, Finding, Layer, Severity, cannot_check
from fhirimg.validate.validator import ALL_LAYERS, detect_version, run_layers

if TYPE_CHECKING:  # the workers never talk to a server: no HTTP import for them
    import httpx

    from fhirimg.http.fhir import FhirClient

STDIN = "-"

MAX_FILE_BYTES = 512 * 1024 * 1024
"""Files larger than this (512 MiB) are not read: a finding says so. Parsing and checking a file
takes a few times its size in memory in each worker; ``convert --max-bundle-mb`` splits studies
into smaller bundles."""

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")


@dataclass(frozen=True)
class FileResult:
    """The findings of one file, and the FHIR release it was checked against.

    ``file`` is the name to show (printable: see :func:`display_name`); ``path`` the name on disk
    (None for stdin); ``release`` is None when the file was not checked as a FHIR resource.
    """

    file: str
    release: str | None
    findings: tuple[Finding, ...]
    size: int
    path: str | None = None


def display_name(path: str) -> str:
    r"""``path`` as printable text: bytes that are not UTF-8 (which :func:`os.fsdecode` keeps as
    lone surrogates) become ``\xNN``, control characters their Python escape.

    >>> display_name(os.fsdecode(b"out/bad\xff.json"))
    'out/bad\\xff.json'
    >>> display_name("a\x1b[31m.json")
    'a\\x1b[31m.json'
    >>> display_name("étude.json")
    'étude.json'
    """
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte (not from the disk)
        raw = path.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class _Unreadable(Exception):
    """A file that is not read: not a regular file, too large, or an OS error."""

    def __init__(self, message: str, *, skipped: bool = False) -> None:
        super().__init__(message)
        self.skipped = skipped


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def read_regular(path: str, limit: int | None = None) -> bytes:
    """The bytes of ``path`` when it is a regular file (after following symlinks) of at most
    ``limit`` bytes (:data:`MAX_FILE_BYTES` by default); raises :class:`_Unreadable` (an
    ``Exception``) saying why not otherwise.

    The type is checked before opening (a FIFO is never opened, so it cannot block) and again on
    the open descriptor (no swap in between); at most ``limit + 1`` bytes are read.
    """
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Unreadable(f"{_kind(st.st_mode)}, not a regular file: skipped", skipped=True)
        if st.st_size > limit:
            raise _Unreadable(_too_large(st.st_size, limit))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _Unreadable(f"{_kind(st.st_mode)}, not a regular file: skipped", skipped=True)
            data = fh.read(limit + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise _Unreadable(_too_large(len(data), limit))
    return data


def _too_large(size: int, limit: int) -> str:
    most = f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit} bytes"
    return f"larger than the limit of {most} ({size} bytes or more): not read"


def discover(paths: Iterable[str | Path]) -> Iterator[str]:
    """Every file to validate under ``paths`` (``-`` stays as is), in a stable order."""
    for path, problem in _discover(paths):
        if problem is None:
            yield path


def _discover(paths: Iterable[str | Path]) -> Iterator[tuple[str, _Problem | None]]:
    """(file, None) for every file to validate under ``paths``, in a stable order, and
    (path, (severity, message)) for what the walk could not use."""
    for p in paths:
        name = os.fspath(p)
        if name == STDIN:
            yield STDIN, None
        elif os.path.isdir(name):
            yield from _walk(name)
        elif os.path.exists(name):  # a file, or a FIFO or device that _one reports
            yield name, None
        else:
            raise InputError(f"{display_name(name)}: no such file or folder")


def _walk(top: str) -> Iterator[tuple[str, _Problem | None]]:
    """``*.json`` under ``top`` in the order of :func:`os.walk` (a folder's files, then its
    subfolders by name), with a stack instead of recursion; symlinked folders are reported, not
    followed (no loops, no walking out of the tree)."""
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield folder, (Severity.ERROR, f"cannot read this folder: {exc.strerror or exc}")
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows a symlink
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            if is_dir and is_link:
                yield entry.path, (Severity.INFORMATION, "symlinked folder: not followed")
            elif is_dir:
                if not entry.name.endswith(".binaries"):
                    subfolders.append(entry.path)
            elif entry.name.endswith((".json", ".ndjson")):
                yield entry.path, None
        pending.extend(reversed(subfolders))


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
    """Parse and validate one file's bytes (``layers``: see :func:`validate_resource`).

    Total over its input: whatever the bytes hold, the answer is a result whose findings say what
    is wrong (a layer that fails on them becomes the finding "validator could not check this
    file: <reason>"). Only an unknown ``fhir_version`` raises (:class:`~fhirimg.errors.ConfigError`).

    >>> [f.message for f in validate_bytes(b'{"resourceType": ["Bundle"]}', source="x").findings]
    ['resourceType must be a JSON string, not an array']
    """
    try:
        return _validate_bytes(
            data,
            source=source,
            fhir_version=fhir_version,
            layers=layers,
            beside=beside,
            skip_non_fhir=skip_non_fhir,
            known_binaries=known_binaries,
        )
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the file's result, not the run's end
        return FileResult(source, None, (cannot_check(source, exc),), len(data))


def _validate_bytes(
    data: bytes,
    *,
    source: str,
    fhir_version: str,
    layers: Collection[Layer],
    beside: Path | None,
    skip_non_fhir: bool,
    known_binaries: Collection[str],
) -> FileResult:
    obj, parsed = json_layer.parse(data, source)
    if obj is None:
        return FileResult(source, None, tuple(parsed.findings), len(data))
    if not isinstance(obj, dict) or "resourceType" not in obj:
        severity = Severity.INFORMATION if skip_non_fhir else Severity.ERROR
        message = "not a FHIR resource (no resourceType)" + (": skipped" if skip_non_fhir else "")
        finding = Finding(severity, source, "$", message, Layer.JSON.value)
        return FileResult(source, None, (finding,), len(data))
    root = obj["resourceType"]
    if not isinstance(root, str):
        message = f"resourceType must be a JSON string, not {_json_type(root)}"
        finding = Finding(Severity.ERROR, source, "$.resourceType", message, Layer.JSON.value)
        return FileResult(source, None, (finding,), len(data))
    # Refused here, too, so that a file no layer checked is not sent to a --server either.
    deep = json_layer.too_deep(obj, root)
    if deep is not None:
        return FileResult(source, None, (json_layer.too_deep_finding(source, deep),), len(data))
    release = detect_version(obj) if fhir_version == "auto" else fhir_version
    findings = run_layers(  # the depth is checked: not walked for it twice
        obj,
        fhir_version=release,
        layers=layers,
        source=source,
        beside=beside,
        known_binaries=known_binaries,
    )
    return FileResult(source, release, tuple(findings), len(data))


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


_Problem = tuple[Severity, str]
_Task = tuple[str, str, frozenset[Layer], bool, _Problem | None]


def _one(task: _Task) -> FileResult:
    """Validate one file (in a worker): always a result, named with :func:`display_name`. A
    task with a problem (a folder the walk could not use) is answered with it, in its place."""
    file, fhir_version, layers, skip_non_fhir, problem = task
    if problem is not None:
        finding = Finding(problem[0], file, "$", problem[1], Layer.JSON.value)
        return _shown(FileResult(file, None, (finding,), 0, file))
    try:
        data = read_regular(file)
    except _Unreadable as exc:
        # Named on the command line, a file that cannot be checked is an error; found in a
        # folder, a FIFO or device is skipped with a warning (it is not a bundle anyone wrote).
        severity = Severity.WARNING if exc.skipped and skip_non_fhir else Severity.ERROR
        finding = Finding(severity, file, "$", str(exc), Layer.JSON.value)
        return _shown(FileResult(file, None, (finding,), 0, file))
    if file.endswith(".ndjson"):
        return _shown(replace(_ndjson(file, data, fhir_version, layers), path=file))
    try:
        known = sibling_binaries(Path(file))
    except Exception:  # noqa: BLE001 - a sibling part unreadable: its links are then unknown
        known = set()
    result = validate_bytes(
        data,
        source=file,
        fhir_version=fhir_version,
        layers=layers,
        beside=Path(file).parent,
        skip_non_fhir=skip_non_fhir,
        known_binaries=known,
    )
    return _shown(replace(result, path=file))


def _ndjson(file: str, data: bytes, fhir_version: str, layers: frozenset[Layer]) -> FileResult:
    """An NDJSON file (FHIR Bulk Data, ``convert --format ndjson``): every line validated as a
    resource of its own, its findings named ``<file>:<line>``. A link to ``Binary/<id>`` resolves
    when the Binary is a line of ``Binary.ndjson`` in the same folder (the set ``$import``
    loads together)."""
    known = ndjson_binaries(Path(file).parent)
    if fhir_version == "auto":
        # A file set is one release: a line says little of it (an R5 Observation without
        # bodyStructure reads as R4), the set's resource types say more.
        fhir_version = ndjson_release(Path(file).parent) or fhir_version
    findings: list[Finding] = []
    releases: set[str] = set()
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        result = validate_bytes(
            line,
            source=f"{file}:{number}",
            fhir_version=fhir_version,
            layers=layers,
            known_binaries=known,
        )
        findings.extend(result.findings)
        if result.release is not None:
            releases.add(result.release)
    release = releases.pop() if len(releases) == 1 else None
    return FileResult(file, release, tuple(findings), len(data))


def ndjson_release(folder: Path) -> str | None:
    """The release of the NDJSON set in ``folder`` when a file names a resource type of one
    release only (``ImagingSelection.ndjson``: R5; ``Media.ndjson``: R4), else None."""
    if (folder / "ImagingSelection.ndjson").is_file():
        return "r5"
    if (folder / "Media.ndjson").is_file():
        return "r4"
    return None


_NDJSON_BINARY = re.compile(
    rb'^\s*\{\s*"resourceType"\s*:\s*"Binary"\s*,\s*"id"\s*:\s*"([A-Za-z0-9.\-]{1,64})"'
)


def ndjson_binaries(folder: Path) -> set[str]:
    """Ids of the Binaries in ``folder/Binary.ndjson`` (``resourceType`` then ``id`` at the start
    of each line, as ``convert`` writes them); none when it cannot be read."""
    try:
        data = read_regular(str(folder / "Binary.ndjson"))
    except _Unreadable:
        return set()
    return {m[1].decode() for m in map(_NDJSON_BINARY.match, data.split(b"\n")) if m}


def _shown(result: FileResult) -> FileResult:
    """``result`` with its file name (and its findings') made printable."""
    shown = display_name(result.file)
    if shown == result.file:
        return result
    findings = tuple(replace(f, file=shown) for f in result.findings)
    return replace(result, file=shown, findings=findings)


_PART_NAME = re.compile(r"^(?P<base>.+?)(?:\.part-\d+)?\.json$")
_BINARY_URL = re.compile(rb'"url":\s*"Binary/([A-Za-z0-9.\-]{1,64})"')


def sibling_binaries(file: Path) -> set[str]:
    """Ids of the Binaries in the other files of a split study (``<stem>.json`` and its
    ``<stem>.part-N.json``), read from their entries' ``request.url`` line by line, so that a
    link from one part to a Binary in another resolves. Only regular files of at most
    :data:`MAX_FILE_BYTES` are read; one that cannot be read adds nothing."""
    match = _PART_NAME.match(file.name)
    if match is None:
        return set()
    base = match["base"]
    siblings = [file.parent / f"{base}.json", *_parts(file.parent, base)]
    found: set[str] = set()
    for sibling in siblings:
        if sibling == file:
            continue
        try:
            data = read_regular(str(sibling))
        except _Unreadable:
            continue
        found.update(m.decode() for m in _BINARY_URL.findall(data))
    return found


_LISTINGS: dict[str, tuple[int, list[str]]] = {}
"""Folder -> (its mtime in ns, its sorted file names): listed once per process, not once per
file (each file's look for its split siblings listed the whole folder: 0.7 ms a file at 200
bundles, O(n^2) for a folder of many; profile of ``validate``)."""


_SETTLED_NS = 2_000_000_000


def _parts(folder: Path, base: str) -> list[Path]:
    """``<base>.part-*.json`` in ``folder``, sorted (the name taken literally, not as a glob)."""
    key = os.fspath(folder)
    try:
        mtime = os.stat(key).st_mtime_ns
        cached = _LISTINGS.get(key)
        if cached is None or cached[0] != mtime:
            cached = (mtime, sorted(os.listdir(key)))
            # Kept only for a folder that has settled: its mtime ticks coarsely (a few ms), so
            # a file added within the same tick would not show as a change.
            if time.time_ns() - mtime > _SETTLED_NS:
                _LISTINGS[key] = cached
    except OSError:
        return []
    names = cached[1]
    prefix = f"{base}.part-"
    found = []
    for name in names[bisect.bisect_left(names, prefix) :]:
        if not name.startswith(prefix):
            break
        if name.endswith(".json") and len(name) >= len(prefix) + 5:
            found.append(folder / name)
    return found


def _warm(layers: frozenset[Layer], releases: tuple[str, ...] = ("r4", "r5")) -> None:
    """Load the models, schemas and compiled FHIRPath of ``releases`` (per-file time even)."""
    for release in releases:
        schema_layer.schema_for(release)
        model_layer.model_class(release, "Bundle")
    if Layer.INVARIANT in layers:
        for release in releases:
            invariant_layer.invariants_for(release)


def _likely_releases(work: list[_Task]) -> tuple[str, ...]:
    """The releases the files will most likely be checked as: the one asked for, or with
    ``auto`` R4 (what detection answers unless something is R5-only); another one met in a file
    is loaded when it is met."""
    versions = {version.lower() for _, version, *_ in work}
    return tuple(sorted({"r4" if v == "auto" else v for v in versions} & {"r4", "r5"})) or ("r4",)


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

    Every file found gets one result, a folder the walk could not read or did not follow one too;
    a file's content never stops the run. With ``server``, each FHIR file is also sent to
    ``[server]/[type]/$validate`` (raises :class:`fhirimg.errors.ServerUnreachableError` when it
    cannot be reached), with the credentials ``server_auth`` and the CA bundle and client
    certificate of ``server_tls``.
    """
    wanted = frozenset(layers)
    found = list(_discover(paths))
    if not found:
        raise InputError(
            "no JSON files found in " + ", ".join(display_name(os.fspath(p)) for p in paths)
        )
    explicit = {os.fspath(p) for p in paths}
    work: list[_Task] = []
    for f, problem in found:
        if f == STDIN and problem is None:
            yield _stdin(fhir_version, wanted, server, server_auth, server_tls)
        else:
            work.append((f, fhir_version, wanted, f not in explicit, problem))
    yield from _with_server(_results(work, jobs, wanted), server, server_auth, server_tls)


def _stdin(
    fhir_version: str,
    wanted: frozenset[Layer],
    server: str | None,
    auth: httpx.Auth | None,
    tls: TlsSettings | None,
) -> FileResult:
    limit = MAX_FILE_BYTES
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        message = _too_large(len(data), limit)
        finding = Finding(Severity.ERROR, "<stdin>", "$", message, Layer.JSON.value)
        return FileResult("<stdin>", None, (finding,), len(data))
    result = validate_bytes(data, source="<stdin>", fhir_version=fhir_version, layers=wanted)
    if server is not None and result.release is not None:
        from fhirimg.validate.server import server_client

        with server_client(server, auth=auth, tls=tls) as client:
            result = _server_result(result, data, server, client)
    return result


def _results(work: list[_Task], jobs: int, wanted: frozenset[Layer]) -> Iterator[FileResult]:
    """One result per item of ``work``, in order; in a process pool when ``jobs`` > 1. A worker
    that dies (killed for its memory, say) costs the files not yet answered a finding each."""
    if jobs <= 1 or len(work) <= 1:
        yield from (_one(item) for item in work)
        return
    # A few files a task: with 200 files in chunks of 25, one process was left with a whole
    # chunk (0.3 s) after the other had finished.
    chunk = max(1, min(64, len(work) // (jobs * 16)))
    done = 0
    # Loaded here, before the workers are forked, they start with it (profile of validate on 200
    # bundles: each worker spent about a second loading both releases' models, schemas and
    # FHIRPath, more than a hundred bundles cost it). Where workers are not forked, the
    # initializer loads the same.
    releases = _likely_releases(work)
    _warm(wanted, releases)
    if _small_file(work[0]):
        # The first file checked here, before the fork, too: the models of the resources and
        # datatypes it holds (imported by fhir.resources on first use) and the FHIRPath it needs
        # are then loaded once, not once per worker (~0.15 s each; profile of validate).
        yield _one(work[0])
        done = 1
    try:
        with ProcessPoolExecutor(
            max_workers=jobs, initializer=_warm, initargs=(wanted, releases)
        ) as pool:
            for result in pool.map(_one, work[done:], chunksize=chunk):
                done += 1
                yield result
    except BrokenProcessPool as exc:
        message = f"{CANNOT_CHECK}: a validator process ended abruptly ({exc})"
        for file, *_ in work[done:]:
            finding = Finding(Severity.ERROR, file, "$", message, Layer.JSON.value)
            yield _shown(FileResult(file, None, (finding,), 0, file))


WARM_BYTES = 4 * 1024 * 1024
"""A first file up to this size is checked in the main process before the workers start."""


def _small_file(task: _Task) -> bool:
    file, *_, problem = task
    if problem is not None or file.endswith(".ndjson"):
        return False
    try:
        st = os.stat(file)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= WARM_BYTES


def _server_result(result: FileResult, data: bytes, server: str, client: FhirClient) -> FileResult:
    """``result`` with the ``$validate`` findings of ``server`` added (``data``: the file)."""
    from fhirimg.validate.server import validate_on_server

    obj = orjson.loads(data)
    rtype = obj.get("resourceType") if isinstance(obj, dict) else None
    if not isinstance(rtype, str) or not _TYPE_NAME.match(rtype):
        note = Finding(
            Severity.INFORMATION,
            result.file,
            "$",
            "not sent to the server: the resourceType is not a resource type name",
            Layer.SERVER.value,
        )
        return replace(result, findings=(*result.findings, note))
    extra = validate_on_server(server, obj, file=result.file, client=client)
    return replace(result, findings=result.findings + tuple(extra))


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
    from fhirimg.validate.server import server_client

    with server_client(server, auth=auth, tls=tls) as client:
        for r in results:
            if r.release is None or r.path is None:
                yield r
                continue
            try:
                data = read_regular(r.path)
                yield _server_result(r, data, server, client)
            except (_Unreadable, orjson.JSONDecodeError) as exc:  # changed since it was checked
                message = f"not sent to the server: {exc}"
                finding = Finding(Severity.ERROR, r.file, "$", message, Layer.SERVER.value)
                yield replace(r, findings=(*r.findings, finding))


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
