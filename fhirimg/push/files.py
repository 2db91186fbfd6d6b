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

import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from fhirimg import jsonio
from fhirimg.errors import InputError
from fhirimg.fhir.detect import detect_version
from fhirimg.push.journal import DEFAULT_JOURNAL_NAME
from fhirimg.safetext import clean

__all__ = [
    "BINARY_EXTENSION_URL",
    "DEFAULT_FOLDER",
    "BundleFile",
    "Candidate",
    "Ignored",
    "Listing",
    "beside_file",
    "binaries_beside",
    "check_id",
    "is_fhir_id",
    "default_journal_path",
    "discover",
    "iter_discover",
    "list_inputs",
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
    """A transaction Bundle file found by :func:`iter_discover` and the Binary files beside it."""

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
    data: bytes | None = field(default=None, repr=False, compare=False)
    """The file's bytes as :func:`iter_discover` read them (None from :func:`discover`)."""
    bundle: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    """The bundle parsed from :attr:`data`, handed to the push so that it is parsed once."""

    def unloaded(self) -> BundleFile:
        """This file without its bytes and parsed bundle (what a list of many keeps)."""
        return replace(self, data=None, bundle=None)


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

    The common answer, no, comes from orjson in C: ``value`` wrapped in arrays so that it
    reaches orjson's own nesting limit exactly when it is ``limit`` deep serialises only when
    it is not deeper (20 us for a bundle of 100 instances, against 1.6 ms for the walk below,
    which was the largest client CPU cost of a push, issue 19). When that fails (deeper, or
    anything orjson does not write), the walk decides.

    >>> _deeper_than({"a": [[1]]}, 3), _deeper_than({"a": [[1]]}, 2)
    (False, True)
    >>> _deeper_than([[[[]]]] , 3), _deeper_than({"a": {"b": {"c": {}}}}, 3)
    (True, True)
    """
    wrappers = _orjson_depth() - limit
    if wrappers >= 0:
        wrapped = value
        for _ in range(wrappers):
            wrapped = [wrapped]
        try:
            orjson.dumps(wrapped)
        except TypeError:  # orjson.JSONEncodeError is one: too deep, or not JSON
            pass
        else:
            return False
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


@functools.cache
def _orjson_depth() -> int:
    """The deepest nesting of arrays orjson writes (254 in orjson 3), found by trying; 0 when it
    is not found (the walk then always decides)."""
    nested: list[Any] = []
    for depth in range(1, 1025):
        try:
            orjson.dumps(nested)
        except TypeError:
            return depth - 1
        nested = [nested]
    return 0


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


# --------------------------------------------------------------------------- discovery
#
# Discovery streams (issue 19): each folder is listed once (names, sizes and the part files of
# split studies all come from that one listing, and so do the progress totals), then each file
# is classified and handed on as soon as it is read, so the first bundle is pushed while the
# rest are still unread. A bundle is parsed once, here, and goes to the push with its bytes.
# What is plainly no transaction Bundle (report.json, a Patient, a searchset) is recognised from
# its first bytes, without reading or parsing the rest.

HEAD_BYTES = 4096
"""How much of a JSON file is read to recognise what it is without parsing it all."""

REPORT_NAME = "report.json"
"""convert's report (``fhirimg.convert.REPORT_NAME``; push imports no driver module)."""

_PART = re.compile(r"^(?P<stem>.+)\.part-(?P<n>\d+)\.json$")
_BINARY_URL = re.compile(rb'"url":\s*"Binary/([A-Za-z0-9.\-]{1,64})"')


class Ignored(NamedTuple):
    """A JSON file :func:`iter_discover` passed over, and why (``report.json``, a Patient)."""

    file: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """A JSON file :func:`list_inputs` found, with what its folder's listing tells of it."""

    path: Path
    size: int
    named: bool
    """Given on its own (not found in a folder): refused, not passed over, when no bundle."""
    parts: tuple[Path, ...] = ()
    parts_size: int = 0
    binaries_size: int = 0
    """Bytes of the files in its ``<stem>.binaries/`` folder (the progress estimate)."""


@dataclass(frozen=True)
class Listing:
    """What :func:`list_inputs` found: the JSON files to classify, in push order, and the
    progress totals from their sizes (nothing read yet)."""

    candidates: tuple[Candidate, ...]
    bundles: int
    """Files that may be bundles (``report.json`` in a folder not counted)."""
    total_bytes: int
    """Their sizes, their part files' and those of the files in their ``.binaries/`` folders."""


def list_inputs(paths: Sequence[Path]) -> Listing:
    """The JSON files under ``paths``, each folder listed once (``os.scandir``; a file given on
    its own is looked up in its folder's listing).

    Folders are searched one level deep, their ``*.json`` files sorted by name, hidden ones left
    out; a ``<stem>.part-N.json`` goes with its ``<stem>.json`` when both are in one folder, in
    the order of N. The same file given twice (a folder and a file in it, a symbolic link to it)
    is listed once. Raises :class:`InputError` when a path does not exist.
    """
    listings: dict[Path, dict[str, os.DirEntry[str]]] = {}

    def listing(folder: Path) -> dict[str, os.DirEntry[str]]:
        if folder not in listings:
            try:
                with os.scandir(folder) as it:
                    listings[folder] = {e.name: e for e in it}
            except OSError as exc:
                raise InputError(f"cannot list {folder}: {clean(exc.strerror or exc)}") from None
        return listings[folder]

    chosen: list[tuple[Path, os.DirEntry[str], bool]] = []
    for p in paths:
        if p.is_dir():
            found = listing(p)
            names = sorted(n for n in found if n.endswith(".json") and not n.startswith("."))
            chosen.extend((p, found[n], False) for n in names if _is_file(found[n]))
        elif p.is_file():
            entry = listing(p.parent).get(p.name)
            if entry is None:  # pragma: no cover - removed between is_file and the listing
                raise InputError(f"no such file or folder: {p}")
            chosen.append((p.parent, entry, True))
        else:
            raise InputError(f"no such file or folder: {p}")
    heads = {(folder, entry.name) for folder, entry, _ in chosen}
    parts_of = {folder: _parts(found) for folder, found in listings.items()}
    candidates: list[Candidate] = []
    seen: set[str] = set()
    bundles = total = 0
    for folder, entry, named in chosen:
        real = os.path.realpath(entry.path)  # links resolved; a hard link is a file of its own
        if real in seen:
            continue
        seen.add(real)
        stat = _stat(entry)
        match = _PART.match(entry.name)
        if match and (folder, f"{match['stem']}.json") in heads:
            continue  # pushed together with its study's first file
        stem = entry.name.removesuffix(".json")
        parts = parts_of[folder].get(stem, [])
        binaries = listings[folder].get(f"{stem}.binaries")
        c = Candidate(
            folder / entry.name,
            stat.st_size if stat is not None else 0,
            named,
            tuple(folder / e.name for e in parts),
            sum(s.st_size for s in map(_stat, parts) if s is not None),
            _folder_size(binaries) if binaries is not None else 0,
        )
        candidates.append(c)
        if named or entry.name != REPORT_NAME:
            bundles += 1
            total += c.size + c.parts_size + c.binaries_size
    return Listing(tuple(candidates), bundles, total)


def _parts(found: Mapping[str, os.DirEntry[str]]) -> dict[str, list[os.DirEntry[str]]]:
    """The ``<stem>.part-N.json`` files of a folder listing by stem, each list in the order of N
    (one pass over the listing, whatever the number of studies)."""
    numbered: dict[str, list[tuple[int, str, os.DirEntry[str]]]] = {}
    for name, entry in found.items():
        match = _PART.match(name)
        if match and _is_file(entry):
            numbered.setdefault(match["stem"], []).append((int(match["n"]), name, entry))
    return {
        stem: [entry for _, _, entry in sorted(items, key=lambda item: item[:2])]
        for stem, items in numbered.items()
    }


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat()
    except OSError:
        return None


def _folder_size(entry: os.DirEntry[str]) -> int:
    """Bytes of the files in a ``<stem>.binaries/`` folder (not followed if it is a link)."""
    try:
        if not entry.is_dir(follow_symlinks=False):
            return 0
        with os.scandir(entry.path) as it:
            return sum(e.stat().st_size for e in it if e.is_file(follow_symlinks=False))
    except OSError:
        return 0


def iter_discover(paths: Sequence[Path] | Listing) -> Iterator[BundleFile | Ignored]:
    """Each JSON file under ``paths`` (or of a :func:`list_inputs` listing), in push order, as
    soon as it is read: a :class:`BundleFile` carrying its bytes and its parsed bundle
    (:attr:`BundleFile.data`, :attr:`BundleFile.bundle`) or the problem that keeps it from being
    pushed, or an :class:`Ignored` with the reason. The rules are :func:`discover`'s.

    A transaction Bundle is parsed once; ``report.json`` and JSON that is plainly no transaction
    Bundle are recognised from their first :data:`HEAD_BYTES` bytes. Raises :class:`InputError`
    (at the first ``next``) when a path does not exist.
    """
    listing = paths if isinstance(paths, Listing) else list_inputs(paths)
    for candidate in listing.candidates:
        yield _classify(candidate)


def _classify(c: Candidate) -> BundleFile | Ignored:
    path = c.path
    try:
        with path.open("rb") as fh:
            head = fh.read(HEAD_BYTES)
            why = _not_a_transaction(path.name, head)
            if why is not None:
                if c.named:  # it was asked for: refused, with the reason
                    return BundleFile(path, c.size, (), 0, problem=why)
                return Ignored(str(path), why)
            data = head + fh.read() if len(head) == HEAD_BYTES else head
        bundle = jsonio.loads(data)
        if not isinstance(bundle, dict):
            raise InputError(f"{path.name}: the JSON is {_json_kind(bundle)}, not an object")
    except (OSError, ValueError, InputError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        problem = f"not a readable JSON object: {clean(why)}"
        return BundleFile(path, c.size, (), 0, problem=problem)
    shape = transaction_problem(bundle)
    if shape is not None:
        is_transaction = bundle.get("resourceType") == "Bundle" and bundle.get("type") in (
            "transaction",
            "batch",
        )
        if not is_transaction and not c.named:
            return Ignored(str(path), shape)
        return BundleFile(path, len(data), (), 0, problem=shape)
    in_parts = {i for part in c.parts for i in _inline_binary_ids(part)}
    try:
        binaries = tuple(binaries_beside(path, bundle, in_parts)) if _may_link(data) else ()
    except InputError as exc:
        return BundleFile(path, len(data), (), 0, c.parts, problem=str(exc))
    size = sum(p.stat().st_size for _, p in binaries if p.is_file()) + c.parts_size
    release = detect_version(bundle)
    return BundleFile(
        path, len(data), binaries, size, c.parts, release=release, data=data, bundle=bundle
    )


def _may_link(data: bytes) -> bool:
    """Whether a bundle's JSON bytes may hold an instance-binary extension
    (:data:`BINARY_EXTENSION_URL`): only then is its ImagingStudy walked for them
    (:func:`binaries_beside`, a third of discovery's time for a study of 100 instances, issue
    19). The url's last segment is letters and a hyphen, which JSON can write only as they are
    or as ``\\u`` escapes, so a file with neither holds no such extension.

    >>> _may_link(b'{"url": "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"}')
    True
    >>> _may_link(b'{"url": "https://fhirimg.dev/fhir/StructureDefinition/\\u0069nstance-binary"}')
    True
    >>> _may_link(b'{"resourceType": "Bundle", "type": "transaction", "entry": []}')
    False
    """
    return b"instance-binary" in data or b"\\u" in data


def _not_a_transaction(name: str, head: bytes) -> str | None:
    """Why a JSON file whose first bytes are ``head`` is plainly no transaction Bundle (the
    reason :func:`transaction_problem` would give), or None when only parsing it all tells.

    >>> _not_a_transaction("p.json", b'{"resourceType": "Patient", "id": "1"}')
    "resourceType is 'Patient', not Bundle"
    >>> _not_a_transaction("b.json", b'{"resourceType":"Bundle","type":"searchset","entry":[')
    "Bundle of type 'searchset', not a transaction"
    >>> _not_a_transaction("report.json", b'{"fhirVersion":"4.0.1","summary":{"files":2')
    "fhirimg convert's report, not a FHIR Bundle"
    >>> _not_a_transaction("b.json", b'{"entry":[{"resource":{"resourceType":"Patient"') is None
    True
    """
    members = _head_members(head)
    kind = members.get("resourceType")
    if isinstance(kind, str):
        if kind != "Bundle":
            return f"resourceType is {clean(repr(kind))[:80]}, not Bundle"
        bundle_type = members.get("type")
        if isinstance(bundle_type, str) and bundle_type not in ("transaction", "batch"):
            return f"Bundle of type {clean(repr(bundle_type))[:80]}, not a transaction"
        return None
    if name == REPORT_NAME and "resourceType" not in members and "summary" in members:
        return "fhirimg convert's report, not a FHIR Bundle"
    return None


_TOKEN = re.compile(rb'\s*(?:("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))')


def _head_members(head: bytes) -> dict[str, str | None]:
    """The members of the top-level JSON object that ``head`` (a file's first bytes) holds
    whole: string values as strings, any other value as None (skipped, not read).

    Tokens are read from the start; reading stops at the first that is cut off or out of place,
    so nothing inside a string or a nested value is ever taken for a top-level member. Once
    ``resourceType`` and ``type`` are known, the rest is not looked at.

    >>> _head_members(b'{"a": {"resourceType": "x"}, "resourceType": "Bundle", "type": "tr')
    {'a': None, 'resourceType': 'Bundle'}
    >>> _head_members(b'[{"resourceType": "Patient"}]')
    {}
    """
    members: dict[str, str | None] = {}
    pos, depth, key, expect_value = 0, 0, None, False
    while True:
        match = _TOKEN.match(head, pos)
        if match is None or match.end() == pos:
            return members
        pos = match.end()
        string, punct = match.group(1), match.group(2)
        if depth == 0:
            if punct != b"{":
                return members
            depth = 1
        elif punct in (b"{", b"["):
            if depth == 1:
                if not expect_value or key is None:
                    return members  # an object or array where a member name belongs
                members[key] = None
                key, expect_value = None, False
            depth += 1
        elif punct in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                return members
        elif depth > 1:
            continue
        elif punct == b":":
            if key is None or expect_value:
                return members
            expect_value = True
        elif punct == b",":
            key, expect_value = None, False
        elif expect_value and key is not None:
            if pos == len(head) and string is None:
                return members  # a number or literal may go on past the head
            members[key] = _string(string) if string is not None else None
            key, expect_value = None, False
            if "type" in members and "resourceType" in members:
                return members  # all that decides (fhirimg writes these two first)
        elif string is not None and key is None:
            key = _string(string)
            if key is None:
                return members
        else:
            return members


def _string(token: bytes) -> str | None:
    """The text of a JSON string token (quotes included), or None when it is not valid."""
    if b"\\" not in token:
        try:
            return token[1:-1].decode()
        except UnicodeDecodeError:
            return None
    try:
        value = jsonio.loads(token)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def discover(paths: Sequence[Path]) -> tuple[list[BundleFile], list[tuple[str, str]]]:
    """The transaction Bundle files under ``paths`` (files, or folders searched one level deep,
    sorted by name), and the JSON files passed over with the reason; :func:`iter_discover` all
    at once, the files without their bytes (memory does not grow with the folder).

    Every file is accounted for. A file that cannot be a bundle to push (not readable, not
    UTF-8, not JSON, a JSON array or scalar, a transaction Bundle of an odd shape:
    :func:`transaction_problem`) is returned with its ``problem``, so that push reports it as
    refused. A JSON object that is not a transaction Bundle at all (``report.json``, a
    Patient, a ``collection``) is passed over when found in a folder, but refused when named
    on its own: it was asked for.

    Raises :class:`InputError` when a path does not exist.
    """
    files: list[BundleFile] = []
    ignored: list[tuple[str, str]] = []
    for found in iter_discover(paths):
        if isinstance(found, Ignored):
            ignored.append((found.file, found.reason))
        else:
            files.append(found.unloaded())
    return files, ignored


def _inline_binary_ids(path: Path) -> set[str]:
    """Ids of the Binary entries of a bundle file, from their request lines (no full parse)."""
    try:
        with path.open("rb") as fh:
            return {m.decode() for line in fh for m in _BINARY_URL.findall(line)}
    except OSError:
        return set()  # an unreadable part fails its study when it is pushed


def default_journal_path(paths: Sequence[Path]) -> Path:
    """``<folder>/.fhirimg-push-journal.jsonl`` for the first path (a folder or a file)."""
    first = paths[0] if paths else DEFAULT_FOLDER
    folder = first if first.is_dir() else first.parent
    return folder / DEFAULT_JOURNAL_NAME
