"""Finding what to push: the transaction Bundle files under the given paths, the part files of a
study ``convert`` split, and the Binary files beside each bundle.

A Binary travels beside its bundle as ``<bundle stem>.binaries/<id>.dcm``, pointed at by the
project's instance-binary extension on ``ImagingStudy.series.instance`` (see
``docs/binary-link-extension.md``).

A bundle is input, not trusted: an id taken from it becomes a file name here and a URL path on the
server, so it must be a FHIR id (:func:`check_id`, FHIR datatypes ``id``: ``[A-Za-z0-9-.]{1,64}``,
and not ``.`` or ``..``) before it is used, and the file it names must lie inside the
``.binaries/`` folder (:func:`beside_file`). ``Binary/../../x`` or ``Binary//etc/passwd`` fail the
bundle with the reason instead of reading a file elsewhere and uploading it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhirimg import jsonio
from fhirimg.errors import InputError
from fhirimg.push.journal import DEFAULT_JOURNAL_NAME
from fhirimg.safetext import clean
from fhirimg.validate.validator import detect_version

__all__ = [
    "BINARY_EXTENSION_URL",
    "DEFAULT_FOLDER",
    "BundleFile",
    "beside_file",
    "binaries_beside",
    "check_id",
    "is_fhir_id",
    "default_journal_path",
    "discover",
    "load_bundle",
    "transaction_problem",
]

DEFAULT_FOLDER = Path("fhirimg-out")
# The project's extension linking ImagingStudy.series.instance to its Binary (see the spec notes:
# no HL7/IHE/DICOM extension exists for it).
BINARY_EXTENSION_URL = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def is_fhir_id(value: object) -> bool:
    """Whether ``value`` is a FHIR id (datatypes ``id``) that is safe in a path and a URL: the
    regex, and not only dots (``.`` and ``..`` match it but walk folders and URL paths).

    >>> [is_fhir_id(v) for v in ("a-1.b", "..", "../x", "/etc/passwd", "x" * 65, 7)]
    [True, False, False, False, False, False]
    """
    return isinstance(value, str) and bool(_FHIR_ID.fullmatch(value)) and value.strip(".") != ""


def check_id(value: object, what: str) -> str:
    """``value`` when it is a FHIR id (:func:`is_fhir_id`), else :class:`InputError` naming
    ``what`` (``"Binary id"``) and the value (control characters removed)."""
    if not is_fhir_id(value):
        shown = clean(repr(value))[:80]
        raise InputError(f"{what} {shown} is not a FHIR id ([A-Za-z0-9-.], 1 to 64 characters)")
    return str(value)


def beside_file(folder: Path, binary_id: str) -> Path:
    """``<folder>/<binary_id>.dcm``, checked: the id is a FHIR id, the folder is not a symbolic
    link, and the file, links resolved, is inside the folder. Raises :class:`InputError`.

    >>> beside_file(Path("out/study-1.binaries"), "ab-1")
    PosixPath('out/study-1.binaries/ab-1.dcm')
    """
    check_id(binary_id, "Binary id")
    path = folder / f"{binary_id}.dcm"
    if folder.is_symlink():
        raise InputError(f"{folder.name} is a symbolic link: Binaries are read only from a folder")
    if path.exists() and path.resolve().parent != folder.resolve():
        raise InputError(f"{folder.name}/{path.name} leads outside {folder.name}/")
    return path


@dataclass(frozen=True)
class BundleFile:
    """A transaction Bundle file found by :func:`discover` and the Binary files beside it."""

    path: Path
    size: int
    binaries: tuple[tuple[str, Path], ...]
    binaries_size: int
    parts: tuple[Path, ...] = ()
    """The further files of a study convert split (``<stem>.part-N.json``), pushed with it."""
    problem: str | None = None
    """Why the bundle cannot be pushed (a crafted Binary id, ...): it fails with this reason."""
    release: str = "r4"
    """The FHIR release it is written in, ``r4`` or ``r5``, by its content
    (:mod:`fhirimg.push.capability`)."""


def binaries_beside(
    path: Path, bundle: Mapping[str, Any], elsewhere: Iterable[str] = ()
) -> list[tuple[str, Path]]:
    """The ``(binary id, file)`` pairs the bundle's instance-binary extensions point at.

    The files are ``<bundle stem>.binaries/<id>.dcm`` next to the bundle. Binaries carried inline
    as ``PUT Binary/<id>`` entries are not listed (they travel inside the transaction), nor those
    whose ids are in ``elsewhere`` (inline in the other part files of a split study).

    Raises :class:`InputError` for an id that is not a FHIR id or a file outside the folder
    (:func:`beside_file`).
    """
    folder = path.with_name(f"{path.stem}.binaries")
    entries = _objects(bundle.get("entry"))
    inline = {
        str(_object(e.get("request")).get("url", ""))
        for e in entries
        if _object(e.get("resource")).get("resourceType") == "Binary"
    } | {f"Binary/{i}" for i in elsewhere}
    found: dict[str, Path] = {}
    for entry in entries:
        resource = _object(entry.get("resource"))
        if resource.get("resourceType") != "ImagingStudy":
            continue
        for series in _objects(resource.get("series")):
            for instance in _objects(series.get("instance")):
                for ext in _objects(instance.get("extension")):
                    if ext.get("url") != BINARY_EXTENSION_URL:
                        continue
                    ref = str(_object(ext.get("valueReference")).get("reference", ""))
                    if not ref.startswith("Binary/") or ref in inline:
                        continue
                    binary_id = ref.removeprefix("Binary/")
                    if binary_id not in found:
                        found[binary_id] = beside_file(folder, binary_id)
    return list(found.items())


def _object(value: object) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one (input of the wrong shape reads as
    absent)."""
    return value if isinstance(value, dict) else {}


def _objects(value: object) -> list[Mapping[str, Any]]:
    """The JSON objects of ``value`` when it is an array (others left out), else none."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def load_bundle(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes of the file at ``path`` and the JSON object they hold.

    Raises :class:`OSError` when it cannot be read, :class:`ValueError` when it is not JSON
    (bytes that are not UTF-8 included), :class:`InputError` when the JSON is not an object.
    """
    data = path.read_bytes()
    bundle = jsonio.loads(data)
    if not isinstance(bundle, dict):
        raise InputError(f"{path.name}: the JSON is {_json_kind(bundle)}, not an object")
    return data, bundle


def _json_kind(value: object) -> str:
    """How a JSON value is named in a message: ``an array``, ``a number``, ...

    >>> [_json_kind(v) for v in ([], 5, "x", None, True)]
    ['an array', 'a number', 'a string', 'null', 'a boolean']
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an object"


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})


MAX_NESTING = 128
"""Deepest JSON nesting a bundle to push may have (validate's limit too; orjson writes 254 at
most, so a deeper bundle could be read but never sent)."""


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects more than ``limit`` levels (iterative: no
    recursion limit to hit).

    >>> _deeper_than({"a": [[1]]}, 3), _deeper_than({"a": [[1]]}, 2)
    (False, True)
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def transaction_problem(bundle: Mapping[str, Any]) -> str | None:
    """Why ``bundle`` cannot be pushed as a transaction, or None when its shape is pushable.

    Only the shape that push relies on is checked (FHIR R4/R5 bundle.html: ``entry`` 0..* of
    objects; ``entry.request`` 1..1 in a transaction, its ``method`` one of the http verbs and
    its ``url`` a string; ``entry.resource`` a resource; ``fullUrl``, ``ifNoneExist`` and
    ``ifMatch`` strings); the server judges the content. A bundle from a file is input: an
    ``"entry": 5`` or an entry that is ``null`` must become this reason, never a crash.

    >>> transaction_problem({"resourceType": "Bundle", "type": "transaction", "entry": 5})
    'Bundle.entry is a number, not an array'
    >>> transaction_problem({"resourceType": "Bundle", "type": "transaction", "entry": [None]})
    'Bundle.entry[0] is null, not an object'
    >>> transaction_problem({"resourceType": "Patient"})
    "resourceType is 'Patient', not Bundle"
    """
    if _deeper_than(bundle, MAX_NESTING):
        return f"JSON nested deeper than {MAX_NESTING} levels: no FHIR resource is"
    kind = bundle.get("resourceType")
    if kind != "Bundle":
        return f"resourceType is {clean(repr(kind))[:80]}, not Bundle"
    if bundle.get("type") not in ("transaction", "batch"):
        return f"Bundle of type {clean(repr(bundle.get('type')))[:80]}, not a transaction"
    entries = bundle.get("entry")
    if entries is None or entries == []:
        return "the Bundle has no entries: nothing to push"
    if not isinstance(entries, list):
        return f"Bundle.entry is {_json_kind(entries)}, not an array"
    for n, entry in enumerate(entries):
        where = f"Bundle.entry[{n}]"
        if not isinstance(entry, dict):
            return f"{where} is {_json_kind(entry)}, not an object"
        request = entry.get("request")
        if not isinstance(request, dict):
            return f"{where}.request is missing or not an object"
        method, url = request.get("method"), request.get("url")
        if not isinstance(method, str) or method.upper() not in _METHODS:
            return f"{where}.request.method {clean(repr(method))[:40]} is not an HTTP verb"
        if not isinstance(url, str) or not url:
            return f"{where}.request.url is missing or not a string"
        for key in ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince"):
            if key in request and not isinstance(request[key], str):
                return f"{where}.request.{key} is {_json_kind(request[key])}, not a string"
        if "fullUrl" in entry and not isinstance(entry["fullUrl"], str):
            return f"{where}.fullUrl is {_json_kind(entry['fullUrl'])}, not a string"
        resource = entry.get("resource")
        if resource is not None and not (
            isinstance(resource, dict) and isinstance(resource.get("resourceType"), str)
        ):
            return f"{where}.resource is not a FHIR resource (an object with a resourceType)"
    return None


def discover(paths: Sequence[Path]) -> tuple[list[BundleFile], list[tuple[str, str]]]:
    """The transaction Bundle files under ``paths`` (files, or folders searched one level deep,
    sorted by name), and the JSON files passed over with the reason.

    Every file is accounted for. A file that cannot be a bundle to push (not readable, not
    UTF-8, not JSON, a JSON array or scalar, a transaction Bundle of an odd shape:
    :func:`transaction_problem`) is returned with its ``problem``, so that push reports it as
    refused. A JSON object that is not a transaction Bundle at all (``report.json``, a
    Patient, a ``collection``) is passed over when found in a folder, but refused when named
    on its own: it was asked for.

    Raises :class:`InputError` when a path does not exist.
    """
    candidates: list[tuple[Path, bool]] = []
    for p in paths:
        if p.is_dir():
            candidates.extend(
                (c, False)
                for c in sorted(p.glob("*.json"))
                if c.is_file() and not c.name.startswith(".")
            )
        elif p.is_file():
            candidates.append((p, True))
        else:
            raise InputError(f"no such file or folder: {p}")
    files: list[BundleFile] = []
    ignored: list[tuple[str, str]] = []
    seen: set[Path] = set()
    heads = {p.name for p, _ in candidates}
    for path, named in candidates:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if _PART.search(path.name) and _PART.sub(".json", path.name) in heads:
            continue  # pushed together with its study's first file
        try:
            data, bundle = load_bundle(path)
        except (OSError, ValueError, InputError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            problem = f"not a readable JSON object: {clean(why)}"
            files.append(BundleFile(path, _size(path), (), 0, problem=problem))
            continue
        shape = transaction_problem(bundle)
        is_transaction = bundle.get("resourceType") == "Bundle" and bundle.get("type") in (
            "transaction",
            "batch",
        )
        if shape is not None and not is_transaction and not named:
            ignored.append((str(path), shape))
            continue
        if shape is not None:
            files.append(BundleFile(path, len(data), (), 0, problem=shape))
            continue
        parts = tuple(sorted(path.parent.glob(f"{path.stem}.part-*.json"), key=_part_number))
        in_parts = {i for part in parts for i in _inline_binary_ids(part)}
        try:
            binaries = tuple(binaries_beside(path, bundle, in_parts))
        except InputError as exc:
            files.append(BundleFile(path, len(data), (), 0, parts, problem=str(exc)))
            continue
        size = sum(p.stat().st_size for _, p in binaries if p.is_file())
        size += sum(p.stat().st_size for p in parts)
        release = detect_version(bundle)
        files.append(BundleFile(path, len(data), binaries, size, parts, release=release))
    return files, ignored


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


_PART = re.compile(r"\.part-\d+\.json$")
_BINARY_URL = re.compile(rb'"url":\s*"Binary/([A-Za-z0-9.\-]{1,64})"')


def _part_number(path: Path) -> int:
    match = re.search(r"\.part-(\d+)\.json$", path.name)
    return int(match.group(1)) if match else 1


def _inline_binary_ids(path: Path) -> set[str]:
    """Ids of the Binary entries of a bundle file, from their request lines (no full parse)."""
    with path.open("rb") as fh:
        return {m.decode() for line in fh for m in _BINARY_URL.findall(line)}


def default_journal_path(paths: Sequence[Path]) -> Path:
    """``<folder>/.fhirimg-push-journal.jsonl`` for the first path (a folder or a file)."""
    first = paths[0] if paths else DEFAULT_FOLDER
    folder = first if first.is_dir() else first.parent
    return folder / DEFAULT_JOURNAL_NAME
