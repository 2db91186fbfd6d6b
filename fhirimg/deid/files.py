"""The ``deidentify`` command: DICOM files in, de-identified PS3.10 files out (a research PACS).

Each input file ends up ``written`` (``<out>/<study>/<series>/<instance>.dcm``, named by the new
UIDs, 0600 in 0700 folders), ``skipped`` (not DICOM, a DICOMDIR, or an image that may carry
burned-in text without ``allow_burned_in``), ``duplicate`` (an instance already written in this
run) or ``failed``, with the reason, in ``<out>/report.json``. The optional re-identification map
(pseudonym and new UIDs to the originals) goes to a file of its own, 0600, never inside ``out``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from fhirimg import jsonio
from fhirimg.deid.keys import DeidOptions, Keyed
from fhirimg.deid.record import record_patient
from fhirimg.errors import ConfigError
from fhirimg.exitcodes import ExitCode
from fhirimg.jsonio import JSON
from fhirimg.model import InstanceRecord
from fhirimg.walk import iter_files

REPORT_NAME = "report.json"


@dataclass
class DeidReport:
    """What :func:`deidentify_files` did: every input file with its status and detail."""

    out_dir: Path
    files: list[tuple[str, str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"written": 0, "skipped": 0, "duplicate": 0, "failed": 0}
        for _, status, _ in self.files:
            out[status] += 1
        return out

    @property
    def exit_code(self) -> ExitCode:
        if not self.files:
            return ExitCode.NOTHING_DONE
        return ExitCode.PARTIAL if self.counts()["failed"] else ExitCode.OK

    def summary(self) -> JSON:
        counts = self.counts()
        return {
            "output": str(self.out_dir),
            "files": {"total": len(self.files), **counts},
            "exitCode": int(self.exit_code),
        }


def check_reid_map(reid_map: Path | None, out_dir: Path) -> None:
    """Refuse a re-identification map inside the output folder (it would travel with the data)."""
    if reid_map is None:
        return
    where = Path(os.path.abspath(reid_map)).resolve()
    out = Path(os.path.abspath(out_dir)).resolve()
    if where == out or out in where.parents:
        raise ConfigError(
            "the re-identification map must not be inside the output folder: it undoes the "
            "de-identification of everything shared with that folder"
        )


ReidEntry = tuple[str, JSON, tuple[tuple[str, str], ...]]
"""(pseudonym, what it stands for, (new UID, original UID) pairs) of one instance."""


def reid_entry(original: InstanceRecord, opts: DeidOptions) -> ReidEntry:
    """What the re-identification map keeps of one instance, from its original record."""
    keyed = Keyed(opts.key)
    patient = record_patient(original, keyed)
    uids = (
        original.study_instance_uid,
        original.series_instance_uid,
        original.sop_instance_uid,
    )
    about: JSON = {
        "patientId": original.patient_id,
        "issuerOfPatientId": original.issuer_of_patient_id,
        "patientName": original.patient_name,
        "dateShiftDays": patient.shift_days,
    }
    return patient.pseudonym, about, tuple((keyed.uid(u), u) for u in uids)


class ReidMap:
    """The pseudonyms and new UIDs met, with the originals: written only when asked for."""

    def __init__(self) -> None:
        self.patients: dict[str, JSON] = {}
        self.uids: dict[str, str] = {}

    def add(self, entry: ReidEntry) -> None:
        pseudonym, about, uids = entry
        self.patients[pseudonym] = about
        self.uids.update(uids)

    def write(self, path: Path, merge: bool = False) -> None:
        """Write the map (0600); ``merge``: keep what an earlier run wrote there too (an
        incremental ``convert`` reads only new files)."""
        patients, uids = dict(self.patients), dict(self.uids)
        if merge and path.is_file():
            try:
                before = orjson.loads(path.read_bytes())
                patients = {**before.get("patients", {}), **patients}
                uids = {**before.get("uids", {}), **uids}
            except (orjson.JSONDecodeError, AttributeError):
                pass  # not a map of ours: replaced
        doc = {"patients": dict(sorted(patients.items())), "uids": dict(sorted(uids.items()))}
        jsonio.atomic_write(path, jsonio.dumps(doc), mode=jsonio.PRIVATE)


def deidentify_files(
    paths: Iterable[str | Path],
    out_dir: Path,
    opts: DeidOptions,
    reid_map: Path | None = None,
) -> DeidReport:
    """De-identify every DICOM file under ``paths`` into ``out_dir`` (module docstring).

    Never raises for a bad input file; raises :class:`~fhirimg.errors.ConfigError` for a
    re-identification map inside ``out_dir`` and ``OSError`` when ``out_dir`` cannot be written.
    """
    from fhirimg.deid.dataset import burned_in_reason, part10_bytes, read_and_deidentify
    from fhirimg.model import FileProblem
    from fhirimg.scan import read_file

    check_reid_map(reid_map, out_dir)
    jsonio.make_folder(out_dir)
    report = DeidReport(out_dir)
    reid = ReidMap()
    seen: set[str] = set()
    for path in iter_files(paths, exclude=[out_dir]):
        head = read_file(path)  # what the file is, by content: the scanner's verdict
        if isinstance(head, FileProblem):
            report.files.append((path, head.status.value, head.reason))
            continue
        try:
            ds, original = read_and_deidentify(path, opts)
            reason = None if opts.allow_burned_in else burned_in_reason(ds)
            if reason is not None:
                report.files.append((path, "skipped", f"{reason}; --allow-burned-in writes it"))
                continue
            data = part10_bytes(ds)
        except Exception as exc:  # pydicom raises many types on odd input: this file only
            report.files.append((path, "failed", f"cannot de-identify: {type(exc).__name__}"))
            continue
        name = Path(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), f"{ds.SOPInstanceUID}.dcm")
        if str(name) in seen:
            report.files.append((path, "duplicate", str(name)))
            continue
        seen.add(str(name))
        for folder in (out_dir / name.parent.parent, out_dir / name.parent):
            if not folder.is_dir():
                jsonio.make_folder(folder)
        jsonio.atomic_write(out_dir / name, data, mode=jsonio.PRIVATE)
        report.files.append((path, "written", str(name)))
        if reid_map is not None:
            reid.add(reid_entry(original, opts))
    doc = {
        "summary": report.summary(),
        "files": [
            {"path": p, "status": s, ("file" if s == "written" else "reason"): d}
            for p, s, d in report.files
        ],
    }
    jsonio.atomic_write(out_dir / REPORT_NAME, jsonio.dumps(doc), mode=jsonio.PRIVATE)
    if reid_map is not None:
        reid.write(reid_map)
    return report
