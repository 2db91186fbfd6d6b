"""``convert --dry-run``: what a file run would convert, without writing anything.

The headers are read and grouped by study as :func:`fhirimg.convert.convert` does (duplicates
settled, :mod:`fhirimg.select` applied), in a temporary folder outside the output folder: no
bundle, no report.json, no catalog, no lock is written there.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fhirimg.convert import read_files, resolve_jobs, select_studies
from fhirimg.group import StudyIndex
from fhirimg.jsonio import JSON
from fhirimg.model import FileStatus
from fhirimg.select import StudySelection

if TYPE_CHECKING:
    from fhirimg.deid import DeidOptions


@dataclass(frozen=True)
class PlannedStudy:
    """One study a run would write."""

    study_instance_uid: str
    patient_id: str | None  # (0010,0020): patient data, shown only when asked for
    series: int
    instances: int

    def as_json(self, patient: bool) -> JSON:
        out: JSON = {"studyInstanceUid": self.study_instance_uid}
        if patient:
            out["patientId"] = self.patient_id
        out["series"] = self.series
        out["instances"] = self.instances
        return out


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` found: the studies (by Study Instance UID) and the files by status."""

    out_dir: Path
    studies: tuple[PlannedStudy, ...]
    files: dict[str, int]

    @property
    def nothing_to_do(self) -> bool:
        return not self.studies

    def summary(self, patient: bool = False) -> JSON:
        """The ``--json`` summary; ``patient`` adds each study's Patient ID."""
        return {
            "dryRun": True,
            "output": str(self.out_dir),
            "files": {"total": sum(self.files.values()), **self.files},
            "studies": {
                "count": len(self.studies),
                "series": sum(s.series for s in self.studies),
                "instances": sum(s.instances for s in self.studies),
                "list": [s.as_json(patient) for s in self.studies],
            },
        }


def plan(
    inputs: Iterable[str | Path],
    out_dir: Path,
    select: StudySelection | None = None,
    jobs: int | None = None,
    deid: DeidOptions | None = None,
) -> Plan:
    """Read the headers under ``inputs`` and say which studies a run into ``out_dir`` would
    write (that folder is neither entered nor written); with ``deid``, under the UIDs and
    pseudonyms the bundles would carry."""
    from concurrent.futures import ProcessPoolExecutor

    out_dir = out_dir.resolve()
    source = read_files([Path(p) for p in inputs], out_dir, deid)
    workers = resolve_jobs(jobs)
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        with tempfile.TemporaryDirectory(prefix="fhirimg-plan-") as tmp, StudyIndex(tmp) as index:
            for results in source(pool):
                index.add_many(results)
            index.resolve_duplicates()
            studies = []
            for uid in select_studies(index, select or StudySelection()):
                records = index.records(uid)
                studies.append(
                    PlannedStudy(
                        uid,
                        next((r.patient_id for r in records if r.patient_id), None),
                        len({r.series_instance_uid for r in records}),
                        len(records),
                    )
                )
                # "converted" here: what a run would do with them
                index.set_outcome(index.study_paths(uid), FileStatus.CONVERTED, "")
            return Plan(out_dir, tuple(studies), index.counts())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
