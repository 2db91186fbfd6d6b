"""One study's records become one FHIR transaction Bundle (Patient, Endpoint, ImagingStudy).

:class:`SplitWriter` streams bundles with Binary and rendered-image entries to disk, entry by entry,
splitting them into parts at ``--max-entries`` / ``--max-bundle-mb``.

Entries carry ``urn:uuid:`` fullUrls derived from DICOM UIDs and idempotent requests
(``fhir-imaging-spec.md``, Transaction Bundles): Patient ``POST`` + ``ifNoneExist`` on its
identifier, Endpoint likewise, ImagingStudy conditional ``PUT`` on the Study Instance UID.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from fhirimg import ids, jsonio
from fhirimg.fhir import Release
from fhirimg.jsonio import JSON
from fhirimg.mapping import MapOptions, Notes, endpoint, imaging_study, patient, sort_records
from fhirimg.measurements import measurement_entries
from fhirimg.model import InstanceRecord


def entry(full_url: str, resource: JSON, request: JSON) -> JSON:
    """A transaction entry in FHIR's element order: fullUrl, resource, request."""
    return {"fullUrl": full_url, "resource": resource, "request": request}


def patient_key(records: Sequence[InstanceRecord], resource: JSON) -> tuple[str, ...]:
    """What identifies the patient for its deterministic fullUrl (and id, when it has to be
    PUT): the identifier with its system; without a system, the value within its local issuer
    (0010,0021); without an ID, the study (such a patient cannot be matched across studies)."""
    for ident in resource.get("identifier", ()):
        if "system" in ident:
            return ("Patient", ident["system"], ident["value"])
        assigner = ident.get("assigner", {}).get("display", "")
        return ("Patient", "", assigner, ident["value"])
    return ("Patient", "study", records[0].study_instance_uid)


def study_bundle(
    records: Sequence[InstanceRecord],
    options: MapOptions,
    release: Release,
    instance_extensions: Mapping[str, list[JSON]] | None = None,
) -> tuple[JSON, Notes]:
    """The transaction Bundle for the records of one study (any order; they are sorted here).

    ``instance_extensions`` (by SOP Instance UID) go on ``ImagingStudy.series.instance``: the
    Binary links of :mod:`fhirimg.images.binary`.
    """
    notes = Notes()
    recs = sort_records(records)
    study_uid = recs[0].study_instance_uid

    pat, pat_request = patient(recs, options, notes)
    key = patient_key(recs, pat)
    pat_url = ids.full_url(*key)
    if "ifNoneExist" not in pat_request:
        # No Patient ID or no identifier system: a deterministic id and PUT keep re-pushes from
        # creating duplicates without matching anybody else's patient.
        pat_id = ids.resource_uuid(*key)
        pat = {
            "resourceType": "Patient",
            "id": pat_id,
            **{k: v for k, v in pat.items() if k != "resourceType"},
        }
        pat_request = {"method": "PUT", "url": f"Patient/{pat_id}"}
        if "identifier" not in pat:
            notes.add("no Patient ID (0010,0020): Patient gets a deterministic id from the study")
    entries = [entry(pat_url, pat, pat_request)]

    endpoint_url = None
    if options.dicomweb_url:
        ep, ep_request = endpoint(options.dicomweb_url, release)
        endpoint_url = ids.full_url("Endpoint", ep["address"])
        entries.append(entry(endpoint_url, ep, ep_request))

    study, study_request = imaging_study(
        recs, pat_url, endpoint_url, release, options, notes, instance_extensions
    )
    study_url = ids.full_url("ImagingStudy", study_uid)
    entries.append(entry(study_url, study, study_request))
    # After the study: SR measurements and dose as Observations (issue 20).
    entries += measurement_entries(recs, pat_url, study_url, release, options, notes)
    if options.pseudonymised:
        from fhirimg.deid.labels import labelled

        for item in entries:
            if item["resource"]["resourceType"] != "Endpoint":  # no patient data in it
                item["resource"] = labelled(item["resource"])
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, notes


# --------------------------------------------------------------------------- streaming writer
# A bundle with Binaries can be gigabytes: it is written entry by entry, and an entry's base64 data
# is streamed from the source file in chunks, so memory follows a chunk, not an instance or a
# study. The bytes are exactly those of ``jsonio.dumps(bundle)`` for the same bundle.

_HEAD = b'{\n  "resourceType": "Bundle",\n  "type": "transaction",\n  "entry": [\n'
_SEP = b",\n"
_TAIL = b"\n  ]\n}\n"
_INDENT = b"    "  # entries sit two levels deep (Bundle.entry[i])
DATA_PLACEHOLDER = "@@fhirimg-streamed-data@@"


class DataSource(Protocol):
    """Bytes streamed into an entry as base64 (``Binary.data``)."""

    @property
    def length(self) -> int:
        """Number of raw bytes."""
        ...

    def chunks(self) -> Iterator[bytes]:
        """The raw bytes, in pieces."""
        ...


@dataclass(frozen=True)
class EncodedEntry:
    """A serialised entry: ``head`` + base64 of ``source`` (if any) + ``tail``."""

    head: bytes
    source: DataSource | None = None
    tail: bytes = b""

    @property
    def size(self) -> int:
        b64 = (self.source.length + 2) // 3 * 4 if self.source is not None else 0
        return len(self.head) + b64 + len(self.tail)

    def write_to(self, fh: BinaryIO) -> None:
        for piece in self.pieces():
            fh.write(piece)

    def write_at(self, fd: int, offset: int) -> int:
        """Write the entry into the open file ``fd`` at ``offset`` (``os.pwrite``: processes
        writing their entries of one file side by side, :mod:`fhirimg.images.inline`); returns
        the offset after it."""
        for piece in self.pieces():
            view = memoryview(piece)
            while view:
                done = os.pwrite(fd, view, offset)
                view, offset = view[done:], offset + done
        return offset

    def pieces(self) -> Iterator[bytes]:
        """The entry's bytes in pieces: the head, the base64 of the source, the tail."""
        yield self.head
        if self.source is not None:
            # base64 in C, a whole chunk at a time: only the 0-2 bytes that end a chunk off a
            # multiple of 3 are carried into the next, so no chunk is copied to be joined or cut
            # (profiled: joining and slicing copied each file twice more than the floor does).
            pending = b""
            written = 0
            for data in self.source.chunks():
                chunk = pending + data if pending else data
                cut = len(chunk) - len(chunk) % 3
                view = memoryview(chunk)
                yield binascii.b2a_base64(view[:cut], newline=False)
                pending = bytes(view[cut:])
                written += cut
            yield binascii.b2a_base64(pending, newline=False)
            written += len(pending)
            if written != self.source.length:
                raise OSError(f"source changed while reading: {written} != {self.source.length}")
        yield self.tail


def encode_entry(item: JSON, source: DataSource | None = None) -> EncodedEntry:
    """Serialise one entry as it appears inside the bundle file (indented, no separator).

    With ``source``, the resource's ``data`` must be :data:`DATA_PLACEHOLDER`; the base64 of the
    source's bytes is streamed in its place when the entry is written.

    >>> e = encode_entry({"fullUrl": "urn:uuid:x"})
    >>> e.head
    b'    {\\n      "fullUrl": "urn:uuid:x"\\n    }'
    """
    text = _INDENT + jsonio.dumps(item).rstrip(b"\n").replace(b"\n", b"\n" + _INDENT)
    if source is None:
        return EncodedEntry(text)
    head, marker, tail = text.partition(DATA_PLACEHOLDER.encode())
    if not marker:
        # A caller's bug (the builder forgot the placeholder), not bad input or a bad option.
        raise ValueError("an entry with a data source needs the data placeholder")
    return EncodedEntry(head, source, tail)


def offsets_after(head: Sequence[EncodedEntry], entries: Sequence[EncodedEntry]) -> list[int]:
    """Where each of ``entries`` starts in a bundle file that begins with the ``head`` entries
    (:class:`SplitWriter`'s layout: each entry after a separator).

    >>> offsets_after([EncodedEntry(b"h")], [EncodedEntry(b"ab"), EncodedEntry(b"c")])
    [71, 75]
    """
    offset = len(_HEAD) + sum(len(e.head) for e in head) + len(_SEP) * (len(head) - 1)
    offsets = []
    for item in entries:
        offset += len(_SEP)
        offsets.append(offset)
        offset += item.size
    return offsets


class _Part:
    """One bundle file being written (to a temporary file until :meth:`SplitWriter.commit`)."""

    def __init__(self, path: Path, mode: jsonio.Modes = jsonio.PRIVATE) -> None:
        self.path = path
        self.fh: BinaryIO
        self.fh, self.tmp = jsonio.open_temp(path, mode)
        self.fh.write(_HEAD)
        self.size = len(_HEAD) + len(_TAIL)
        self.entries = 0

    def add(self, entry: EncodedEntry) -> None:
        if self.entries:
            self.fh.write(_SEP)
            self.size += len(_SEP)
        entry.write_to(self.fh)
        self.size += entry.size
        self.entries += 1

    def reserve(self, entries: Sequence[EncodedEntry]) -> list[int]:
        """Room for ``entries`` after those added: their separators are written, the entries
        left to others (:meth:`EncodedEntry.write_at`) at the offsets returned; this file goes
        on after them."""
        self.fh.flush()
        offset = self.fh.tell()
        offsets = []
        for item in entries:
            if self.entries:
                os.pwrite(self.fh.fileno(), _SEP, offset)
                offset += len(_SEP)
                self.size += len(_SEP)
            offsets.append(offset)
            offset += item.size
            self.size += item.size
            self.entries += 1
        self.fh.seek(offset)
        return offsets

    def size_with(self, entry: EncodedEntry) -> int:
        return self.size + entry.size + (len(_SEP) if self.entries else 0)

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.write(_TAIL)
            self.fh.close()  # no fsync: temp + rename already keeps half files out of sight


def part_name(bundle_name: str, number: int) -> str:
    """File name of part ``number`` (1 is the bundle itself) of a split study bundle.

    >>> part_name("study-x.json", 1), part_name("study-x.json", 2)
    ('study-x.json', 'study-x.part-2.json')
    """
    if number == 1:
        return bundle_name
    return f"{bundle_name.removesuffix('.json')}.part-{number}.json"


class SplitWriter:
    """Writes a study's entries into ``<stem>.json`` and, past the limits, ``<stem>.part-N.json``.

    The first file gets the head entries (Patient, Endpoint, ImagingStudy); :meth:`place` adds a
    Binary or rendered-image entry to the current part, or starts the next part when the entry
    would break ``max_entries`` or ``max_bytes``. An entry alone in a part is always accepted
    (a single Binary larger than ``max_bytes`` gets a part of its own, and a note).

    Files appear (atomically renamed) only at :meth:`commit`; :meth:`abort` leaves nothing behind.
    They get ``mode`` (owner-only by default, :class:`fhirimg.jsonio.Modes`).
    Parts left over from an earlier run of the same study are removed at commit.
    """

    def __init__(
        self,
        out_dir: Path,
        bundle_name: str,
        max_entries: int | None,
        max_bytes: int | None,
        mode: jsonio.Modes = jsonio.PRIVATE,
    ) -> None:
        self.out_dir = out_dir
        self.bundle_name = bundle_name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.mode = mode
        self.parts: list[_Part] = [_Part(out_dir / bundle_name, mode)]
        self.notes: list[str] = []

    @property
    def in_first(self) -> bool:
        """Whether the next entry goes to the first bundle (where the head entries are)."""
        return len(self.parts) == 1

    def add_head(self, entry: EncodedEntry) -> None:
        self.parts[0].add(entry)

    def _fits(self, part: _Part, entry: EncodedEntry) -> bool:
        if self.max_entries is not None and part.entries + 1 > self.max_entries:
            return False
        return self.max_bytes is None or part.size_with(entry) <= self.max_bytes

    def place(self, build: Callable[[bool], EncodedEntry]) -> None:
        """Add the entry ``build(in_first)`` makes; it is built again for a new part when it does
        not fit (references differ between the first bundle and the others)."""
        entry = build(self.in_first)
        part = self.parts[-1]
        fresh = part.entries == 0
        if fresh or self._fits(part, entry):
            part.add(entry)
            return
        was_first = self.in_first
        part.close()
        part = _Part(self.out_dir / part_name(self.bundle_name, len(self.parts) + 1), self.mode)
        self.parts.append(part)
        if was_first:
            entry = build(False)
        if self.max_bytes is not None and part.size_with(entry) > self.max_bytes:
            self.notes.append(
                f"{part.path.name}: one entry of {entry.size} bytes is over the bundle size limit"
            )
        part.add(entry)

    def commit(self) -> list[str]:
        """Close and publish every part; returns their file names in order."""
        for part in self.parts:
            part.close()
        for part in self.parts:
            os.replace(part.tmp, part.path)
        names = [p.path.name for p in self.parts]
        remove_stale_parts(self.out_dir, self.bundle_name, keep=len(names))
        return names

    def abort(self) -> None:
        for part in self.parts:
            if not part.fh.closed:
                part.fh.close()
            part.tmp.unlink(missing_ok=True)


def remove_stale_parts(out_dir: Path, bundle_name: str, keep: int = 1) -> None:
    """Delete ``<stem>.part-N.json`` for N > ``keep``, left by an earlier run that split more."""
    stem = bundle_name.removesuffix(".json")
    for path in out_dir.glob(f"{stem}.part-*.json"):
        number = path.name[len(stem) + len(".part-") : -len(".json")]
        if number.isdigit() and int(number) > keep:
            path.unlink(missing_ok=True)
