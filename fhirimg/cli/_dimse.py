"""The run behind ``convert --from-pacs`` (parse, call :mod:`fhirimg.dimse`, exit), so that
``convert`` only gains a few lines. Nothing here imports pynetdicom at module level: ``fhirimg
--help`` and every command without DIMSE work without it (``install fhirimg[dimse]``)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from fhirimg.cli._app import RESUMABLE, exit_on_error, fail
from fhirimg.cli._dicomweb import progress_bar
from fhirimg.convert import ConvertOptions, ConvertReport
from fhirimg.errors import ConfigError, FhirimgError, PushError
from fhirimg.exitcodes import ExitCode

if TYPE_CHECKING:  # httpx comes with them: only a PACS run needs it
    from fhirimg.dicomweb.records import StudyQuery
    from fhirimg.dicomweb.verify import VerifyReport

PANEL = "Classic PACS (DIMSE)"


def quiet_pynetdicom(verbose: int) -> None:
    """pynetdicom logs every association (and its failures, at ERROR) itself: fhirimg says what
    failed, naming the PACS, so its log stays off below ``-vv``."""
    if verbose < 2:
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


def check_dimse_options(from_pacs: str | None, calling_aet: str, move_dest: str | None) -> None:
    """Usage errors (exit 2) for DIMSE options, before any work: a bad address or AE title, and
    pynetdicom missing (with what to install)."""
    from fhirimg.dimse.address import PacsAddress, check_ae_title, require_pynetdicom

    try:
        if from_pacs is None:
            if move_dest is not None:
                raise ConfigError("--move-dest needs --from-pacs")
            return
        PacsAddress.parse(from_pacs)
        check_ae_title(calling_aet, "--calling-aet")
        if move_dest is not None:
            check_ae_title(move_dest, "--move-dest")
        require_pynetdicom()
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def run_convert_from_pacs(
    address: str,
    query: StudyQuery,
    options: ConvertOptions,
    *,
    calling_aet: str,
    timeout: float,
    move_dest: str | None = None,
    move_port: int = 11113,
    progress: bool = False,
) -> ConvertReport:
    """``convert --from-pacs``: the report, or exit 3 naming the PACS when it cannot be reached
    or refuses fhirimg (C-ECHO, study query)."""
    from fhirimg.dimse.address import PacsAddress
    from fhirimg.dimse.fetch import DimseFetch
    from fhirimg.dimse.records import convert_from_pacs, study_identifier
    from fhirimg.dimse.scu import DimseClient

    pacs = PacsAddress.parse(address)
    client = DimseClient(pacs, calling_aet, timeout)
    pixels = options.binary is not None or options.media is not None
    with (
        exit_on_error(
            codes={OSError: ExitCode.CANNOT_START, ConfigError: ExitCode.USAGE},
            message=lambda exc: _message(exc, options.out_dir, str(pacs)),
            interrupted=RESUMABLE,
        ),
        progress_bar(progress) as bar,
    ):
        study_identifier(query)  # a --qido key that is no DICOM keyword: usage, before any work
        if not pixels:
            return convert_from_pacs(client, query, replace(options), bar)
        fetch = DimseFetch(
            client,
            options.out_dir,
            move_dest=move_dest,
            move_port=move_port,
            mode=options.modes,
        )
        with fetch:
            return convert_from_pacs(client, query, replace(options), bar, fetch=fetch)


def run_verify_dimse(
    paths: list[Path], address: str, calling_aet: str, timeout: float, study_uids: list[str]
) -> VerifyReport:
    """``verify --pacs``: the report, or exit 3 naming the PACS (2 for bad options)."""
    from fhirimg.dimse.address import PacsAddress
    from fhirimg.dimse.scu import DimseClient
    from fhirimg.dimse.verify import verify_bundles_dimse

    check_dimse_options(address, calling_aet, None)
    client = DimseClient(PacsAddress.parse(address), calling_aet, timeout)
    with exit_on_error(message=lambda exc: _message(exc, Path("."), client.server)):
        return verify_bundles_dimse(paths, client, study_uids)


def _message(exc: BaseException, out_dir: Path, pacs: str) -> str:
    if isinstance(exc, PushError) and pacs not in str(exc):
        return f"cannot use the PACS {pacs}: {exc}"
    if isinstance(exc, FhirimgError):
        return str(exc)
    return f"cannot write to {out_dir}: {exc}"
