"""De-identification where ``convert`` meets instance bytes and non-file sources.

- :func:`write_deidentified`: a study's Binaries and rendered images are made from de-identified
  copies of its files (:func:`fhirimg.deid.dataset.read_and_deidentify`), written into the output
  folder's private temporary folder and removed after the study; images that may carry burned-in
  text (:func:`fhirimg.deid.dataset.burned_in_reason`) are withheld unless allowed, each one
  reported as a warning on its file. A file that cannot be de-identified is withheld too: its
  original bytes never reach the output.
- :func:`deidentified_source`: the records of a source that is not files (DICOMweb, DIMSE)
  de-identified as they arrive; :class:`DeidFetch` fetches their instances by the original UIDs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fhirimg import jsonio
from fhirimg.deid.keys import DeidOptions
from fhirimg.deid.record import deidentify_record
from fhirimg.folderlock import work_dir
from fhirimg.group import PackedRecord, unpack
from fhirimg.model import FileProblem, InstanceRecord

if TYPE_CHECKING:
    from fhirimg.images.writer import PixelOptions
    from fhirimg.mapping import MapOptions

# The pixel study writer of fhirimg.convert and its StudyOutcome (a dataclass with
# media_failures, dropped and file_warnings), which this layer below convert cannot name.
Writer = Callable[[list[InstanceRecord], "MapOptions", str, Path, "PixelOptions"], Any]
BURNED_IN_HINT = "--allow-burned-in puts it in"


def write_deidentified(
    write: Writer,
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    pixels: PixelOptions,
) -> Any:
    """Write one study with ``write`` (the pixel study writer) from de-identified copies of its
    files; the outcome names the input files, never the copies."""
    opts = pixels.deid
    assert opts is not None  # the caller's switch
    from fhirimg.deid.dataset import burned_in_reason, part10_bytes, read_and_deidentify

    tmp = Path(tempfile.mkdtemp(prefix="deid-", dir=work_dir(out_dir)))
    try:
        copies: list[InstanceRecord] = []
        back: dict[str, str] = {}
        withheld: set[str] = set()
        warned: list[tuple[str, str]] = []
        for number, rec in enumerate(records):
            try:
                ds, _ = read_and_deidentify(rec.path, opts)
                reason = None if opts.allow_burned_in else burned_in_reason(ds)
                data = b"" if reason else part10_bytes(ds)
            except Exception as exc:  # an odd file costs its Binary and image, not the study
                reason = f"cannot be de-identified ({type(exc).__name__})"
            if reason is not None:
                withheld.add(rec.sop_instance_uid)
                copies.append(rec)
                why = f"de-identification: no Binary or rendered image: {reason}"
                warned.append(
                    (rec.path, f"{why}; {BURNED_IN_HINT}" if "cannot" not in why else why)
                )
                continue
            path = tmp / f"{number}.dcm"
            jsonio.atomic_write(path, data, mode=jsonio.PRIVATE)
            back[str(path)] = rec.path
            copies.append(replace(rec, path=str(path), size=len(data)))
        outcome = write(
            copies, mapping, fhir_version, out_dir, replace(pixels, withheld=frozenset(withheld))
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return replace(
        outcome,
        media_failures=tuple((back.get(p, p), r) for p, r in outcome.media_failures),
        dropped=tuple((back.get(p, p), r) for p, r in outcome.dropped),
        file_warnings=(*outcome.file_warnings, *warned),
    )


Batch = Sequence[InstanceRecord | PackedRecord | FileProblem]


def deidentified_source(
    source: Callable[[Executor | None], Iterable[Batch]],
    opts: DeidOptions,
    originals: dict[str, InstanceRecord] | None,
) -> Callable[[Executor | None], Iterable[Batch]]:
    """``source`` with each record de-identified; ``originals`` (when given) keeps each original
    record by its new SOP Instance UID, for :class:`DeidFetch`."""

    def wrapped(executor: Executor | None) -> Iterable[Batch]:
        for batch in source(executor):
            out: list[InstanceRecord | PackedRecord | FileProblem] = []
            for item in batch:
                if isinstance(item, FileProblem):
                    out.append(item)
                    continue
                rec = unpack([item.blob])[0] if isinstance(item, PackedRecord) else item
                new = deidentify_record(rec, opts)
                if originals is not None:
                    originals[new.sop_instance_uid] = rec
                out.append(PackedRecord.of(new))
            yield out

    return wrapped


class _Fetch(Protocol):
    def fetch(self, records: list[InstanceRecord]) -> list[InstanceRecord]: ...

    def release(self, study_instance_uid: str) -> None: ...


class DeidFetch:
    """A :class:`fhirimg.convert.StudyFetch` over de-identified records: the instances are
    fetched by their original UIDs, the records handed on keep their new ones."""

    def __init__(self, inner: _Fetch, originals: dict[str, InstanceRecord]) -> None:
        self._inner = inner
        self._originals = originals
        self._studies: dict[str, str] = {}

    def fetch(self, records: list[InstanceRecord]) -> list[InstanceRecord]:
        originals = [self._originals[r.sop_instance_uid] for r in records]
        if originals:
            self._studies[records[0].study_instance_uid] = originals[0].study_instance_uid
        fetched = {r.sop_instance_uid: r.path for r in self._inner.fetch(originals)}
        return [
            replace(new, path=fetched.get(old.sop_instance_uid, new.path))
            for new, old in zip(records, originals, strict=True)
        ]

    def release(self, study_instance_uid: str) -> None:
        self._inner.release(self._studies.pop(study_instance_uid, study_instance_uid))
