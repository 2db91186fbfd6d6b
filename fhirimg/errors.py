"""The exception tree of fhirimg.

One root, :class:`FhirimgError`, with a few narrow children. Library code raises these; only the CLI
maps them to exit codes (see :mod:`fhirimg.exitcodes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class FhirimgError(Exception):
    """Root of every error fhirimg raises on purpose."""


class InputError(FhirimgError):
    """An input path or file cannot be used (does not exist, unreadable, not DICOM, ...)."""


class ConfigError(FhirimgError):
    """An option or setting is invalid (bad time zone, bad URL, ...)."""


class MissingFileError(ConfigError):
    """A file an option names does not exist (a CA bundle, a client certificate). Like a missing
    input path, exit 3 on every command (nothing could be done), not a usage error."""


class ValidationError(FhirimgError):
    """A resource or bundle fails validation; ``findings`` holds what was found."""

    def __init__(self, message: str, findings: list[Any] | None = None) -> None:
        super().__init__(message)
        self.findings = findings or []


class RenderError(FhirimgError):
    """An image that cannot be decoded or rendered (:mod:`fhirimg.images.render`); the message
    says why. ``convert`` records it against the file and still writes the study."""


class PushError(FhirimgError):
    """A server refused or could not be reached.

    ``status`` is the HTTP status (None for a connection failure) and ``outcome`` the server's
    OperationOutcome as JSON, when it sent one.
    """

    def __init__(
        self, message: str, status: int | None = None, outcome: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class ServerUnreachableError(PushError):
    """No connection to a server (FHIR, DICOMweb, ``$validate``) could be made, retries included,
    or it answered something that is not the protocol at all (``status`` is None for no answer).

    A run stops on it rather than failing every remaining item after the same wait.
    """


class AuthError(PushError):
    """A server (or an OAuth2 token endpoint) refused the credentials (HTTP 401/403).

    Nothing will succeed until the credentials change, so a run aborts instead of going on.
    """


class UntrustedUrlError(PushError):
    """A URL that a server's answer or server data supplied (a search page's ``next`` link, an
    absolute reference) points outside the configured server base URL: another scheme, host or
    port, or a path outside the base path. It is not requested (credentials are bound to the
    configured origin); the message names both hosts, credentials redacted."""


class ResponseTooLargeError(PushError):
    """A server's answer grew past the cap for its kind (see :mod:`fhirimg.http.limits`); reading
    stopped there, so memory stays bounded whatever the server sends."""


class DicomwebError(PushError):
    """A DICOMweb server answered something that does not follow PS3.18 (or refused an instance),
    or a file changed while it was being stored."""


class DimseError(PushError):
    """A DIMSE peer (a PACS, a modality) refused an association or a request, or answered
    something that does not follow PS3.7; the message names the peer (``AET@HOST:PORT``)."""


class JournalLockedError(FhirimgError):
    """Another push holds the journal: two runs on one folder would race each other."""


class JournalError(FhirimgError):
    """The push journal could not be written (a failed write or fsync): nothing more can be
    recorded as confirmed, so the run stops; what the server confirmed meanwhile is redone by the
    next run (idempotently)."""


class CatalogError(FhirimgError):
    """An output folder's catalog (:mod:`fhirimg.catalog`) cannot be used: corrupt, written by a
    newer fhirimg, or not writable.

    ``path`` is the catalog file. ``rebuild`` is True when re-running ``convert`` with ``--full``
    (which discards the catalog and reads every input file again) is the cure; the message then
    says so. A full disk or a read-only folder is not cured that way (``rebuild`` False).
    """

    def __init__(self, message: str, path: Path, rebuild: bool = True) -> None:
        super().__init__(message)
        self.path = path
        self.rebuild = rebuild


@dataclass(frozen=True)
class Holder:
    """Who holds an output folder's lock, as its lock file says: process id, host name, start
    time (UTC). Carried by :class:`FolderLockedError`.

    >>> Holder(4242, "scanner-7", "2026-01-31T02:00:00Z").describe()
    'PID 4242 on scanner-7, started 2026-01-31T02:00:00Z'
    """

    pid: int
    host: str
    started: str

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host}, started {self.started}"


class FolderLockedError(FhirimgError):
    """Another fhirimg process holds the output folder's lock (:class:`fhirimg.folderlock.
    FolderLock`): one writer at a time per folder.

    ``folder`` is the output folder, ``holder`` what the lock file says about the other process
    (None when it says nothing usable); the message names both.
    """

    def __init__(self, message: str, folder: Path, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.folder = folder
        self.holder = holder


class ClusterError(FhirimgError):
    """The Dask cluster of ``convert --engine dask`` cannot be used: the extra is not installed,
    the scheduler does not answer, or the cluster lost every worker (:mod:`fhirimg.cluster`)."""


class StorageError(FhirimgError):
    """Object storage cannot be used (:mod:`fhirimg.objects`): fsspec or its backend is not
    installed, a listing failed, or an upload failed."""
