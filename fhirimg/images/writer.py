"""The pixel study writer: the two "images in FHIR" paths for one study, Binary (the DICOM bytes)
and rendered images.

:func:`write_study` writes a study's bundle(s) with, after the Patient / Endpoint / ImagingStudy
head, one Binary entry per instance (``--binary inline``) or one ``.dcm`` file per instance beside
the bundle (``--binary beside``), then one rendered image per instance or series (R4 Media, R5
DocumentReference). Entry order: Patient, Endpoint, ImagingStudy, Binary entries, rendered images.

References and split bundles (``--max-entries`` / ``--max-bundle-mb``):

- In the first bundle, Binary and image entries reference the Patient and the ImagingStudy by
  their ``urn:uuid:`` fullUrls. In ``<stem>.part-N.json`` they use conditional references
  (``Patient?identifier=...``, or ``Patient/<id>`` when the Patient has the deterministic id used
  without a Patient ID; ``ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>``), which resolve
  on the server once the first bundle is there.
- The instance-binary extension on ``ImagingStudy.series.instance`` points at the Binary entry's
  fullUrl (``urn:uuid:<binary id>``) when the study is one bundle, and at ``Binary/<id>`` (the
  deterministic id of ``PUT Binary/<id>``) in beside mode or whenever a split limit is set, since
  the Binary may then land in another part.

Memory follows one chunk of a file for Binaries (base64 is streamed into the bundle file) and one
instance for rendering, never the study.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fhirimg import ids, jsonio
from fhirimg.bundle import (
    DATA_PLACEHOLDER,
    EncodedEntry,
    SplitWriter,
    encode_entry,
    entry,
    study_bundle,
)
from fhirimg.errors import RenderError
from fhirimg.fhir import Release
from fhirimg.fhir import release as get_release
from fhirimg.fhir.base import ImageParts
from fhirimg.images import rendered as media
from fhirimg.images.binary import (
    BinaryMode,
    DicomSource,
    binaries_folder,
    binary_full_url,
    binary_id,
    binary_resource,
    dicom_source,
    link_extension,
    write_beside,
)
from fhirimg.jsonio import JSON
from fhirimg.mapping import DCM, MapOptions, Notes, sort_records
from fhirimg.measurements import entry_owners
from fhirimg.model import InstanceRecord
from fhirimg.objects import is_url, open_input
from fhirimg.partial import Attempt, settle
from fhirimg.safetext import redact_url
from fhirimg.validate import resource_errors
from fhirimg.validate.validator import resource_error_findings

if TYPE_CHECKING:
    from fhirimg.deid import DeidOptions
    from fhirimg.images.inline import WrittenAhead
    from fhirimg.images.render import Rendered


@dataclass(frozen=True)
class PixelOptions:
    """What of the pixels goes into FHIR, and how bundles are split."""

    binary: BinaryMode | None = None
    media: media.MediaOptions | None = None
    max_entries: int | None = None
    """At most this many entries per bundle file (the head entries count in the first)."""
    max_bytes: int | None = None
    """At most this many bytes per bundle file (a single larger entry gets a file of its own)."""
    strict: bool = False
    """Validate with every layer (FHIRPath invariants too), not only the fast ones."""
    modes: jsonio.Modes = jsonio.PRIVATE
    """Permissions of the files and folders written (owner-only unless group-readable)."""
    all_or_nothing: bool = False
    """Any validation error fails the study; by default the instances the errors are traced to
    are left out (:mod:`fhirimg.partial`)."""
    deid: DeidOptions | None = None
    """De-identify (:mod:`fhirimg.deid.pixels` makes the files this writer reads)."""
    withheld: frozenset[str] = frozenset()
    """SOP Instance UIDs that get no Binary and no rendered image (burned-in text, :mod:`fhirimg.deid`)."""
    storage: tuple[tuple[str, str], ...] = ()
    """fsspec options of object inputs (``s3://...`` record paths, :func:`fhirimg.objects.open_input`)."""

    @property
    def active(self) -> bool:
        return self.binary is not None or self.media is not None

    @property
    def split(self) -> bool:
        return self.max_entries is not None or self.max_bytes is not None


@dataclass
class StudyFiles:
    """What :func:`write_study` wrote for one study."""

    bundles: list[str] = field(default_factory=list)
    binaries: int = 0
    binary_bytes: int = 0
    media: int = 0
    media_failures: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of image files whose rendering failed."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of instance files left out because they are not valid."""


@dataclass(frozen=True)
class _Refs:
    """How entries refer to the Patient and the ImagingStudy: from the first bundle, or a part."""

    patient: str
    study: str


def _conditional(request: JSON) -> str | None:
    """A conditional reference that finds the resource an entry creates (``Type?query``)."""
    url = str(request.get("url", ""))
    if request.get("method") == "POST" and request.get("ifNoneExist"):
        return f"{url}?{request['ifNoneExist']}"
    if request.get("method") == "PUT":
        return url  # Type/id or Type?query: either finds it again
    return None


def write_study(
    records: list[InstanceRecord],
    mapping: MapOptions,
    fhir_version: str,
    out_dir: Path,
    options: PixelOptions,
    render_pool: Executor | None = None,
    render_jobs: int = 1,
) -> StudyFiles:
    """Write one study's bundle(s) with Binaries and/or rendered images (module docstring).

    Never raises for a bad image: rendering failures go to ``media_failures``. Instances the
    head's validation errors are traced to are left out, with their Binaries and images
    (``dropped``, :mod:`fhirimg.partial`); a head that fails validation all the same means
    nothing is written (``errors``). With ``render_pool`` (of ``render_jobs`` processes), images
    are rendered in its processes, a few ahead of the one being written
    (:func:`rendered_in_order`); the output is the same.
    """
    release = get_release(fhir_version)
    out = StudyFiles()
    recs = sort_records(records)
    study_uid = recs[0].study_instance_uid
    name = ids.bundle_name(study_uid)

    # The head of all the records: laid out for the pool below, checked by the first attempt.
    built = [_head_bundle(recs, mapping, release, options)]
    # With a pool: the Binary entries written by its processes while the head is checked here
    # (fhirimg.images.inline); thrown away when the check changes the head.
    ahead = _binaries_ahead(recs, built[0][0], options, out_dir, name, render_pool, render_jobs)

    # Instances the head's errors are traced to are left out, with their Binaries and images
    # (fhirimg.partial); the head is built again without them.
    def head_of(rs: list[InstanceRecord]) -> Attempt[tuple[JSON, Notes]]:
        return _head(rs, mapping, release, options, built.pop() if built else None)

    try:
        settled = settle(recs, head_of, options.all_or_nothing)
    except BaseException:
        if ahead is not None:
            ahead.discard()
        raise
    out.dropped = settled.dropped
    recs = settled.records
    head, notes = settled.attempt.value
    out.warnings.extend(notes.items)
    if settled.errors:
        if ahead is not None:
            ahead.discard()
        out.errors.extend(settled.errors)
        return out
    entries = head["entry"]
    first = _Refs(entries[0]["fullUrl"], entries[-1]["fullUrl"])
    later = _Refs(
        _conditional(entries[0]["request"]) or entries[0]["fullUrl"],
        _conditional(entries[-1]["request"]) or entries[-1]["fullUrl"],
    )

    if (
        ahead is not None
        and not settled.dropped
        and _binary_shape(options, release, first, recs[0].sop_instance_uid)
    ):
        writer = ahead.writer
    else:
        if ahead is not None:
            ahead.discard()
            ahead = None
        writer = SplitWriter(out_dir, name, options.max_entries, options.max_bytes, options.modes)
    try:
        encoded = [encode_entry(item) for item in entries]
        if ahead is not None and not ahead.take(encoded):
            ahead.discard()
            ahead = None
            writer = SplitWriter(
                out_dir, name, options.max_entries, options.max_bytes, options.modes
            )
        if ahead is None:
            for item in encoded:
                writer.add_head(item)
        if options.max_bytes is not None and writer.parts[0].size > options.max_bytes:
            out.warnings.append("Patient, Endpoint and ImagingStudy alone exceed --max-bundle-mb")
        shown = [r for r in recs if r.sop_instance_uid not in options.withheld]
        if ahead is not None:
            for source in ahead.sources:
                _note_source(source, out)
            out.binaries = len(ahead.entries)
            out.binary_bytes = sum(source.length for source in ahead.sources)
        elif options.binary is not None:
            folder = out_dir / binaries_folder(name)
            _binaries(shown, options, release, writer, folder, first, later, out)
        if options.media is not None:
            _rendered(
                shown,
                options.media,
                mapping,
                release,
                writer,
                first,
                later,
                out,
                options.strict,
                render_pool,
                render_jobs,
                options.storage,
            )
        out.bundles = writer.commit()
    except BaseException:
        if ahead is not None:
            ahead.discard()  # its tasks done first: nothing writes into a file once removed
        else:
            writer.abort()
        raise
    out.warnings.extend(writer.notes)
    return out


def _head_bundle(
    recs: list[InstanceRecord], mapping: MapOptions, release: Release, options: PixelOptions
) -> tuple[JSON, Notes]:
    """The head bundle (Patient, Endpoint, ImagingStudy with the Binary links) of ``recs``."""
    extensions: dict[str, list[JSON]] = {}
    if options.binary is not None:
        by_full_url = options.binary == BinaryMode.INLINE and not options.split
        for rec in recs:
            sop = rec.sop_instance_uid
            if sop in options.withheld:
                continue
            ref = binary_full_url(sop) if by_full_url else f"Binary/{binary_id(sop)}"
            extensions[sop] = [link_extension(ref)]
    return study_bundle(recs, mapping, release, extensions)


def _head(
    recs: list[InstanceRecord],
    mapping: MapOptions,
    release: Release,
    options: PixelOptions,
    built: tuple[JSON, Notes] | None = None,
) -> Attempt[tuple[JSON, Notes]]:
    """The head bundle of ``recs`` (:func:`_head_bundle`, or ``built`` when that is made of
    them already), validated as :func:`_skeleton` (each Binary entry in it belongs to its
    instance)."""
    head, notes = built or _head_bundle(recs, mapping, release, options)
    skeleton = _skeleton(head, recs, options)
    errors = resource_error_findings(skeleton, release.name, options.strict, _known(recs, options))
    owners = {binary_full_url(r.sop_instance_uid): r for r in recs} if skeleton is not head else {}
    owners |= entry_owners(recs)  # SR measurements belong to their SR instance
    return Attempt(skeleton, errors, (head, notes), owners)


def _skeleton(head: JSON, recs: list[InstanceRecord], options: PixelOptions) -> JSON:
    """The head bundle plus data-free Binary entries for the inline Binaries streamed after it,
    so that the check sees the ImagingStudy's ``urn:uuid:`` links resolve as in the file."""
    if options.binary != BinaryMode.INLINE or options.split:
        return head
    patient = head["entry"][0]["fullUrl"]
    extra = [
        entry(
            binary_full_url(r.sop_instance_uid),
            binary_resource(binary_id(r.sop_instance_uid), patient, None),
            {"method": "PUT", "url": f"Binary/{binary_id(r.sop_instance_uid)}"},
        )
        for r in recs
        if r.sop_instance_uid not in options.withheld
    ]
    return {**head, "entry": [*head["entry"], *extra]}


def _known(recs: list[InstanceRecord], options: PixelOptions) -> set[str]:
    """Ids of Binaries that live outside the head bundle: beside it, or in later part files."""
    if options.binary is None or (options.binary == BinaryMode.INLINE and not options.split):
        return set()
    return {
        binary_id(r.sop_instance_uid) for r in recs if r.sop_instance_uid not in options.withheld
    }


def _binaries(
    recs: list[InstanceRecord],
    options: PixelOptions,
    release: Release,
    writer: SplitWriter,
    folder: Path,
    first: _Refs,
    later: _Refs,
    out: StudyFiles,
) -> None:
    mode, strict = options.binary, options.strict
    shape_errors: list[str] | None = None
    for rec in recs:
        source = dicom_source(rec.path, rec.sop_class_uid, rec.sop_instance_uid, options.storage)
        _note_source(source, out)
        bid = binary_id(rec.sop_instance_uid)
        if mode == BinaryMode.BESIDE:
            out.binary_bytes += write_beside(folder, bid, source, options.modes)
            out.binaries += 1
            continue

        def build(in_first: bool, bid: str = bid, source: DicomSource = source) -> EncodedEntry:
            refs = first if in_first else later
            return _binary_entry(bid, source, refs.patient, options.deid is not None)

        # The resource is valid by construction except its data, which is base64 we encode.
        # Checked as the release being written: R4 (R4B models) and R5 Binary have the same
        # elements (contentType, securityContext, data), so either accepts the same resource.
        # The Binaries of a study differ only in their id, a UUID (36 of [0-9a-f-]: always a
        # valid id), so the first one's check answers for all: checking each again cost more
        # than encoding its bytes (profile of --binary inline, 300 CT slices).
        if shape_errors is None:
            check = binary_resource(bid, first.patient, None)
            shape_errors = resource_errors(check, release.name, strict)
        if shape_errors:
            out.errors.extend(shape_errors)
            continue
        writer.place(build)
        out.binaries += 1
        out.binary_bytes += source.length


def _note_source(source: DicomSource, out: StudyFiles) -> None:
    """The warning a Binary's bytes get when they are not the file's bytes exactly."""
    if source.mended:
        out.warnings.append(
            "a DICOM file whose File Meta (0002,0003)/(0002,0002) named another instance "
            "than its dataset got a File Meta group naming the dataset's in its Binary "
            "(dataset bytes unchanged)"
        )
    elif not source.exact:
        out.warnings.append(
            "a DICOM file without preamble/File Meta got a PS3.10 header in its Binary "
            "(dataset bytes unchanged)"
        )


def _binary_entry(bid: str, source: DicomSource, patient: str, deid: bool) -> EncodedEntry:
    """The Binary entry of one instance, its data streamed from ``source`` as base64."""
    item = entry(
        "urn:uuid:" + bid,
        _mark(binary_resource(bid, patient, DATA_PLACEHOLDER), deid),
        {"method": "PUT", "url": f"Binary/{bid}"},
    )
    # A DicomSource is a bundle DataSource: its bytes stream into Binary.data as base64.
    return encode_entry(item, source)


def _binary_shape(
    options: PixelOptions, release: Release, first: _Refs, sop_instance_uid: str
) -> bool:
    """Whether a study's Binary entries pass the check :func:`_binaries` makes of the first."""
    check = binary_resource(binary_id(sop_instance_uid), first.patient, None)
    return not resource_errors(check, release.name, options.strict)


def _binaries_ahead(
    recs: list[InstanceRecord],
    head: JSON,
    options: PixelOptions,
    out_dir: Path,
    name: str,
    pool: Executor | None,
    jobs: int,
) -> WrittenAhead | None:
    """Start the Binary entries of a study written by ``pool`` (:mod:`fhirimg.images.inline`)
    after ``head``, the head bundle of all of ``recs``; None when the study is written the one-process
    way: no pool, no inline Binaries, a split bundle, de-identification (its copies of the
    files are made as the study is written)."""
    if pool is None or options.binary != BinaryMode.INLINE or options.split:
        return None
    if options.deid is not None or options.withheld:
        return None
    from fhirimg.images.inline import write_ahead

    encoded = [encode_entry(item) for item in head["entry"]]
    patient = head["entry"][0]["fullUrl"]
    sources = [
        dicom_source(r.path, r.sop_class_uid, r.sop_instance_uid, options.storage) for r in recs
    ]
    entries = [
        _binary_entry(binary_id(r.sop_instance_uid), source, patient, False)
        for r, source in zip(recs, sources, strict=True)
    ]
    writer = SplitWriter(out_dir, name, None, None, options.modes)
    try:
        return write_ahead(writer, encoded, entries, sources, pool, jobs)
    except BaseException:
        writer.abort()
        raise


def _rendered(
    recs: list[InstanceRecord],
    opts: media.MediaOptions,
    mapping: MapOptions,
    release: Release,
    writer: SplitWriter,
    first: _Refs,
    later: _Refs,
    out: StudyFiles,
    strict: bool,
    render_pool: Executor | None = None,
    render_jobs: int = 1,
    storage: tuple[tuple[str, str], ...] = (),
) -> None:
    # numpy, Pillow and pydicom's pixel handlers: imported once rendering is asked for, so that
    # the options of a run without --media (PixelOptions, this module) cost nothing at start-up
    from fhirimg.images.render import Rendered

    rtype = release.rendered_image_type
    spool: list[Callable[[bool], EncodedEntry]] = []  # image resources after their Binaries
    reps = media.representatives(recs, opts.per)
    context = _ImageContext(
        opts, release.name, strict, first.patient, first.study, mapping.timezone, storage
    )
    for rec, done in zip(
        reps, prepared_in_order(reps, context, render_pool, render_jobs), strict=True
    ):
        if isinstance(done, str):
            out.media_failures.append((rec.path, done))
            continue
        if done is None:  # no pixel data: not an image, not an error
            continue
        rendered, att = done.rendered, done.attachment
        out.warnings.extend(rendered.notes)
        frame = rendered.frame
        url = att.get("url")
        if url is not None:
            writer.place(_image_binary(rec, rendered, first, later, mapping.pseudonymised))

        def build(
            in_first: bool, rec: InstanceRecord = rec, r: Rendered = rendered, att: JSON = att
        ) -> EncodedEntry:
            refs = first if in_first else later
            parts, _ = media.image_parts(rec, r, att, refs.patient, refs.study, mapping.timezone)
            resource = _mark(release.rendered_image(parts), mapping.pseudonymised)
            item = entry(
                media.full_url(rtype, rec.sop_instance_uid, r.frame),
                resource,
                media.request(rtype, rec.sop_instance_uid, r.frame),
            )
            return encode_entry(item)

        out.warnings.extend(done.warnings)
        if done.errors:
            out.media_failures.append((rec.path, f"{rtype} not valid: {'; '.join(done.errors)}"))
            continue
        if url is None:
            writer.place(build)  # inline data: written now, the rendered bytes are dropped after
        else:
            # data-free resources wait until every image Binary is written (entry order);
            # drop the pixels so that the spool stays small
            small = Rendered(
                b"", rendered.content_type, rendered.width, rendered.height, frame, rendered.frames
            )
            spool.append(functools.partial(build, r=small))
        out.media += 1
    for build_later in spool:
        writer.place(build_later)


def _mark(resource: JSON, pseudonymised: object) -> JSON:
    """``resource`` with ``meta.security`` PSEUDED when the data is de-identified."""
    if not pseudonymised:
        return resource
    from fhirimg.deid.labels import labelled

    return labelled(resource)


RENDER_AHEAD = 2
"""Images rendered ahead of the one being written, per process of the pool: enough to keep
every process busy, few enough that memory follows a handful of images, not the study."""


@dataclass(frozen=True)
class _ImageContext:
    """What a render process needs to build and check a study's rendered-image resources."""

    opts: media.MediaOptions
    release: str
    strict: bool
    patient: str  # the first bundle's references, those the resource is checked with
    study: str
    timezone: str | None
    storage: tuple[tuple[str, str], ...] = ()  # fsspec options of object inputs


@dataclass(frozen=True)
class Prepared:
    """One rendered frame, its Attachment, and what checking its resource found."""

    rendered: Rendered
    """The image; its bytes dropped when the Attachment holds them (inline data)."""
    attachment: JSON
    warnings: tuple[str, ...]
    errors: tuple[str, ...]
    """The first three errors of the rendered-image resource (none: it is valid)."""


def prepare_one(rec: InstanceRecord, context: _ImageContext) -> Prepared | str | None:
    """Render one instance and build and check its rendered-image resource (a pool task): what
    :func:`render_one` answers, with the Attachment and the check's findings.

    Done where the image is rendered: building and checking a Media (its few hundred KB of
    base64 data decoded by three layers) cost ~7 ms an image in the process writing the study,
    one process for all the study's images (profile of ``convert --media``, 300 CT slices).
    """
    opts = context.opts
    rendered = render_one(rec.path, opts.frame, opts.size, opts.fmt, context.storage)
    if rendered is None or isinstance(rendered, str):
        return rendered
    url = None
    if opts.content == media.MediaContent.BINARY:
        url = f"Binary/{media.image_binary_id(rec.sop_instance_uid, rendered.frame)}"
    att = media.attachment(rendered, media.title(rec, rendered), url)
    parts, warnings = media.image_parts(
        rec, rendered, att, context.patient, context.study, context.timezone
    )
    release = get_release(context.release)
    errors = resource_errors(release.rendered_image(parts), release.name, context.strict)
    if url is None:  # the Attachment holds the bytes as base64: not sent back twice
        rendered = dataclasses.replace(rendered, data=b"")
    return Prepared(rendered, att, tuple(warnings), tuple(errors[:3]))


def prepared_in_order(
    recs: Sequence[InstanceRecord],
    context: _ImageContext,
    pool: Executor | None,
    jobs: int = 1,
) -> Iterator[Prepared | str | None]:
    """:func:`prepare_one` of each of ``recs``, in order, in ``pool`` as
    :func:`rendered_in_order` renders."""
    return _in_order(prepare_one, [(rec, context) for rec in recs], pool, jobs)


def rendered_in_order(
    recs: Sequence[InstanceRecord],
    opts: media.MediaOptions,
    pool: Executor | None,
    jobs: int = 1,
    storage: tuple[tuple[str, str], ...] = (),
) -> Iterator[Rendered | str | None]:
    """The rendering of each of ``recs``, in order: a :class:`Rendered`, None (no pixel data) or
    the reason it failed. With ``pool`` (of ``jobs`` processes), in its processes, at most
    :data:`RENDER_AHEAD` per process in flight (rendering is most of the time of ``--media``: PNG encoding above all,
    then decoding and windowing; profile of 300 CT slices)."""
    args = [(rec.path, opts.frame, opts.size, opts.fmt, storage) for rec in recs]
    return _in_order(render_one, args, pool, jobs)


_T = TypeVar("_T")


def _in_order(
    task: Callable[..., _T], args: list[tuple[Any, ...]], pool: Executor | None, jobs: int
) -> Iterator[_T]:
    """``task(*a)`` for each of ``args``, in order; in ``pool``, :data:`RENDER_AHEAD` per
    process in flight."""
    if pool is None:
        for item in args:
            yield task(*item)
        return
    ahead = RENDER_AHEAD * max(1, jobs)
    pending: deque[Future[_T]] = deque()
    try:
        for item in args:
            pending.append(pool.submit(task, *item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:  # the study stopped early (an error, a full disk): drop the rest
            fut.cancel()


def warm_render(fhir_version: str, opts: media.MediaOptions) -> None:
    """Load in this process what rendering and checking an image needs (Pillow's plugins,
    pydicom's pixel handlers, the release's models and the datatypes fhir.resources imports on
    first use), before the run's pool is forked: its processes then start with them instead of
    each loading them for its first image (~0.5 s a process, most of it the models, which this
    process loads anyway for the head; ``convert --media`` on two processes).
    """
    import PIL.Image
    import pydicom.pixels.processing  # noqa: F401 - what render_file imports on first use
    import pydicom.pixels.utils  # noqa: F401

    from fhirimg.images.render import FORMATS, Rendered

    PIL.Image.preinit()  # the common image plugins, PNG and JPEG among them
    release = get_release(fhir_version)
    sample = Rendered(b"\x00", FORMATS[opts.fmt], 1, 1, 1, 1)
    parts = ImageParts(
        identifiers=media.identifiers("1.2.3", 1),
        subject_ref="urn:uuid:00000000-0000-0000-0000-000000000000",
        study_ref="urn:uuid:00000000-0000-0000-0000-000000000001",
        modality={"system": DCM, "code": "OT"},
        attachment=media.attachment(sample, "warm-up", None),
        height=1,
        width=1,
        frames=None,
    )
    resource_errors(release.rendered_image(parts), release.name)


def render_one(
    path: str,
    frame: int | None,
    size: int | None,
    fmt: str,
    storage: tuple[tuple[str, str], ...] = (),
) -> Rendered | str | None:
    """Render one file (a pool task): the image, None without pixel data, or why not. An object
    URL is read through fsspec (:func:`fhirimg.objects.open_input`), one object at a time."""
    from fhirimg.images.render import render_file

    try:
        if is_url(path):
            try:
                obj = open_input(path, storage)
            except Exception as exc:  # the backend decides the type (botocore, aiohttp)
                return f"cannot read: {type(exc).__name__}: {exc}".replace(path, redact_url(path))
            with obj:
                return render_file(obj, frame=frame, size=size, fmt=fmt)
        return render_file(path, frame=frame, size=size, fmt=fmt)
    except RenderError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def _image_binary(
    rec: InstanceRecord,
    rendered: Rendered,
    first: _Refs,
    later: _Refs,
    pseudonymised: bool = False,
) -> Callable[[bool], EncodedEntry]:
    bid = media.image_binary_id(rec.sop_instance_uid, rendered.frame)
    data = base64.b64encode(rendered.data).decode("ascii")

    def build(in_first: bool) -> EncodedEntry:
        refs = first if in_first else later
        resource = {
            "resourceType": "Binary",
            "id": bid,
            "contentType": rendered.content_type,
            "securityContext": {"reference": refs.patient},
            "data": data,
        }
        resource = _mark(resource, pseudonymised)
        return encode_entry(
            entry("urn:uuid:" + bid, resource, {"method": "PUT", "url": f"Binary/{bid}"})
        )

    return build
