"""The runs behind ``push --dicomweb`` and ``convert --from-dicomweb`` (parse, call the library,
print, exit), so that those commands only gain a few lines each. The PACS credentials they share
with ``verify`` are an option group in :mod:`fhirimg.cli._options`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from fhirimg.cli._app import (
    RESUMABLE,
    err_console,
    exit_on_error,
    fail,
    print_json,
    server_message,
    shown,
)
from fhirimg.cli._options import DICOMWEB_PANEL, Network
from fhirimg.convert import ConvertOptions, ConvertReport
from fhirimg.errors import ConfigError, FhirimgError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.http import ClientCert
from fhirimg.push import PushOptions
from fhirimg.safetext import redact_url

if TYPE_CHECKING:  # these import httpx: loaded by the DICOMweb runs below, not by every convert
    import httpx

    from fhirimg.dicomweb.records import StudyQuery
    from fhirimg.dicomweb.store_results import DicomwebPushReport

PANEL = DICOMWEB_PANEL

_STAGES = {
    "read": "reading studies",
    "write": "writing bundles",
    "store": "storing instances",
    "push": "pushing bundles",
}


class _Bar:
    """A rich progress bar on stderr fed by the library's ``progress(stage, advance, total)``
    callback: one line per stage, made when the stage first reports. Thread-safe (STOW-RS
    workers call it)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __call__(self, stage: str, advance: int, total: int | None) -> None:
        with self._lock:
            if stage not in self._tasks:
                label = _STAGES.get(stage, stage)
                self._tasks[stage] = self.progress.add_task(label, total=total)
            self.progress.update(self._tasks[stage], advance=advance, total=total)


@contextmanager
def progress_bar(show: bool) -> Iterator[_Bar | None]:
    """A running :class:`_Bar` when ``show`` and stderr is a terminal, else None (the library
    then reports no progress): ``--quiet``, and output to a file or a pipe, get no bar."""
    if not show or not err_console.is_terminal:
        yield None
        return
    bar = _Bar()
    with bar.progress:
        yield bar


def run_push_dicomweb(
    paths: list[Path],
    dicomweb_url: str,
    auth: httpx.Auth | None,
    push_options: PushOptions,
    *,
    with_fhir: bool,
    json_out: bool,
    quiet: bool,
    client_cert: ClientCert | None = None,
) -> NoReturn:
    """``push --dicomweb``: STOW-RS the studies' instances, then (``with_fhir``) push the bundles.
    The PACS gets ``push_options``' network settings, but its own ``client_cert``."""
    from fhirimg.dicomweb.store import store_and_push
    from fhirimg.dicomweb.store_results import StoreOptions

    store_options = StoreOptions(
        dicomweb_url,
        auth=auth,
        timeout=push_options.timeout,
        retry=push_options.retry,
        verify=push_options.verify,
        client_cert=client_cert,
        deadline=push_options.deadline,
        allow_insecure_http=push_options.allow_insecure_http,
        jobs=push_options.jobs,
        journal=push_options.journal,
        force=push_options.force,
        dry_run=push_options.dry_run,
    )
    with (
        exit_on_error(message=server_message, interrupted=RESUMABLE),
        progress_bar(not quiet and not push_options.dry_run) as bar,
    ):
        report = store_and_push(
            paths, store_options, push_options if with_fhir else None, progress=bar
        )
    _print_push(report, json_out=json_out, quiet=quiet)
    if not report.store.studies:
        where = ", ".join(str(p) for p in paths or [Path("fhirimg-out")])
        err_console.print(f"nothing to store: no transaction Bundle in {shown(where)}")
    raise typer.Exit(int(report.exit_code))


def _print_push(report: DicomwebPushReport, *, json_out: bool, quiet: bool) -> None:
    store = report.store
    if json_out:
        print_json(int(report.exit_code), report.to_json())
    for study in store.studies:
        for instance, reason in study.failed[:5]:
            err_console.print(
                f"[bold red]not stored:[/] {shown(study.bundle)}: {shown(instance)}: "
                f"{shown(reason)}",
                soft_wrap=True,
                highlight=False,
            )
    for name, reason in report.not_pushed:
        err_console.print(
            f"[yellow]not pushed to FHIR:[/] {shown(name)}: {shown(reason)}", soft_wrap=True
        )
    if report.fhir is not None:
        for result in report.fhir.results:
            if result.status == "failed":
                err_console.print(
                    f"[bold red]refused:[/] {shown(result.file)}: {shown(result.error or '')}",
                    soft_wrap=True,
                    highlight=False,
                )
    if store.aborted:
        err_console.print(f"[bold red]stopped:[/] {shown(store.aborted)}", soft_wrap=True)
    if quiet:
        return
    text = (
        f"DICOMweb: stored {store.total('stored')}, skipped {store.total('skipped')} (already "
        f"confirmed), failed {store.failed} instance(s) in {store.elapsed_s:.1f} s"
    )
    if store.total("planned"):
        text += f"; would store {store.total('planned')}"
    err_console.print(text, highlight=False)
    if report.fhir is not None:
        fhir = report.fhir
        err_console.print(
            f"FHIR: pushed {fhir.pushed}, skipped {fhir.skipped} (already confirmed), "
            f"failed {fhir.failed} bundle(s) in {fhir.elapsed_s:.1f} s",
            highlight=False,
        )


def run_convert_from_dicomweb(
    url: str,
    auth: httpx.Auth | None,
    query: StudyQuery,
    options: ConvertOptions,
    *,
    network: Network | None = None,
    progress: bool = False,
) -> ConvertReport:
    """``convert --from-dicomweb``: the report, or exit 3 when the server cannot be queried.

    ``network``: timeout, retries and CA bundle for the DICOMweb server (None: the defaults of the
    options). ``progress``: show a bar
    of studies read and bundles written (pass ``not quiet``; it stays off when stderr is not a
    terminal).
    """
    from fhirimg.dicomweb.client import DicomwebClient
    from fhirimg.dicomweb.records import convert_from_dicomweb

    network = network or Network()
    with (
        exit_on_error(
            codes={OSError: ExitCode.CANNOT_START},
            message=lambda exc: _write_message(exc, options.out_dir, url),
            interrupted=RESUMABLE,
        ),
        DicomwebClient(
            url,
            auth=auth,
            timeout=network.timeout,
            retry=network.retry,
            verify=network.verify,
            client_cert=network.dicomweb_cert_pair,
            deadline=network.max_time,
            allow_insecure_http=network.allow_insecure_http,
        ) as client,
        progress_bar(progress) as bar,
    ):
        return convert_from_dicomweb(client, query, replace(options), bar)


def _write_message(exc: BaseException, out_dir: Path, url: str) -> str:
    if isinstance(exc, PushError) and redact_url(url) not in str(exc):
        # Name the PACS (without credentials): "GET studies: HTTP 401" alone does not say which.
        return f"cannot use the DICOMweb server {redact_url(url)}: {exc}"
    if isinstance(exc, FhirimgError):
        return server_message(exc)
    return f"cannot write to {out_dir}: {exc}"


def study_query(
    study: list[str] | None,
    since: str | None,
    patient_id: str | None,
    accession: str | None,
    modality: str | None,
    qido: list[str] | None,
) -> StudyQuery:
    """A :class:`StudyQuery` from ``convert``'s options; ``--qido KEY=VALUE`` pairs are checked."""
    filters: list[tuple[str, str]] = []
    for pair in qido or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise fail(f"--qido wants KEY=VALUE, got {pair!r}", ExitCode.USAGE)
        filters.append((key, value))
    from fhirimg.dicomweb.records import StudyQuery

    query = StudyQuery(
        study_uids=tuple(study or ()),
        since=since,
        patient_id=patient_id,
        accession_number=accession,
        modality=modality,
        filters=tuple(filters),
    )
    try:
        query.params()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    return query


def any_of(*values: Any) -> bool:
    return any(v for v in values)
