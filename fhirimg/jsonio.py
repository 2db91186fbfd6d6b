"""JSON in and out: one serialisation for every file fhirimg writes, and atomic writes.

Output is deterministic: keys keep the insertion order the builders chose (``resourceType`` first),
two-space indentation, a final newline. The same dict always gives the same bytes.

:data:`JSON` and :data:`JSONMapping` are the one spelling of "a JSON object" in type hints
(resources, bundles, DICOM JSON datasets); this module imports nothing from fhirimg, so every layer,
the FHIR release seam included, may import them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson

JSON = dict[str, Any]
"""A JSON object fhirimg builds or owns (a FHIR resource, an entry, a bundle): mutable."""

JSONMapping = Mapping[str, Any]
"""A JSON object only read (a parsed server reply, a DICOM JSON dataset): read-only view."""

_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` the way every fhirimg file is written.

    >>> dumps({"resourceType": "Patient", "id": "a"})
    b'{\\n  "resourceType": "Patient",\\n  "id": "a"\\n}\\n'
    """
    return orjson.dumps(obj, option=_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Parse JSON bytes or text."""
    return orjson.loads(data)


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def open_temp(path: Path) -> tuple[BinaryIO, Path]:
    """A new temporary file beside ``path`` (same folder, so a rename onto ``path`` is atomic),
    open for writing, with the mode an ordinary new file gets (mkstemp alone gives 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    return os.fdopen(fd, "wb"), Path(tmp)


@contextmanager
def atomic_writer(path: Path, durable: bool = False) -> Iterator[BinaryIO]:
    """A file handle whose content replaces ``path`` only when the block ends without error.

    Readers see the old file or the whole new one, never half: the bytes go to a temporary file in
    the same folder, which is renamed over ``path`` (atomic within one file system). An interrupted
    run leaves at most a ``.tmp`` file, never a cut bundle. ``durable`` also flushes the file to
    disk before the rename (fsync): slower, and only needed to survive a power cut, since a re-run
    rewrites everything anyway.
    """
    fh, tmp = open_temp(path)
    try:
        with fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, durable) as fh:
        fh.write(data)
