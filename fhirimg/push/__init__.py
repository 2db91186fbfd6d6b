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

The modules, by role: :mod:`~fhirimg.push.results` (options and results), :mod:`~fhirimg.push.files`
(finding the input), :mod:`~fhirimg.push.transaction` (one bundle), :mod:`~fhirimg.push.run` (many
bundles), :mod:`~fhirimg.push.split` (pieces of a bundle too large for the server) and
:mod:`~fhirimg.push.journal` (what the server confirmed). The HTTP client, retries and
authentication are :mod:`fhirimg.http`, shared with ``dicomweb`` and ``validate --server``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhirimg._lazy import exports

if TYPE_CHECKING:
    from fhirimg.push.files import (
        BINARY_EXTENSION_URL,
        DEFAULT_FOLDER,
        BundleFile,
        binaries_beside,
        default_journal_path,
        discover,
    )
    from fhirimg.push.journal import DEFAULT_JOURNAL_NAME, Journal
    from fhirimg.push.results import (
        BundleResult,
        PlannedRequest,
        PushObserver,
        PushOptions,
        PushReport,
    )
    from fhirimg.push.run import push_paths
    from fhirimg.push.split import plan_pieces, too_large_limit
    from fhirimg.push.transaction import push_bundle

_WHERE = {
    "BINARY_EXTENSION_URL": "fhirimg.push.files",
    "BundleFile": "fhirimg.push.files",
    "BundleResult": "fhirimg.push.results",
    "DEFAULT_FOLDER": "fhirimg.push.files",
    "DEFAULT_JOURNAL_NAME": "fhirimg.push.journal",
    "Journal": "fhirimg.push.journal",
    "PlannedRequest": "fhirimg.push.results",
    "PushObserver": "fhirimg.push.results",
    "PushOptions": "fhirimg.push.results",
    "PushReport": "fhirimg.push.results",
    "binaries_beside": "fhirimg.push.files",
    "default_journal_path": "fhirimg.push.files",
    "discover": "fhirimg.push.files",
    "plan_pieces": "fhirimg.push.split",
    "push_bundle": "fhirimg.push.transaction",
    "push_paths": "fhirimg.push.run",
    "too_large_limit": "fhirimg.push.split",
}

__all__ = [
    "BINARY_EXTENSION_URL",
    "DEFAULT_FOLDER",
    "DEFAULT_JOURNAL_NAME",
    "BundleFile",
    "BundleResult",
    "Journal",
    "PlannedRequest",
    "PushObserver",
    "PushOptions",
    "PushReport",
    "binaries_beside",
    "default_journal_path",
    "discover",
    "plan_pieces",
    "push_bundle",
    "push_paths",
    "too_large_limit",
]

__getattr__, __dir__ = exports(globals(), _WHERE)
