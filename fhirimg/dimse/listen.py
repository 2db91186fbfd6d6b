"""``listen``: a DICOM storage SCP (C-STORE, C-ECHO) that converts and pushes what it receives.

Modalities and PACS push studies instance by instance. :func:`listen` accepts them and leaves
everything after the network to :func:`fhirimg.watch.watch`, which already knows how to turn a
growing folder into bundles:

1. each received instance is written atomically (temporary file, then rename) to
   ``<store>/<Study Instance UID>/<SOP Instance UID>.dcm``, owner-only (patient data), and only
   then acknowledged with status Success: an instance the sender saw accepted is on disk;
2. :func:`~fhirimg.watch.watch` polls the store folder: a study is converted once no instance of
   it has arrived for ``settle`` seconds, with the output folder's catalog (so a study that keeps
   growing is rewritten whole), and with ``push`` merged into and pushed to the FHIR server;
3. a restart continues from the store and the output folder: instances converted before are in
   the catalog, the others are converted on the first settle.

Any storage SOP class in the common transfer syntaxes
(:data:`fhirimg.dimse.scu.TRANSFER_SYNTAXES`) is accepted; C-ECHO too. ``allow`` limits who may
associate: ``AET`` or ``AET@HOST`` entries; an association from another calling AE title is
rejected (PS3.8 7.1.1.9: calling AE title not recognised), a known AE title from another host
gets 0x0124 (Refused: Not Authorized) for each request.

Stopping (``stop_event``): no new association is accepted, the open ones are finished (up to
``drain_timeout`` seconds, then aborted), then the watch loop finishes the study at hand.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhirimg import jsonio
from fhirimg.convert import ConvertOptions
from fhirimg.dimse.address import check_ae_title, require_pynetdicom
from fhirimg.dimse.scu import TRANSFER_SYNTAXES
from fhirimg.dimse.storage import OUT_OF_RESOURCES, SUCCESS, write_instance
from fhirimg.errors import ConfigError, DimseError
from fhirimg.push import PushOptions
from fhirimg.watch import DEFAULT_SETTLE, OnStudy, WatchReport, watch

if TYPE_CHECKING:
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

DEFAULT_PORT = 11112  # the registered DICOM port (IANA "dicom", PS3.8 G.1)
DEFAULT_AET = "FHIRIMG"
DEFAULT_STORE = Path("fhirimg-store")
NOT_AUTHORIZED = 0x0124  # PS3.7 C.5.x: Refused: Not Authorized
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class Peer:
    """An allowed peer: an AE title, and the host it must come from (None: any host).

    >>> Peer.parse("CT1@10.0.0.5"), Peer.parse("CT1")
    (Peer(aet='CT1', host='10.0.0.5'), Peer(aet='CT1', host=None))
    """

    aet: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Peer:
        aet, sep, host = text.partition("@")
        if sep and not host:
            raise ConfigError(f"not AET or AET@HOST: {text!r}")
        return cls(check_ae_title(aet, "an allowed AE title"), host or None)


@dataclass(frozen=True)
class ListenOptions:
    """Where and as whom :func:`listen` listens, where it stores, and whom it accepts."""

    port: int = DEFAULT_PORT
    ae_title: str = DEFAULT_AET
    store: Path = DEFAULT_STORE
    bind: str = ""
    """The address to listen on ("" = every interface)."""
    allow: tuple[Peer, ...] = ()
    """Empty: any calling AE title from any host."""
    drain_timeout: float = 60.0
    """Seconds the open associations get to finish when stopping."""
    timeout: float = 60.0
    """Seconds of network silence before an association is aborted (ACSE, DIMSE, network)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve TLS with (DICOM TLS, PS3.15 B.1); None: plain TCP."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""
    tls_client_ca: Path | None = None
    """PEM CA certificates: with it, only senders with a client certificate it signed connect."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2 or later), None without ``tls_cert``;
        :class:`ConfigError` when the files cannot be used."""
        if self.tls_cert is None and self.tls_key is None:
            if self.tls_client_ca is not None:
                raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
            return None
        if self.tls_cert is None or self.tls_key is None:
            raise ConfigError("give both --tls-cert and --tls-key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca is not None:
                context.load_verify_locations(self.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate or key: {exc}") from None
        return context


@dataclass
class Received:
    """Counts of the SCP, safe to read from any thread."""

    stored: int = 0
    failed: int = 0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


class StorageScp:
    """The C-STORE / C-ECHO service provider of :func:`listen`, running in pynetdicom's threads.
    :meth:`start` and :meth:`stop` (which drains the open associations)."""

    def __init__(self, options: ListenOptions, mode: jsonio.Modes = jsonio.PRIVATE) -> None:
        require_pynetdicom()
        self.options = options
        self.mode = mode
        self.received = Received()
        self._server: Any = None

    def _allowed(self, event: Event) -> bool:
        if not self.options.allow:
            return True
        requestor = event.assoc.requestor
        aet = str(requestor.ae_title).strip()
        host = str(requestor.address)
        return any(p.aet == aet and (p.host is None or p.host == host) for p in self.options.allow)

    def _on_echo(self, event: Event) -> int:
        return SUCCESS if self._allowed(event) else NOT_AUTHORIZED

    def _on_store(self, event: Event) -> int:
        if not self._allowed(event):
            self.received.add("refused")
            return NOT_AUTHORIZED
        try:
            data = event.encoded_dataset()
            sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            study = str(event.dataset.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # a dataset pydicom cannot decode: refuse it, keep serving
            log.warning("cannot decode a received instance: %s: %s", type(exc).__name__, exc)
            self.received.add("failed")
            return 0xC000  # Error: Cannot understand
        # Folder per study; a missing or odd UID gets a safe name (never a path from the wire).
        folder = self.options.store / write_name(study or "no-study")
        try:
            write_instance(folder, sop, data, self.mode)
        except (OSError, ConfigError) as exc:
            log.warning("cannot store a received instance: %s", exc)
            self.received.add("failed")
            return OUT_OF_RESOURCES
        self.received.add("stored")
        return SUCCESS

    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        opts = self.options
        ae = AE(ae_title=check_ae_title(opts.ae_title))
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        ae.maximum_associations = 32
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = opts.timeout
        if opts.allow:
            ae.require_calling_aet = sorted({p.aet for p in opts.allow})
        tls = opts.ssl_context()
        jsonio.make_folder(opts.store, self.mode)
        try:
            self._server = ae.start_server(
                (opts.bind, opts.port),
                block=False,
                ssl_context=tls,
                evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)],
            )
        except OSError as exc:
            raise DimseError(f"cannot listen on port {opts.port}: {exc.strerror or exc}") from None
        log.info("listening as %s on port %d", opts.ae_title, opts.port)

    @property
    def port(self) -> int:
        """The port listened on (the one asked for, or the one the system chose for 0)."""
        return int(self._server.server_address[1]) if self._server is not None else 0

    def stop(self) -> None:
        """Accept no new association; let the open ones finish (``drain_timeout``), abort the
        rest."""
        server, self._server = self._server, None
        if server is None:
            return
        active = list(server.active_associations)
        server.shutdown()
        for assoc in active:
            assoc.join(self.options.drain_timeout)
            if assoc.is_alive():
                log.warning(
                    "aborting an association still open after %.0f s", self.options.drain_timeout
                )
                assoc.abort()


def write_name(uid: str) -> str:
    """A study folder's name: the Study Instance UID when well-formed, else a digest.

    >>> write_name("1.2.3"), write_name("../x")[:4]
    ('1.2.3', 'bad-')
    """
    from fhirimg.dimse.storage import instance_name

    return instance_name(uid).removesuffix(".dcm")


def listen(
    options: ListenOptions,
    convert_options: ConvertOptions,
    *,
    settle: float = DEFAULT_SETTLE,
    interval: float = 1.0,
    push: PushOptions | None = None,
    stop_event: threading.Event | None = None,
    on_study: OnStudy | None = None,
    on_start: Callable[[StorageScp], None] | None = None,
) -> tuple[WatchReport, Received]:
    """Receive instances and convert (and push) each study once settled, until ``stop_event``
    is set; returns the watch report and what was received.

    Raises :class:`DimseError` when the port cannot be listened on, and what
    :func:`fhirimg.watch.watch` raises (bad options, the output folder in use, the FHIR server
    unusable at the start). ``on_start`` sees the running SCP (tests read its port).
    """
    stop = stop_event or threading.Event()
    watch_stop = threading.Event()
    scp = StorageScp(options, convert_options.modes)
    out, store = Path(convert_options.out_dir).resolve(), options.store.resolve()
    if store == out or out in store.parents:
        # watch never walks its own output folder: a store inside it would never be converted
        raise ConfigError("the store folder must not be the output folder or inside it")
    scp.start()

    def drain() -> None:
        stop.wait()
        scp.stop()
        watch_stop.set()

    drainer = threading.Thread(target=drain, name="listen-drain", daemon=True)
    drainer.start()
    try:
        if on_start is not None:
            on_start(scp)
        report = watch(
            [options.store],
            convert_options,
            settle=settle,
            interval=interval,
            push=push,
            stop_event=watch_stop,
            on_study=on_study,
        )
    finally:
        stop.set()
        drainer.join()
    return report, scp.received


__all__ = ["DEFAULT_PORT", "ListenOptions", "Peer", "Received", "StorageScp", "listen"]
