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
    inline = {
        str((e.get("request") or {}).get("url", ""))
        for e in bundle.get("entry") or []
        if (e.get("resource") or {}).get("resourceType") == "Binary"
    } | {f"Binary/{i}" for i in elsewhere}
    found: dict[str, Path] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "ImagingStudy":
            continue
        for series in resource.get("series") or []:
            for instance in series.get("instance") or []:
                for ext in instance.get("extension") or []:
                    if ext.get("url") != BINARY_EXTENSION_URL:
                        continue
                    ref = str((ext.get("valueReference") or {}).get("reference", ""))
                    if not ref.startswith("Binary/") or ref in inline:
                        continue
                    binary_id = ref.removeprefix("Binary/")
                    if binary_id not in found:
                        found[binary_id] = beside_file(folder, binary_id)
    return list(found.items())


def load_bundle(path: Path) -> tuple[bytes, dict[str, Any]]:
    data = path.read_bytes()
    bundle = jsonio.loads(data)
    if not isinstance(bundle, dict):
        raise InputError(f"{path.name}: not a JSON object")
    return data, bundle


def discover(paths: Sequence[Path]) -> tuple[list[BundleFile], list[tuple[str, str]]]:
    """The transaction Bundle files under ``paths`` (files, or folders searched one level deep,
    sorted by name), and the JSON files passed over with the reason (``report.json``, other JSON).

    Raises :class:`InputError` when a path does not exist.
    """
    candidates: list[Path] = []
    for p in paths:
        if p.is_dir():
            candidates.extend(
                sorted(c for c in p.glob("*.json") if c.is_file() and not c.name.startswith("."))
            )
        elif p.is_file():
            candidates.append(p)
        else:
            raise InputError(f"no such file or folder: {p}")
    files: list[BundleFile] = []
    ignored: list[tuple[str, str]] = []
    seen: set[Path] = set()
    heads = {p.name for p in candidates}
    for path in candidates:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if _PART.search(path.name) and _PART.sub(".json", path.name) in heads:
            continue  # pushed together with its study's first file
        try:
            data, bundle = load_bundle(path)
        except (OSError, ValueError, InputError) as exc:
            ignored.append((str(path), f"not readable JSON: {exc}"))
            continue
        if bundle.get("resourceType") != "Bundle":
            ignored.append((str(path), "not a FHIR Bundle"))
            continue
        if bundle.get("type") not in ("transaction", "batch"):
            ignored.append((str(path), f"Bundle of type {bundle.get('type')!r}, not a transaction"))
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
        files.append(BundleFile(path, len(data), binaries, size, parts))
    return files, ignored


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
