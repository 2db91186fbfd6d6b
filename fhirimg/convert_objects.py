"""``convert`` with object storage: inputs that are URLs (``s3://bucket/prefix``), an output that
is a URL, or both (docs/scale-out.md).

- URL inputs are listed and read through :mod:`fhirimg.objects` as the record source of
  :func:`fhirimg.convert.convert_records` (in the local pool or on the Dask cluster): grouping,
  duplicates, bundles and ``report.json`` as for files; every object ends up in the report, one
  that cannot be read as a failed file. There is no catalog (no stat to compare): every run reads
  every object.
- A URL output: the run writes into a private temporary folder (0700), then every file but the
  folder's private state is put under the URL, one PUT per file (a re-run puts the same names:
  idempotent), and the temporary folder is removed. ``report.json``'s ``summary.output`` names
  the URL (without credentials).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from fhirimg import jsonio
from fhirimg.convert import (
    REPORT_NAME,
    ConvertOptions,
    ConvertReport,
    Progress,
    _ndjson,
    convert,
    shuffled_report,
    write_shuffled_report,
)
from fhirimg.convert import convert_records as _convert_records
from fhirimg.objects import StorageOptions, is_url, object_source, upload_folder
from fhirimg.safetext import redact_url
from fhirimg.tasks import batched, bounded


def convert_objects(
    inputs: Sequence[str],
    options: ConvertOptions,
    storage: StorageOptions,
    out_url: str | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    """Convert ``inputs`` (all URLs, or all local paths) into ``options.out_dir``, or, with
    ``out_url``, into object storage. Raises :class:`~fhirimg.errors.StorageError` when a
    listing or an upload fails."""
    if out_url is None:
        return _run(inputs, options, storage, progress)
    staging = Path(tempfile.mkdtemp(prefix="fhirimg-out-"))  # 0700: mkdtemp's own
    try:
        report = _run(inputs, replace(options, out_dir=staging), storage, progress)
        shown = redact_url(out_url)
        _name_output(staging / REPORT_NAME, shown, options.modes)
        upload_folder(staging, out_url, storage)
        report.output = shown
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(
    inputs: Sequence[str],
    options: ConvertOptions,
    storage: StorageOptions,
    progress: Progress | None,
) -> ConvertReport:
    if inputs and all(is_url(i) for i in inputs):
        # the pixel writers (--binary, --media) read the objects' bytes with the same options
        options = replace(options, storage=tuple(sorted(storage.items())))
        if options.cluster is not None and options.deid is None and not options.select.active:
            # listed per prefix, read and shuffled by study on the workers
            return _objects_shuffled(list(inputs), options, dict(storage), progress)
        window = 2 * (options.jobs or 4)
        return _convert_records(object_source(inputs, storage, window), options, progress)
    return convert([Path(i) for i in inputs], options, progress)


def _name_output(report: Path, output: str, modes: jsonio.Modes) -> None:
    """``report.json`` with ``summary.output`` naming where the files went, not the staging
    folder (the same serialisation, so the same bytes for the same run)."""
    doc = jsonio.loads(report.read_bytes())
    doc["summary"]["output"] = output
    jsonio.atomic_write(report, jsonio.dumps(doc), mode=modes)


def _objects_shuffled(
    urls: list[str], opts: ConvertOptions, storage: dict[str, str], progress: Progress | None
) -> ConvertReport:
    """Convert the objects under ``urls`` on the Dask cluster of ``opts.cluster``: each top-level
    prefix listed by a task on the workers, the objects read and shuffled as files are. No
    catalog (as for object inputs on the local engine): ``report.json`` describes this run."""
    from fhirimg.catalog import CATALOG_NAME, Catalog
    from fhirimg.cluster import start
    from fhirimg.folderlock import STATE_DIR, FolderLock, clean_leftovers
    from fhirimg.shuffle import READ_BATCH, list_task, shuffled_on, top_level

    assert opts.cluster is not None
    opts.check()
    out_dir = Path(opts.out_dir)
    if not out_dir.is_dir():
        jsonio.make_folder(out_dir, opts.modes)
    with FolderLock(out_dir, opts.lock_wait):
        clean_leftovers(out_dir)
        if (out_dir / STATE_DIR / CATALOG_NAME).is_file():
            with Catalog.open(out_dir, full=opts.full) as catalog:
                catalog.use_options("written by a run without the catalog")
        objects, prefixes = top_level(urls, storage)  # a failed listing: no cluster started
        with shuffled_on(start(opts.cluster), out_dir) as shuffle:
            root = str(shuffle.scratch)
            jobs = ((i, url, storage, root) for i, url in enumerate(prefixes))
            chunks: list[str] = []
            for listed in bounded(shuffle.cluster, list_task, jobs, 2 * shuffle.threads + 2):
                chunks += listed  # chunk names: one per 1,000 objects
            batches: list[list[str] | str] = [*batched(objects, READ_BATCH), *chunks]
            shuffle.read(iter(batches), storage, progress, None)
            report = shuffled_report(shuffle, opts, out_dir, progress, None)
            report.ndjson = _ndjson(opts, out_dir, report)
            write_shuffled_report(report, opts, None)
            return report
