"""What a push is asked to do and what became of it: :class:`PushOptions` in,
:class:`PushReport` (one :class:`BundleResult` per bundle) out, :class:`PushObserver` hooks between.

Data only: the CLI builds the options and prints the report (``--json`` is :meth:`PushReport.to_json`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fhirimg.exitcodes import ExitCode
from fhirimg.http.settings import ClientCert, RetryPolicy

if TYPE_CHECKING:
    import httpx

    from fhirimg.http.fhir import FhirClient

__all__ = [
    "BundleResult",
    "PlannedRequest",
    "PushObserver",
    "PushOptions",
    "PushReport",
    "Status",
]

Status = Literal["pushed", "skipped", "failed", "planned"]


@dataclass(frozen=True)
class PushOptions:
    """Everything ``push_paths`` needs to know; the CLI builds one from its options.

    ``journal`` None means ``<first folder>/.fhirimg-push-journal.jsonl``; ``use_journal`` False
    keeps no journal at all; ``force`` ignores what the journal holds (and still appends to it).
    ``max_entries`` cuts every transaction to that many entries; ``auto_split`` retries a
    transaction in pieces when the server refuses it as too large. ``group_readable`` creates the
    journal 0640 instead of owner-only 0600.
    """

    server: str
    auth: httpx.Auth | None = None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    verify: bool | str | Path = True
    client_cert: ClientCert | None = None  # (certificate, key) PEM files for mutual TLS
    deadline: float | None = None  # seconds per request attempt (None: max(120, 4 x timeout))
    allow_insecure_http: bool = False  # credentials over http:// to a host that is not loopback
    jobs: int = 4
    max_entries: int | None = None
    auto_split: bool = True
    journal: Path | None = None
    use_journal: bool = True
    force: bool = False
    dry_run: bool = False
    check_server: bool = True
    group_readable: bool = False

    def client(self, **extra: Any) -> FhirClient:
        """A client of ``server`` with these credentials, TLS settings, timeouts and retries;
        ``extra`` (a connection limit, a transport) goes to :class:`FhirClient` as it is."""
        from fhirimg.http.fhir import FhirClient  # httpx: only once a client is wanted

        return FhirClient(
            self.server,
            auth=self.auth,
            timeout=self.timeout,
            retry=self.retry,
            verify=self.verify,
            client_cert=self.client_cert,
            deadline=self.deadline,
            allow_insecure_http=self.allow_insecure_http,
            **extra,
        )


@dataclass(frozen=True)
class PlannedRequest:
    """One request ``--dry-run`` would send."""

    method: str
    url: str
    entries: int
    bytes: int
    note: str = ""


@dataclass
class BundleResult:
    """What happened to one bundle."""

    file: str
    status: Status
    entries: int = 0
    bytes: int = 0
    pieces: int = 0
    binaries_uploaded: int = 0
    binaries_skipped: int = 0
    http_status: int | None = None
    error: str | None = None
    issues: list[str] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)
    planned: list[PlannedRequest] = field(default_factory=list)
    learned_limit: int | None = None
    unreachable: bool = False
    merge: str | None = None
    """What became of the bundle's ImagingStudy: ``created`` (the server had none), ``merged``
    (into the server's), ``unchanged`` (the server's already held all of it); None without one."""
    conflicts: int = 0
    """Version conflicts met (and retried) writing the merged ImagingStudy."""
    journal_ticket: int | None = None
    """The journal line of a bundle the server confirmed, written but not yet known to be on
    disk (:meth:`~fhirimg.push.journal.Journal.write_bundle`): ``push_paths`` reports the bundle
    only after committing it."""

    def to_json(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: its deep copy of every result was the largest
        # cost of writing the --json summary (issue 19).
        out: dict[str, Any] = {
            "file": self.file,
            "status": self.status,
            "entries": self.entries,
            "bytes": self.bytes,
            "pieces": self.pieces,
            "binaries_uploaded": self.binaries_uploaded,
            "binaries_skipped": self.binaries_skipped,
            "http_status": self.http_status,
            "error": self.error,
            "issues": list(self.issues),
        }
        if self.status == "planned":
            out["planned"] = [asdict(p) for p in self.planned]
        if self.merge is not None:
            out["merge"] = self.merge
        if self.conflicts:
            out["conflicts"] = self.conflicts
        return out


@dataclass
class PushReport:
    """The outcome of ``push_paths``: one :class:`BundleResult` per bundle file, in file order."""

    server: str
    results: list[BundleResult] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    aborted: str | None = None
    elapsed_s: float = 0.0
    journal: str | None = None
    requests: int = 0
    retries: int = 0

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def pushed(self) -> int:
        return self.count("pushed")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.aborted is None

    @property
    def exit_code(self) -> ExitCode:
        """4 when there was no bundle to push (no request was sent), 3 when the run stopped
        before anything reached the server, 1 when some bundles failed, else 0 (docs/push.md).

        >>> PushReport("https://fhir.example/r4").exit_code
        <ExitCode.NOTHING_DONE: 4>
        """
        if not self.results:
            return ExitCode.NOTHING_DONE
        if self.aborted and self.pushed == 0 and self.skipped == 0:
            return ExitCode.CANNOT_START
        return ExitCode.OK if self.ok else ExitCode.PARTIAL

    def to_json(self) -> dict[str, Any]:
        return {
            "exitCode": int(self.exit_code),
            "server": self.server,
            "pushed": self.pushed,
            "skipped": self.skipped,
            "failed": self.failed,
            "planned": self.count("planned"),
            "aborted": self.aborted,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests": self.requests,
            "retries": self.retries,
            "journal": self.journal,
            "bundles": [r.to_json() for r in self.results],
            "ignored": [{"file": f, "reason": why} for f, why in self.ignored],
        }


class PushObserver:
    """Hooks for progress display; the default does nothing. Called from worker threads."""

    def started(self, bundles: int, total_bytes: int) -> None:
        """Before the first bundle: how many bundles and bytes (bundle JSON + Binary files)."""

    def advanced(self, nbytes: int) -> None:
        """``nbytes`` more were sent, or skipped as already confirmed."""

    def finished(self, result: BundleResult) -> None:
        """One bundle is done (pushed, skipped or failed)."""
