"""JSON in and out: one serialisation for every file fhirimg writes, and atomic writes.

Output is deterministic: keys keep the insertion order the builders chose (``resourceType`` first),
two-space indentation, a final newline. The same dict always gives the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson

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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over
    ``path`` (rename is atomic within one file system).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
