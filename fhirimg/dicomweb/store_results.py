"""What ``push --dicomweb`` is asked to do and what became of it: :class:`StoreOptions` in,
:class:`StoreReport` (one :class:`StudyStore` per bundle) and :class:`DicomwebPushReport` out.

Data only: the CLI builds the options and prints the reports (``--json`` is their ``to_json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fhirimg.exitcodes import ExitCode
from fhirimg.http.client import ClientCert, RetryPolicy
from fhirimg.push import PushReport

__all__ = ["DicomwebPushReport", "StoreOptions", "StoreReport", "StudyStore"]


@dataclass(frozen=True)
class StoreOptions:
    """How to store instances in the PACS (``push --dicomweb`` options, as data).

    A batch (one STOW-RS request) holds at most ``batch_instances`` instances and, unless one
    instance alone is larger, ``batch_bytes`` bytes. Batches are streamed from the files, so these
    bound the size of a request, not the memory used (one chunk per request in flight). ``journal``, ``use_journal`` and ``force``
    mean what they mean for :class:`fhirimg.push.PushOptions` (same journal file by default).
    """

    dicomweb_url: str
    auth: httpx.Auth | None = None
    timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    client_cert: ClientCert | None = None  # (certificate, key) PEM files for mutual TLS
    deadline: float | None = None  # seconds per request attempt (None: max(120, 4 x timeout))
    allow_insecure_http: bool = False  # credentials over http:// to a host that is not loopback
    jobs: int = 4
    batch_instances: int = 50
    batch_bytes: int = 64 * 1024 * 1024
    journal: Path | None = None
    use_journal: bool = True
    force: bool = False
    dry_run: bool = False


@dataclass
class StudyStore:
    """What became of one bundle's study in the PACS."""

    bundle: str
    path: Path
    study_instance_uid: str
    instances: int
    has_endpoint: bool
    stored: int = 0
    skipped: int = 0
    planned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(instance, reason)``: the SOP Instance UID (or file) and why it is not in the PACS."""

    @property
    def ok(self) -> bool:
        # planned: --dry-run counts what it would store as fine
        return not self.failed and self.stored + self.skipped + self.planned == self.instances

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "studyInstanceUid": self.study_instance_uid,
            "instances": self.instances,
            "stored": self.stored,
            "skipped": self.skipped,
            "planned": self.planned,
            "failed": [{"instance": i, "reason": r} for i, r in self.failed],
            "endpoint": self.has_endpoint,
        }


@dataclass
class StoreReport:
    """The outcome of :func:`store_instances`, one :class:`StudyStore` per bundle."""

    dicomweb_url: str
    studies: list[StudyStore] = field(default_factory=list)
    aborted: str | None = None
    elapsed_s: float = 0.0
    requests: int = 0
    retries: int = 0
    journal: str | None = None

    def total(self, attr: str) -> int:
        return sum(int(getattr(s, attr)) for s in self.studies)

    @property
    def failed(self) -> int:
        return sum(len(s.failed) for s in self.studies)

    @property
    def ok(self) -> bool:
        return self.aborted is None and all(s.ok for s in self.studies)

    def to_json(self) -> dict[str, Any]:
        return {
            "dicomweb": self.dicomweb_url,
            "instances": self.total("instances"),
            "stored": self.total("stored"),
            "skipped": self.total("skipped"),
            "failed": self.failed,
            "aborted": self.aborted,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "retries": self.retries,
            "journal": self.journal,
            "studies": [s.to_json() for s in self.studies],
        }


@dataclass
class DicomwebPushReport:
    """``push --dicomweb``: the PACS part, and the FHIR part when a FHIR server was given."""

    store: StoreReport
    fhir: PushReport | None = None
    not_pushed: list[tuple[str, str]] = field(default_factory=list)
    """Bundles kept from the FHIR server, with the reason."""

    @property
    def ok(self) -> bool:
        return self.store.ok and not self.not_pushed and (self.fhir is None or self.fhir.ok)

    @property
    def exit_code(self) -> ExitCode:
        """4 when there was no bundle (nothing to store, nothing sent), 3 when a server stopped
        the run before any instance was stored, 1 when something failed, else 0.

        >>> DicomwebPushReport(StoreReport("https://pacs.example/dicom-web")).exit_code
        <ExitCode.NOTHING_DONE: 4>
        """
        if not self.store.studies:
            return ExitCode.NOTHING_DONE
        if self.store.aborted or (self.fhir is not None and self.fhir.aborted):
            if self.store.total("stored") + self.store.total("skipped") == 0:
                return ExitCode.CANNOT_START
        return ExitCode.OK if self.ok else ExitCode.PARTIAL

    def to_json(self) -> dict[str, Any]:
        return {
            "exitCode": int(self.exit_code),
            "dicomweb": self.store.to_json(),
            "fhir": self.fhir.to_json() if self.fhir else None,
            "notPushed": [{"file": f, "reason": r} for f, r in self.not_pushed],
        }
