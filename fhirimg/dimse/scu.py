"""The client side of DIMSE (PS3.7): C-ECHO, C-FIND, C-GET and C-MOVE against one PACS.

:class:`DimseClient` opens one association per request (PACS often limit how long an idle
association may live) with the Study Root Query/Retrieve Information Model (PS3.4 C.3.4). Every
failure names the PACS as ``AET@HOST:PORT``: a peer that cannot be reached is
:class:`~fhirimg.errors.ServerUnreachableError`, one that refuses the association or a request is
:class:`~fhirimg.errors.DimseError`.

Retrieval stores what arrives through a C-STORE handler straight to a folder
(:func:`fhirimg.dimse.storage.write_instance`), one instance in memory at a time. For C-GET the
storage SOP classes travel as extra presentation contexts with the SCP role (PS3.7 D.3.3.4), one
context per (SOP class, transfer syntax) so that the PACS can send every instance in the transfer
syntax it holds, unchanged.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhirimg import jsonio
from fhirimg.dimse.address import PacsAddress, check_ae_title, require_pynetdicom
from fhirimg.dimse.storage import OUT_OF_RESOURCES, SUCCESS, write_instance
from fhirimg.errors import DimseError, PushError, ServerUnreachableError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pynetdicom.association import Association
    from pynetdicom.events import Event

log = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "FHIRIMG"
DEFAULT_TIMEOUT = 30.0

FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve - FIND
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve - GET
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Query/Retrieve - MOVE
VERIFICATION = "1.2.840.10008.1.1"

TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still in archives)
)
"""The transfer syntaxes fhirimg accepts for received instances: uncompressed, the common
compressed ones, and what old archives hold. Received bytes are stored as they come."""

MAX_CONTEXTS = 127  # PS3.8 9.3.2.2: odd presentation context ids 1-255


@dataclass
class Retrieved:
    """What a C-GET or C-MOVE brought: the files written, and the instances that failed."""

    files: dict[str, Path] = field(default_factory=dict)
    """SOP Instance UID -> the file it was written to."""
    failed: int = 0
    """Sub-operations the PACS reported failed (or C-STOREs fhirimg could not write)."""
    errors: list[str] = field(default_factory=list)


class Receiver:
    """A C-STORE handler writing each instance into ``folder`` (thread-safe)."""

    def __init__(self, folder: Path, mode: jsonio.Modes) -> None:
        self.folder = folder
        self.mode = mode
        self.result = Retrieved()
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> int:
        uid = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        try:
            path = write_instance(self.folder, uid, event.encoded_dataset(), self.mode)
        except OSError as exc:
            with self._lock:
                self.result.failed += 1
                self.result.errors.append(f"cannot write {uid}: {exc.strerror or exc}")
            return OUT_OF_RESOURCES
        with self._lock:
            self.result.files[uid] = path
        return SUCCESS


class DimseClient:
    """C-ECHO, C-FIND, C-GET and C-MOVE against the PACS at ``address``, calling itself
    ``calling_aet``; ``timeout`` bounds the connection, the association and each message."""

    def __init__(
        self,
        address: PacsAddress,
        calling_aet: str = DEFAULT_CALLING_AET,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        require_pynetdicom()
        self.address = address
        self.calling_aet = check_ae_title(calling_aet, "the calling AE title")
        self.timeout = timeout

    @property
    def server(self) -> str:
        """The PACS as messages name it: ``AET@HOST:PORT``."""
        return str(self.address)

    # ------------------------------------------------------------------ associations
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.connection_timeout = self.timeout
        ae.acse_timeout = self.timeout
        ae.dimse_timeout = self.timeout
        ae.network_timeout = self.timeout
        return ae

    @contextmanager
    def association(
        self,
        abstract_syntaxes: Iterable[str],
        *,
        storage: Iterable[str] = (),
        receiver: Receiver | None = None,
    ) -> Iterator[Association]:
        """An established association proposing ``abstract_syntaxes`` (default transfer
        syntaxes) and, for C-GET, ``storage`` SOP classes in the SCP role, their C-STOREs going to
        ``receiver``. Released (or aborted on error) when the block ends."""
        from pynetdicom import build_role, evt

        ae = self._ae()
        for uid in abstract_syntaxes:
            ae.add_requested_context(uid)
        roles = []
        for uid in sorted(set(storage)):
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(uid, syntax)
            roles.append(build_role(uid, scp_role=True))
        if len(ae.requested_contexts) > MAX_CONTEXTS:
            raise DimseError(f"too many presentation contexts for {self.server}")
        handlers = [(evt.EVT_C_STORE, receiver)] if receiver is not None else []
        assoc = ae.associate(
            self.address.host,
            self.address.port,
            ae_title=self.address.aet,
            ext_neg=roles or None,
            evt_handlers=handlers or None,
        )
        if not assoc.is_established:
            raise self._refused(assoc)
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()

    def _refused(self, assoc: Association) -> PushError:
        if assoc.is_rejected:
            rsp = getattr(assoc.acceptor, "primitive", None)
            reason = getattr(rsp, "reason_str", None) or "no reason given"
            return DimseError(
                f"{self.server} rejected the association from AE title "
                f"{self.calling_aet!r} ({reason}); is {self.calling_aet!r} configured on the PACS?"
            )
        if assoc.is_aborted:
            return DimseError(f"{self.server} aborted the association request")
        return ServerUnreachableError(f"cannot reach the PACS {self.server}")

    # ------------------------------------------------------------------ services
    def echo(self) -> None:
        """C-ECHO (PS3.7 9.1.5): is the PACS there and does it accept fhirimg's AE title?

        A TCP connection is tried first, so that a PACS that is down fails within ``timeout``
        with a plain reason (connection refused, no route) instead of a DIMSE time-out.
        """
        try:
            with socket.create_connection(
                (self.address.host, self.address.port), timeout=self.timeout
            ):
                pass
        except OSError as exc:
            raise ServerUnreachableError(
                f"cannot reach the PACS {self.server}: {exc.strerror or exc}"
            ) from None
        with self.association([VERIFICATION]) as assoc:
            status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        if code != SUCCESS:
            raise DimseError(f"{self.server} answered C-ECHO with status {_hex(code)}")

    def find(self, identifier: Dataset) -> Iterator[Dataset]:
        """C-FIND (PS3.4 C.4.1) with the Study Root model: each matching identifier, as the PACS
        sends them. Raises :class:`DimseError` on a failure status or a lost connection."""
        with self.association([FIND_MODEL]) as assoc:
            for status, answer in assoc.send_c_find(identifier, FIND_MODEL):
                code = getattr(status, "Status", None)
                if code is None:
                    raise DimseError(f"{self.server}: C-FIND got no answer (connection lost?)")
                if code in (0xFF00, 0xFF01):
                    if answer is not None:
                        yield answer
                    continue
                if code != SUCCESS:
                    comment = getattr(status, "ErrorComment", None)
                    raise DimseError(
                        f"{self.server} refused a C-FIND at level "
                        f"{identifier.get('QueryRetrieveLevel', '?')}: status {_hex(code)}"
                        + (f" ({comment})" if comment else "")
                    )

    def get(
        self,
        identifier: Dataset,
        sop_class_uids: Iterable[str],
        folder: Path,
        mode: jsonio.Modes = jsonio.PRIVATE,
    ) -> Retrieved:
        """C-GET (PS3.4 C.4.3): the PACS sends the matching instances over this association;
        each is written into ``folder`` as it arrives. ``sop_class_uids`` are the storage SOP
        classes to accept (from the C-FIND answers)."""
        receiver = Receiver(folder, mode)
        with self.association([GET_MODEL], storage=sop_class_uids, receiver=receiver) as assoc:
            self._retrieve(assoc.send_c_get(identifier, GET_MODEL), receiver.result, "C-GET")
        return receiver.result

    def move(self, identifier: Dataset, destination: str) -> Retrieved:
        """C-MOVE (PS3.4 C.4.2) to the AE title ``destination``, which the PACS must know (host
        and port, docs/pacs.md); whoever listens there receives the instances."""
        result = Retrieved()
        with self.association([MOVE_MODEL]) as assoc:
            self._retrieve(assoc.send_c_move(identifier, destination, MOVE_MODEL), result, "C-MOVE")
        return result

    def _retrieve(
        self, answers: Iterator[tuple[Dataset, Dataset | None]], result: Retrieved, what: str
    ) -> None:
        for status, _ in answers:
            code = getattr(status, "Status", None)
            if code is None:
                raise DimseError(f"{self.server}: {what} got no answer (connection lost?)")
            if code == 0xFF00:
                continue
            failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
            result.failed = max(result.failed, failed)
            if code not in (SUCCESS, 0xB000):  # B000: some sub-operations failed
                comment = getattr(status, "ErrorComment", None)
                raise DimseError(
                    f"{self.server} refused a {what}: status {_hex(code)}"
                    + (f" ({comment})" if comment else "")
                )


def _hex(code: object) -> str:
    return f"0x{code:04X}" if isinstance(code, int) else "none"


__all__ = [
    "DEFAULT_CALLING_AET",
    "TRANSFER_SYNTAXES",
    "DimseClient",
    "Receiver",
    "Retrieved",
]
