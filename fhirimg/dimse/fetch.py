"""Instance bytes from a DIMSE PACS for ``--binary``/``--media`` (``convert --from-pacs``).

:class:`DimseFetch` is the :class:`~fhirimg.convert.StudyFetch` of a PACS: just before a study
is written it retrieves the study's instances, series by series, into temporary storage under the
output folder's private state folder (``<out>/.fhirimg/fetch-<pid>/``, owner-only), and deletes
them once the study is written. So the temporary storage holds the studies being written (one,
or ``2 x jobs`` with worker processes), never the run; each instance streams from the network to
its file, one instance in memory at a time.

Two ways to retrieve (docs/pacs.md):

- C-GET (default): the PACS sends the instances back over fhirimg's own association; nothing to
  configure on the PACS beyond fhirimg's AE title.
- C-MOVE (``move_dest``): the PACS opens an association to the AE title ``move_dest`` which it
  must know (host and port); fhirimg runs a storage SCP on ``move_port`` for the run, accepting
  only the PACS's AE title.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fhirimg import jsonio
from fhirimg.dimse.scu import MAX_CONTEXTS, TRANSFER_SYNTAXES, DimseClient, Receiver, Retrieved
from fhirimg.errors import DimseError
from fhirimg.folderlock import state_dir
from fhirimg.model import InstanceRecord

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

_CLASSES_PER_GET = MAX_CONTEXTS // len(TRANSFER_SYNTAXES) - 1  # the GET model takes one context


def _identifier(study: str, series: str, sops: list[str]) -> Dataset:
    """An instance-level retrieve identifier: the unique keys of every level (PS3.4 C.4.2.1.4),
    the SOP Instance UIDs as a UID list."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sops if len(sops) > 1 else sops[0]
    return ds


class DimseFetch:
    """Retrieves each study's instances into ``<out>/.fhirimg/fetch-<pid>/<study>/`` (C-GET, or
    C-MOVE to ``move_dest`` received on ``move_port``). Use it as a context manager: leaving it
    stops the C-MOVE receiver and deletes whatever is left."""

    def __init__(
        self,
        client: DimseClient,
        out_dir: Path,
        *,
        move_dest: str | None = None,
        move_port: int = 11113,
        mode: jsonio.Modes = jsonio.PRIVATE,
    ) -> None:
        self.client = client
        self.root = state_dir(out_dir) / f"fetch-{os.getpid()}"
        self.move_dest = move_dest
        self.move_port = move_port
        self.mode = mode
        self._server: Any = None
        self._receiver: Receiver | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the C-MOVE receiver
    def __enter__(self) -> DimseFetch:
        jsonio.make_folder(self.root, jsonio.PRIVATE)
        if self.move_dest is not None:
            self._start_receiver()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        shutil.rmtree(self.root, ignore_errors=True)

    def _start_receiver(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=str(self.move_dest))
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), list(TRANSFER_SYNTAXES))
        # Only the PACS may store here (its AE title; a weak check, as all AE titles are).
        ae.require_calling_aet = [self.client.address.aet]
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.client.timeout
        try:
            self._server = ae.start_server(
                ("", self.move_port),
                block=False,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
            )
        except OSError as exc:
            raise DimseError(
                f"cannot receive C-MOVE as {self.move_dest} on port {self.move_port}: "
                f"{exc.strerror or exc}"
            ) from None

    def _on_store(self, event: Event) -> int:
        with self._lock:
            receiver = self._receiver
        if receiver is None:  # nothing asked for: refuse (PS3.4 B.2.3 0xA700 Out of Resources)
            return 0xA700
        return receiver(event)

    # ------------------------------------------------------------------ StudyFetch
    def _folder(self, study: str) -> Path:
        return self.root / hashlib.sha256(study.encode()).hexdigest()[:32]

    def fetch(self, records: list[InstanceRecord]) -> list[InstanceRecord]:
        """The study's records with the paths of their fetched files (see
        :class:`~fhirimg.convert.StudyFetch`)."""
        if not records:
            return records
        study = records[0].study_instance_uid
        folder = self._folder(study)
        got: dict[str, Path] = {}
        by_series: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for rec in records:
            by_series[rec.series_instance_uid][rec.sop_class_uid].append(rec.sop_instance_uid)
        for series, classes in sorted(by_series.items()):
            names = sorted(classes)
            for start in range(0, len(names), _CLASSES_PER_GET):
                chunk = names[start : start + _CLASSES_PER_GET]
                sops = sorted(uid for name in chunk for uid in classes[name])
                try:
                    result = self._retrieve(_identifier(study, series, sops), chunk, folder)
                except DimseError as exc:
                    log.warning("%s", exc)
                    continue
                got.update(result.files)
        return [
            replace(rec, path=str(got[rec.sop_instance_uid]))
            if rec.sop_instance_uid in got
            else rec
            for rec in records
        ]

    def _retrieve(self, identifier: Dataset, classes: list[str], folder: Path) -> Retrieved:
        if self.move_dest is None:
            return self.client.get(identifier, classes, folder, self.mode)
        receiver = Receiver(folder, self.mode)
        with self._lock:
            self._receiver = receiver
        try:
            self.client.move(identifier, self.move_dest)
        finally:
            with self._lock:
                self._receiver = None
        return receiver.result

    def release(self, study_instance_uid: str) -> None:
        shutil.rmtree(self._folder(study_instance_uid), ignore_errors=True)


__all__ = ["DimseFetch"]
