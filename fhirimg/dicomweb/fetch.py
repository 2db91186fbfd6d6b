"""Instance bytes from a DICOMweb server for ``--binary``/``--media`` (``convert
--from-dicomweb``).

:class:`DicomwebFetch` is the :class:`~fhirimg.convert.StudyFetch` of a DICOMweb server: just
before a study is written, each of its instances is retrieved by WADO-RS (PS3.18 10.4, the stored
Part 10 bytes, any transfer syntax) and streamed into temporary storage under the output folder's
private state folder (``<out>/.fhirimg/fetch-<pid>/``, owner-only): memory holds one network chunk
(:class:`~fhirimg.dicomweb.client.PartWriter`), the disk the studies being written; the files go
once their study is written. The DIMSE twin is :mod:`fhirimg.dimse.fetch`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import TracebackType

from fhirimg import jsonio
from fhirimg.dicomweb.client import DicomwebClient
from fhirimg.errors import PushError
from fhirimg.folderlock import state_dir
from fhirimg.model import InstanceRecord

log = logging.getLogger(__name__)


class DicomwebFetch:
    """Retrieves each study's instances (WADO-RS) into ``<out>/.fhirimg/fetch-<pid>/<study>/``.
    Use it as a context manager: leaving it deletes whatever is left."""

    def __init__(
        self, client: DicomwebClient, out_dir: Path, mode: jsonio.Modes = jsonio.PRIVATE
    ) -> None:
        self.client = client
        self.root = state_dir(out_dir) / f"fetch-{os.getpid()}"
        self.mode = mode

    def __enter__(self) -> DicomwebFetch:
        jsonio.make_folder(self.root, jsonio.PRIVATE)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _folder(self, study: str) -> Path:
        return self.root / hashlib.sha256(study.encode()).hexdigest()[:32]

    def fetch(self, records: list[InstanceRecord]) -> list[InstanceRecord]:
        """The study's records with the paths of their fetched files (see
        :class:`~fhirimg.convert.StudyFetch`); an instance the server would not give keeps its
        URL, and its study fails naming it."""
        if not records:
            return records
        folder = self._folder(records[0].study_instance_uid)
        jsonio.make_folder(folder, self.mode)
        out: list[InstanceRecord] = []
        for rec in records:
            name = hashlib.sha256(rec.sop_instance_uid.encode()).hexdigest()[:32] + ".dcm"
            path = folder / name
            try:
                with jsonio.atomic_writer(path, mode=self.mode) as fh:
                    self.client.retrieve_instance_to(
                        rec.study_instance_uid,
                        rec.series_instance_uid,
                        rec.sop_instance_uid,
                        fh,
                    )
            except PushError as exc:
                log.warning("WADO-RS of %s: %s", rec.sop_instance_uid, exc)
                out.append(rec)
                continue
            out.append(replace(rec, path=str(path)))
        return out

    def release(self, study_instance_uid: str) -> None:
        shutil.rmtree(self._folder(study_instance_uid), ignore_errors=True)


__all__ = ["DicomwebFetch"]
