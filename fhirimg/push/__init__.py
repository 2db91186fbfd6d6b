"""Push converted transaction Bundles, and the DICOM Binaries beside them, to a FHIR server.

Safe to run again and again (from cron, on a hospital's archive): everything sent is idempotent
(conditional create/update, Binary PUT with deterministic ids), requests are retried with backoff
on connection errors, timeouts, 429 and 5xx, and a journal of what the server confirmed lets a
re-run after a crash or Ctrl-C continue where it stopped.

>>> from fhirimg.push import PushOptions
>>> PushOptions(server="https://fhir.example/r4", jobs=2).jobs
2

Library entry points: :func:`push_paths` (files and folders, with a journal and ``jobs`` threads)
and :func:`push_bundle` (one in-memory bundle, for streaming from ``convert``). The CLI is
``fhirimg push`` (``fhirimg/cli/push_cmd.py``); docs in ``docs/push.md``.
"""

from __future__ import annotations

from fhirimg.push.auth import AuthError, BasicAuth, BearerAuth, ClientCredentialsAuth
from fhirimg.push.client import (
    FhirClient,
    RetryPolicy,
    ServerUnreachableError,
    format_outcome,
    outcome_issues,
    parse_retry_after,
)
from fhirimg.push.journal import DEFAULT_JOURNAL_NAME, Journal, JournalLockedError
from fhirimg.push.pusher import (
    BINARY_EXTENSION_URL,
    DEFAULT_FOLDER,
    BundleFile,
    BundleResult,
    PlannedRequest,
    PushObserver,
    PushOptions,
    PushReport,
    binaries_beside,
    default_journal_path,
    discover,
    push_bundle,
    push_paths,
)
from fhirimg.push.split import plan_pieces, too_large_limit

__all__ = [
    "BINARY_EXTENSION_URL",
    "DEFAULT_FOLDER",
    "DEFAULT_JOURNAL_NAME",
    "AuthError",
    "BasicAuth",
    "BearerAuth",
    "BundleFile",
    "BundleResult",
    "ClientCredentialsAuth",
    "FhirClient",
    "Journal",
    "JournalLockedError",
    "PlannedRequest",
    "PushObserver",
    "PushOptions",
    "PushReport",
    "RetryPolicy",
    "ServerUnreachableError",
    "binaries_beside",
    "default_journal_path",
    "discover",
    "format_outcome",
    "outcome_issues",
    "parse_retry_after",
    "plan_pieces",
    "push_bundle",
    "push_paths",
    "too_large_limit",
]
