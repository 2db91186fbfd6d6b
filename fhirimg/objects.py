"""DICOM objects in object storage (``s3://``, ``gs://``, ``file://`` URLs, through fsspec) as a
source of ``convert``, and an output folder uploaded to object storage.

- :func:`list_objects` lists every object under the given URLs (a prefix is listed recursively);
  a listing that fails (no such bucket, refused credentials, an endpoint that does not answer)
  raises :class:`~fhirimg.errors.StorageError`: the run cannot start (exit 3).
- :func:`read_object` reads one object's header with the parser of local files
  (:func:`fhirimg.scan.read_header`), fed by ranged reads: the first 256 KiB in one GET, more only
  when the header is longer. An object that cannot be read is a failed file, with the reason.
  :func:`read_many` keeps several such reads in flight (threads), in order.
- :func:`object_source` is the :data:`fhirimg.convert.RecordSource` of ``convert_records``:
  objects read in batches, in the run's executor (the local pool or the Dask cluster), at most a
  window of batches in flight.
- :func:`upload_folder` copies an output folder's files (not its private ``.fhirimg/`` state) to a
  URL prefix, one PUT per file; a PUT of the same name replaces the object, so a retry is
  idempotent.

Credentials come from the backend's usual places (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE``,
``GOOGLE_APPLICATION_CREDENTIALS``, instance roles) or ``--storage-option KEY=VALUE``; neither is
ever printed: messages name a URL without its credentials (:func:`fhirimg.safetext.redact_url`).
fsspec and the backends (s3fs, gcsfs) are optional extras, imported only here, only when used.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from fhirimg.errors import StorageError
from fhirimg.group import PackedRecord
from fhirimg.model import FileProblem, FileStatus, InstanceRecord
from fhirimg.safetext import redact_url
from fhirimg.tasks import batched, bounded

log = logging.getLogger(__name__)

StorageOptions = Mapping[str, str]
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_BATCH = 64
_FIRST_READ = 256 * 1024  # scan's first read: one ranged GET


def is_url(path: str) -> bool:
    """Whether a convert input or output names object storage (``scheme://...``), not a path.

    >>> is_url("s3://bucket/dicom/"), is_url("file:///data"), is_url("/data/dicom"), is_url("C:/x")
    (True, True, False, False)
    """
    scheme, sep, _ = path.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").isalnum()


def _install_hint(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    extra = _EXTRAS.get(scheme, "s3")
    return f"{scheme}:// URLs need fsspec and its backend: pip install 'fhirimg[{extra}]'"


def filesystem(url: str, options: StorageOptions) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it; :class:`StorageError` naming the
    pip command when fsspec or the backend is missing."""
    try:
        fsspec: Any = importlib.import_module("fsspec")
        fs, path = fsspec.core.url_to_fs(url, **dict(options))
    except ImportError:
        raise StorageError(_install_hint(url)) from None
    except ValueError as exc:  # an unknown protocol, a bad option
        raise StorageError(f"cannot use {redact_url(url)}: {exc}") from None
    return fs, str(path)


def open_input(path: str, storage: Sequence[tuple[str, str]] = ()) -> IO[bytes]:
    """A source file's bytes, streamed: a local path opened as it is, an object URL through
    fsspec with the run's storage options (ranged GETs as the reader asks, never the whole
    object at once). Raises ``OSError`` (a missing object: ``FileNotFoundError``) or the
    backend's error; callers turn either into a failed study or image."""
    if not is_url(path):
        return open(path, "rb")
    fs, inner = filesystem(path, dict(storage))
    fh: IO[bytes] = fs.open(inner, "rb", block_size=_FIRST_READ, cache_type="readahead")
    return fh


def list_objects(urls: Sequence[str], options: StorageOptions) -> Iterator[str]:
    """Every object under ``urls`` (an object, or a prefix listed recursively), sorted per URL,
    as full URLs. Raises :class:`StorageError` when a listing fails or finds nothing there."""
    for url in urls:
        fs, root = filesystem(url, options)
        protocol = url.partition("://")[0]
        try:
            if fs.isfile(root):
                names = [root]
            else:
                names = sorted(fs.find(root))
                if not names and not fs.isdir(root):
                    raise FileNotFoundError(root)
        except Exception as exc:  # botocore, aiohttp, OSError: the backend decides the type
            why = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
            raise StorageError(f"cannot list {redact_url(url)}: {why}") from None
        for name in names:
            yield f"{protocol}://{name}" if protocol != "file" else f"file://{name}"


def read_object(url: str, options: StorageOptions) -> InstanceRecord | FileProblem:
    """One object's DICOM header (:func:`fhirimg.scan.read_header`); never raises: an object that
    cannot be read is a failed file naming the reason."""
    from fhirimg.scan import read_header  # pydicom: only in runs (and workers) that read DICOM

    try:
        fs, path = filesystem(url, options)
        with fs.open(path, "rb", block_size=_FIRST_READ, cache_type="readahead") as fh:
            size = getattr(fh, "size", None)  # an object's, from the HEAD that opened it
            if not isinstance(size, int):
                size = int(fs.size(path))
            return read_header(url, fh, size)
    except Exception as exc:  # any backend error costs this object only
        why = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
        return FileProblem(url, FileStatus.FAILED, f"cannot read object: {why}")


READS_IN_FLIGHT = 16
"""Object reads one task keeps in flight: an object store answers each ranged GET after tens of
milliseconds, which one read at a time would spend waiting (issue 13: many reads per worker)."""


def read_many(
    urls: Sequence[str], options: StorageOptions
) -> Iterator[InstanceRecord | FileProblem]:
    """:func:`read_object` of each of ``urls``, in their order, with up to
    :data:`READS_IN_FLIGHT` of them at a time on threads (the GIL is released while a read waits
    on the network; parsing a header is short)."""
    if len(urls) < 2:
        yield from (read_object(url, options) for url in urls)
        return
    with ThreadPoolExecutor(
        max_workers=min(READS_IN_FLIGHT, len(urls)), thread_name_prefix="fhirimg-read"
    ) as pool:
        yield from pool.map(lambda url: read_object(url, options), urls)


def read_objects(urls: list[str], options: dict[str, str]) -> list[PackedRecord | FileProblem]:
    """Worker task: read a batch of objects; records come back packed (pickled once, here)."""
    return [
        item if isinstance(item, FileProblem) else PackedRecord.of(item)
        for item in read_many(urls, options)
    ]


def object_source(urls: Sequence[str], options: StorageOptions, window: int = 8) -> Any:
    """A :data:`fhirimg.convert.RecordSource` over the objects under ``urls``."""
    opts = dict(options)

    def source(executor: Executor | None) -> Iterator[Sequence[PackedRecord | FileProblem]]:
        batches = ((batch, opts) for batch in batched(list_objects(urls, opts), _BATCH))
        yield from bounded(executor, read_objects, batches, window)

    return source


def upload_folder(folder: Path, url: str, options: StorageOptions) -> int:
    """Copy every file under ``folder`` but its private state (``.fhirimg/``) to the prefix
    ``url``, keeping relative names; returns the number of files. Raises :class:`StorageError`
    when a PUT fails (what was put stays; a re-run puts the same names again)."""
    fs, root = filesystem(url, options)
    count = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] == ".fhirimg":
            continue
        target = f"{root.rstrip('/')}/{rel.as_posix()}"
        try:
            fs.put_file(str(path), target)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))
            raise StorageError(
                f"cannot write {rel.as_posix()} to {redact_url(url)}: {why}"
            ) from None
        count += 1
    return count
