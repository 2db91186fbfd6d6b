"""``fhirimg listen``: read options, run :func:`fhirimg.dimse.listen.listen`, print a line per
study, exit. Signals as for ``watch`` (:mod:`fhirimg.cli.watch_cmd`): the first SIGINT or SIGTERM
stops accepting associations, lets the open ones finish, then finishes the study at hand; a second
SIGINT stops at once. SIGINT exits 130, SIGTERM 0. pynetdicom is imported only when it runs."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import orjson
import typer

from fhirimg.cli import _dimse
from fhirimg.cli._app import (
    RESUMABLE,
    QuietOpt,
    VerboseOpt,
    app,
    configure_logging,
    err_console,
    exit_on_error,
    fail,
    invocation,
    shown,
)
from fhirimg.cli._auth import DICOMWEB, FHIR, check_url
from fhirimg.cli._deid import Deid, DeidentifyOpt
from fhirimg.cli._help import PanelledCommand
from fhirimg.cli._options import (
    BinaryOpt,
    EndpointUrlOpt,
    FhirAuth,
    FhirVersion,
    FhirVersionOpt,
    GroupReadableOpt,
    JobsOpt,
    MediaOpt,
    Network,
    NoMeasurementsOpt,
    StrictOpt,
    TimezoneOpt,
    option_groups,
    push_options,
)
from fhirimg.cli.watch_cmd import _install
from fhirimg.convert import DEFAULT_OUT, ConvertOptions
from fhirimg.errors import ConfigError, PushError
from fhirimg.exitcodes import ExitCode
from fhirimg.mapping import MapOptions
from fhirimg.safetext import redact_url
from fhirimg.watch import DEFAULT_SETTLE, StudyHandled

_PUSH_PANEL = "Push"


@app.command("listen", cls=PanelledCommand)
@option_groups(auth=FhirAuth, network=Network, deid=Deid)
def listen_command(
    *,
    port: Annotated[
        int,
        typer.Option("--port", min=0, max=65535, help="TCP port to listen on (0: any free port)."),
    ] = 11112,
    ae_title: Annotated[
        str,
        typer.Option(
            "--ae-title",
            metavar="AET",
            help="fhirimg's AE title (the called AE title senders use).",
        ),
    ] = "FHIRIMG",
    bind: Annotated[
        str,
        typer.Option(
            "--bind", metavar="ADDRESS", help="Address to listen on. Default: every interface."
        ),
    ] = "",
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="AET[@HOST]",
            help="Accept only this calling AE title (from this host). Repeatable. Default: any.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            metavar="PEM",
            help="Serve DICOM over TLS with this certificate (chain); with --tls-key.",
            dir_okay=False,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", metavar="PEM", help="The --tls-cert's private key.", dir_okay=False
        ),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-client-ca",
            metavar="PEM",
            help="With --tls-cert: accept only senders whose client certificate this CA signed.",
            dir_okay=False,
        ),
    ] = None,
    store: Annotated[
        Path,
        typer.Option(
            "--store",
            help="Folder for the received instances (<study>/<instance>.dcm, owner-only); it "
            "must not be inside --out.",
            file_okay=False,
        ),
    ] = Path("fhirimg-store"),
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Folder for the bundles, report.json and the catalog.",
            file_okay=False,
        ),
    ] = DEFAULT_OUT,
    push_url: Annotated[
        str | None,
        typer.Option(
            "--push",
            help="Also push each study's bundle(s) to this FHIR server, merged with what it holds.",
            rich_help_panel=_PUSH_PANEL,
        ),
    ] = None,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            min=0.0,
            help="Seconds without a new instance of a study before it is converted.",
        ),
    ] = DEFAULT_SETTLE,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.05, help="Seconds between two looks at the store folder."),
    ] = 2.0,
    fhir_version: FhirVersionOpt = FhirVersion.R4,
    dicomweb_url: EndpointUrlOpt = None,
    timezone: TimezoneOpt = None,
    no_measurements: NoMeasurementsOpt = False,
    binary: BinaryOpt = None,
    media: MediaOpt = False,
    strict: StrictOpt = False,
    jobs: JobsOpt = 0,
    group_readable: GroupReadableOpt = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON line per study handled on stdout (NDJSON)."),
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = 0,
    auth: FhirAuth,
    deidentify: DeidentifyOpt = False,
    network: Network,
    deid: Deid,
) -> None:
    """Receive DICOM over the network (a C-STORE SCP; C-ECHO too) and convert each study once no
    instance of it has arrived for --settle seconds; with --push send it to a FHIR server. Every
    storage SOP class in the common transfer syntaxes. Restartable: the store folder, the catalog
    and the push journal say what was done. Ctrl-C (or SIGTERM) finishes the open associations
    and the study at hand, then exits 130 (0 for SIGTERM). 2 usage, 3 cannot start (port in use,
    output folder in use, FHIR server unusable). Needs fhirimg[dimse].
    """
    configure_logging(verbose)
    _dimse.quiet_pynetdicom(verbose)
    check_url(dicomweb_url, "--dicomweb-url", DICOMWEB)
    check_url(push_url, "--push", FHIR)
    for option, url in (("--dicomweb-url", dicomweb_url), ("--push", push_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise fail(f"{option} needs an http(s) URL, not {redact_url(url)!r}", ExitCode.USAGE)
    from fhirimg.dimse.address import check_ae_title, require_pynetdicom
    from fhirimg.dimse.listen import ListenOptions, Peer, listen
    from fhirimg.images.rendered import MediaOptions

    try:
        require_pynetdicom()
        listen_options = ListenOptions(
            port=port,
            ae_title=check_ae_title(ae_title, "--ae-title"),
            store=store,
            bind=bind,
            allow=tuple(Peer.parse(a) for a in allow or ()),
            timeout=network.timeout,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
        )
        listen_options.ssl_context()  # unusable certificate or key: a usage error, before start
    except ConfigError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None
    options = ConvertOptions(
        out_dir=out,
        fhir_version=fhir_version.value,
        mapping=MapOptions(
            timezone=timezone, dicomweb_url=dicomweb_url, measurements=not no_measurements
        ),
        jobs=jobs or None,
        binary=binary,
        media=MediaOptions() if media else None,
        strict=strict,
        group_readable=group_readable,
        deid=deid.options() if deidentify else None,
        reid_map=deid.checked_reid_map(out, deidentify),
        invocation=invocation([store]),
    )
    push = (
        push_options(push_url, auth, network, group_readable=group_readable) if push_url else None
    )

    def tell(event: StudyHandled) -> None:
        if json_out:
            sys.stdout.write(orjson.dumps(event.as_json()).decode() + "\n")
            sys.stdout.flush()
        if not quiet:
            err_console.print(shown(event.line()), soft_wrap=True, highlight=False)

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopped_by and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        stopped_by.append(signum)
        if not quiet:
            os.write(2, b"stopping: finishing the open associations and the study at hand\n")
        threading.Thread(target=stop.set, daemon=True).start()

    def message(exc: BaseException) -> str:
        if isinstance(exc, OSError):
            return f"cannot write to {out} or {store}: {exc.strerror or exc}"
        if push_url is not None and isinstance(exc, PushError) and "port" not in str(exc):
            return f"cannot push to {redact_url(push_url)}: {exc}"
        return str(exc)

    def started(scp: object) -> None:
        if not quiet:
            err_console.print(
                f"listening as {listen_options.ae_title} on port {getattr(scp, 'port', port)}; "
                f"instances go to {shown(store)}, bundles to {shown(out)}",
                highlight=False,
                soft_wrap=True,
            )

    previous = _install({signal.SIGINT: on_signal, signal.SIGTERM: on_signal})
    try:
        with exit_on_error(
            codes={OSError: ExitCode.CANNOT_START, ConfigError: ExitCode.USAGE},
            message=message,
            interrupted=RESUMABLE,
        ):
            _, received = listen(
                listen_options,
                options,
                settle=settle,
                interval=interval,
                push=push,
                stop_event=stop,
                on_study=tell,
                on_start=started,
            )
    finally:
        _install(previous)
    if not quiet:
        err_console.print(
            f"received {received.stored} instance(s); {received.failed} could not be stored, "
            f"{received.refused} refused",
            highlight=False,
        )
    if stopped_by and stopped_by[0] == signal.SIGINT:
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    raise typer.Exit(int(ExitCode.OK))
