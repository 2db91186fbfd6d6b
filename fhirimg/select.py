"""Which studies a file run converts: ``convert --modality/--since/--patient`` on file input.

The filters apply to whole studies, after the headers are read and before bundles are built, so
that a study is never written with part of its series: a study matches ``modalities`` when any
of its instances' Modality (0008,0060) is one of them, ``since`` when its Study Date (0008,0020)
is that day or later (a study without a date does not match), and ``patient_id`` when its Patient
ID (0010,0020) is exactly that. Every filter given must match. The files of a study left out are
reported ``skipped`` with the reason :meth:`StudySelection.reason` gives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fhirimg.errors import ConfigError
from fhirimg.model import InstanceRecord

_DATE = re.compile(r"\d{8}")


@dataclass(frozen=True)
class StudySelection:
    """The studies to keep; an empty selection keeps every study.

    >>> sel = StudySelection.of(["ct"], "2020-01-31", None)
    >>> sel
    StudySelection(modalities=('CT',), since='20200131', patient_id=None)
    >>> sel.active
    True
    """

    modalities: tuple[str, ...] = ()
    since: str | None = None
    """YYYYMMDD, the DICOM DA form of Study Date (0008,0020)."""
    patient_id: str | None = None

    @classmethod
    def of(
        cls, modalities: Iterable[str], since: str | None, patient_id: str | None
    ) -> StudySelection:
        """Checked: ``since`` is YYYYMMDD or YYYY-MM-DD (else :class:`ConfigError`); modalities
        are upper-cased (DICOM Defined Terms are upper case)."""
        day = None
        if since is not None:
            day = since.replace("-", "")
            if not _DATE.fullmatch(day):
                raise ConfigError(f"--since wants a date YYYYMMDD, not {since!r}")
        mods = tuple(sorted({m.strip().upper() for m in modalities if m.strip()}))
        return cls(mods, day, patient_id or None)

    @property
    def active(self) -> bool:
        return bool(self.modalities or self.since or self.patient_id)

    def reason(self, records: Iterable[InstanceRecord]) -> str | None:
        """None when the study of ``records`` is kept, else why it is left out.

        >>> from fhirimg.model import InstanceRecord
        >>> r = InstanceRecord(path="a", size=1, sop_instance_uid="1", sop_class_uid="2",
        ...     study_instance_uid="3", series_instance_uid="4", modality="MR",
        ...     study_date="20190101", patient_id="P1")
        >>> StudySelection.of(["CT"], None, None).reason([r])
        'filtered out (--modality)'
        >>> StudySelection.of(["CT", "MR"], "20190101", "P1").reason([r]) is None
        True
        """
        records = list(records)
        if self.modalities and not any(
            (r.modality or "").upper() in self.modalities for r in records
        ):
            return "filtered out (--modality)"
        if self.since is not None:
            dates = [r.study_date for r in records if r.study_date and _DATE.match(r.study_date)]
            if not dates or max(d[:8] for d in dates) < self.since:
                return "filtered out (--since)"
        if self.patient_id is not None and not any(
            r.patient_id == self.patient_id for r in records
        ):
            return "filtered out (--patient)"
        return None
