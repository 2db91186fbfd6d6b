"""``convert --push``: convert and push study by study, keeping no bundle files.

Each study's bundle files are written to a private folder (``mkdtemp``: a new name, 0700, so no
link planted beforehand can be in its way) inside the output folder's state (``.fhirimg/tmp/``),
pushed at once with :func:`fhirimg.push.push_bundle` (Binaries beside the bundle are uploaded raw
first), and
deleted; the next study is only taken after that. Disk use follows one study, nothing is left
behind but ``report.json`` and the push journal, and a re-run skips what the journal says the
server already confirmed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from fhirimg import jsonio
from fhirimg.convert import ConvertOptions, ConvertReport, Progress, StudyOutcome, convert
from fhirimg.errors import FhirimgError
from fhirimg.folderlock import work_dir
from fhirimg.http import FhirClient
from fhirimg.http.client import requests_for
from fhirimg.push import (
    DEFAULT_JOURNAL_NAME,
    Journal,
    PushOptions,
    binaries_beside,
    push_bundle,
)
from fhirimg.push.capability import check_server
from fhirimg.safetext import refuse_url_credentials


def convert_and_push(
    paths: Iterable[str | Path],
    options: ConvertOptions,
    push: PushOptions,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``paths`` and push each study's bundle(s) to ``push.server`` as soon as written.

    Every study in the report carries its push status ("pushed", "skipped", "failed: ...").
    Raises :class:`~fhirimg.errors.PushError` (or :class:`~fhirimg.errors.AuthError`) when the
    server cannot be used at all; a refused study is reported, and the run goes on.
    """
    options.check()
    refuse_url_credentials(
        push.server, "the FHIR server URL", "give credentials with --token, --user or --token-url"
    )
    out_dir = Path(options.out_dir)
    if not out_dir.is_dir():
        jsonio.make_folder(out_dir, options.modes)
    journal_path = push.journal or out_dir / DEFAULT_JOURNAL_NAME
    client = FhirClient(
        push.server,
        auth=push.auth,
        timeout=push.timeout,
        retry=push.retry,
        verify=push.verify,
        client_cert=push.client_cert,
        deadline=push.deadline,
        allow_insecure_http=push.allow_insecure_http,
    )
    try:
        if push.check_server:
            # Before converting anything: unreachable server, refused credentials, a wrong base
            # URL, a server of another FHIR release than the one convert writes.
            release = options.fhir_version
            check_server(client, {release: f"convert --fhir-version {release}"})
        with (
            Journal(journal_path, ignore_existing=push.force, mode=options.modes) as journal,
            # In the folder's private state (0700), where a run killed meanwhile leaves it for
            # the next run to remove (fhirimg.folderlock.clean_leftovers), not in the folder.
            tempfile.TemporaryDirectory(prefix="stream-", dir=work_dir(out_dir)) as tmp,
        ):

            def send(outcome: StudyOutcome, folder: Path) -> StudyOutcome:
                return _push_study(client, journal, push, outcome, folder)

            return convert(paths, options, progress, on_study=send, bundle_dir=Path(tmp))
    finally:
        client.close()


def _push_study(
    client: FhirClient,
    journal: Journal,
    push: PushOptions,
    outcome: StudyOutcome,
    folder: Path,
) -> StudyOutcome:
    """Push one written study (its bundle, then its parts, in order), then delete its files."""
    names = [str(outcome.bundle), *outcome.parts]
    status, issues = "pushed", tuple[str, ...]()
    try:
        for name in names:
            path = folder / name
            bundle = jsonio.loads(path.read_bytes())
            try:
                binaries = binaries_beside(path, bundle)
            except FhirimgError as exc:
                status = f"failed: {exc}"
                break
            with requests_for(name):  # the -vv request log names the bundle file
                result = push_bundle(
                    client,
                    bundle,
                    binaries,
                    name=name,
                    max_entries=push.max_entries,
                    auto_split=push.auto_split,
                    journal=journal,
                )
            if result.status == "failed":
                where = f"HTTP {result.http_status}: " if result.http_status else ""
                status, issues = f"failed: {where}{result.error}", tuple(result.issues)
                break
            if result.status == "skipped" and status == "pushed" and name == names[0]:
                status = "skipped"
    finally:
        for name in names:
            (folder / name).unlink(missing_ok=True)
            shutil.rmtree(folder / f"{Path(name).stem}.binaries", ignore_errors=True)
    return replace(outcome, push=status, push_issues=issues)
