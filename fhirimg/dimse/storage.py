"""Received instances (C-STORE: from a C-GET, a C-MOVE or a sender) as PS3.10 files.

Each instance is written atomically (a temporary file renamed into place: a reader never sees half
an instance) and owner-only by default, since it holds patient data. The file is the preamble,
the File Meta Information group the receiver writes (PS3.10 7.1: the meta group belongs to the
file, not to the object) and the dataset exactly as it came over the network, in the transfer
syntax of the presentation context.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fhirimg import jsonio

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Status codes of a C-STORE response (PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000


def instance_name(sop_instance_uid: str) -> str:
    """The file name of a received instance: its SOP Instance UID (0008,0018), or a digest of it
    when it is not a well-formed UID (it comes from the network: never a path).

    >>> instance_name("1.2.840.99")
    '1.2.840.99.dcm'
    >>> instance_name("../../etc/passwd")[:4], len(instance_name("../x"))
    ('bad-', 72)
    """
    uid = sop_instance_uid.strip("\0 ")
    if _UID.match(uid) and len(uid) <= 64:
        return f"{uid}.dcm"
    return "bad-" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest() + ".dcm"


def write_instance(
    folder: Path, sop_instance_uid: str, data: bytes, mode: jsonio.Modes = jsonio.PRIVATE
) -> Path:
    """Write one received instance (its whole PS3.10 bytes) into ``folder`` atomically; the
    folder is made with ``mode`` when missing. Returns the file's path."""
    jsonio.make_folder(folder, mode)
    path = folder / instance_name(sop_instance_uid)
    jsonio.atomic_write(path, data, mode=mode)
    return path


__all__ = ["instance_name", "write_instance"]
