"""JSON in and out: one serialisation for every file fhirimg writes, and atomic writes.

Output is deterministic: keys keep the insertion order the builders chose (``resourceType`` first),
two-space indentation, a final newline. The same dict always gives the same bytes.

:data:`JSON` and :data:`JSONMapping` are the one spelling of "a JSON object" in type hints
(resources, bundles, DICOM JSON datasets); this module imports nothing from fhirimg but the
exception tree (a leaf), so every layer, the FHIR release seam included, may import them.

Everything written here is owner-only unless asked otherwise (:class:`Modes`): the files hold
patient data.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from fhirimg.errors import InputError

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


@dataclass(frozen=True)
class Modes:
    """The permission bits of the files and folders fhirimg creates.

    What fhirimg writes holds patient data (bundles, ``.dcm`` copies, report.json, the push
    journal), so the default, :data:`PRIVATE`, is owner-only whatever the umask: files 0600,
    folders 0700. :data:`GROUP_READABLE` (``--group-readable``) is for shared research folders:
    files 0640, folders 0750. The bits are set exactly (``fchmod``), not narrowed by the umask.
    Only what fhirimg creates gets them; existing folders keep theirs.

    >>> oct(PRIVATE.file), oct(GROUP_READABLE.folder)
    ('0o600', '0o750')
    """

    file: int = 0o600
    folder: int = 0o700


PRIVATE = Modes()
GROUP_READABLE = Modes(file=0o640, folder=0o750)


def modes(group_readable: bool) -> Modes:
    """:data:`GROUP_READABLE` or :data:`PRIVATE`."""
    return GROUP_READABLE if group_readable else PRIVATE


def make_folder(path: Path, mode: Modes = PRIVATE) -> None:
    """Create ``path`` and its missing parents with ``mode.folder``; existing folders are kept
    as they are.

    A folder fhirimg writes into must be a real folder, not a symbolic link planted there (its
    target would receive patient data): raises :class:`~fhirimg.errors.InputError` when ``path``
    is a symbolic link. Links further up (``--out`` given as a link) are the user's choice.
    """
    if path.is_symlink():
        raise InputError(f"refusing to write into {path}: it is a symbolic link")
    missing: list[Path] = []
    here = path
    while not here.exists() and not here.is_symlink() and here != here.parent:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode.folder)
        except FileExistsError:
            if folder.is_symlink() or not folder.is_dir():
                raise
            continue  # made at the same moment by another worker: fine, it is a folder
        os.chmod(folder, mode.folder)  # mkdir's mode is narrowed by the umask
    if not path.is_dir():
        raise InputError(f"cannot write into {path}: not a folder")


def open_temp(path: Path, mode: Modes = PRIVATE) -> tuple[BinaryIO, Path]:
    """A new temporary file beside ``path`` (same folder, so a rename onto ``path`` is atomic),
    open for writing, with ``mode.file`` (owner-only by default: mkstemp's own 0600). The folder
    is created with :func:`make_folder` when missing."""
    if not path.parent.is_dir():
        make_folder(path.parent, mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, mode.file)
    return os.fdopen(fd, "wb"), Path(tmp)


@contextmanager
def atomic_writer(path: Path, durable: bool = False, mode: Modes = PRIVATE) -> Iterator[BinaryIO]:
    """A file handle whose content replaces ``path`` only when the block ends without error.

    Readers see the old file or the whole new one, never half: the bytes go to a temporary file in
    the same folder, which is renamed over ``path`` (atomic within one file system). An interrupted
    run leaves at most a ``.tmp`` file, never a cut bundle. ``durable`` also flushes the file to
    disk before the rename (fsync): slower, and only needed to survive a power cut, since a re-run
    rewrites everything anyway.

    The rename replaces whatever ``path`` was, a symbolic link included (the link, not its
    target): a link planted at ``path`` never receives the bytes. The new file has ``mode``
    (:class:`Modes`; owner-only by default).
    """
    fh, tmp = open_temp(path, mode)
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


def atomic_write(path: Path, data: bytes, durable: bool = False, mode: Modes = PRIVATE) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path, durable, mode) as fh:
        fh.write(data)


class SpaceReserve:
    """Disk space set aside for the writes that must happen when the disk fills up.

    A run that finds the disk full while writing bundles must still record what it did (the
    catalog, ``report.json``): :meth:`hold` allocates ``size`` bytes in a file at ``path``
    (``posix_fallocate``: real blocks, not a sparse file), :meth:`release` deletes it, freeing
    them for those writes. Where the space cannot be set aside (already full, a file system
    without fallocate), :meth:`hold` returns False and the run goes on without.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "reserve"
    >>> reserve = SpaceReserve(path, 4096)
    >>> reserve.hold(), path.stat().st_size
    (True, 4096)
    >>> reserve.release(), path.exists()
    (None, False)
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    def hold(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return False
        try:
            os.posix_fallocate(fd, 0, self.size)
            return True
        except (OSError, AttributeError):  # no space, no fallocate (not POSIX)
            self.path.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
