"""Layer 6, imaging rules: what DICOM and the ImagingStudy notes require beyond FHIR's own rules.

- DICOM UIDs (PS3.5 section 9.1): digits and dots, no component with a leading zero, at most 64
  characters (``ImagingStudy.series.uid``, ``.series.instance.uid``, the Study Instance UID).
- The Study Instance UID (0020,000D) is an identifier with system ``urn:dicom:uid`` and value
  ``urn:oid:<uid>`` (ImagingStudy.identifier notes).
- ``numberOfSeries`` / ``numberOfInstances`` are not smaller than the content (the spec allows them
  to be larger when not every series or instance is listed: that is a warning).
- Modality codings (0008,0060) use ``http://dicom.nema.org/resources/ontology/DCM``; SOP Class
  codings (0008,0016) use ``urn:ietf:rfc:3986`` with code ``urn:oid:<uid>``.
- Media (R4) / DocumentReference (R5) attachments and Binary agree on content type and size, an
  inline ``hash`` is the base64 SHA-1 of the data, and ``application/dicom`` data starts like a
  DICOM file (``DICM`` at offset 128, PS3.10 section 7.1).
- fhirimg's Binary link extension on ``ImagingStudy.series.instance`` points at an existing Binary:
  an entry of the bundle (``urn:uuid:`` fullUrl or ``Binary/<id>``) or ``<stem>.binaries/<id>.dcm``
  beside the bundle file, and that file's File Meta names the instance (PS3.10 section 7.1).
- Every series modality is in the study's list (0008,0061); a rendered image is ``image/*``, refers
  to its study and to one of its instances; R5 docRef-1/2 and the R5 rendered DocumentReference.

Each check reports under a rule of :mod:`.rules`, and reads the element paths the table gives for
the release where R4 and R5 differ.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Collection
from pathlib import Path
from typing import Any

from fhirimg.validate import measurement_checks, rules
from fhirimg.validate._base64 import strict_decode
from fhirimg.validate.findings import Finding, Layer, Severity
from fhirimg.validate.rules import RuleCollector
from fhirimg.values import NON_ACQUISITION_MODALITIES

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
BINARY_EXTENSION_URL = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
MEDIA_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/media-type"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_MIME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*(\s*;.*)?$"
)


def uid_problem(uid: Any) -> str | None:
    """Why ``uid`` is not a valid DICOM UID (PS3.5 section 9.1), or None.

    >>> uid_problem("1.2.840.10008.1.2.1") is None
    True
    >>> uid_problem("1.02.3")
    "'1.02.3' is not a DICOM UID: a component has a leading zero"
    """
    if not isinstance(uid, str):
        return f"{uid!r} is not a DICOM UID: not a string"
    if len(uid) > 64:
        return f"{uid!r} is not a DICOM UID: longer than 64 characters ({len(uid)})"
    if _UID.match(uid):
        return None
    if uid.startswith("urn:oid:"):
        return f"{uid!r} is not a DICOM UID: drop the 'urn:oid:' prefix here"
    if re.fullmatch(r"[0-9.]+", uid):
        if any(len(p) > 1 and p.startswith("0") for p in uid.split(".")):
            return f"{uid!r} is not a DICOM UID: a component has a leading zero"
        return f"{uid!r} is not a DICOM UID: empty component"
    return f"{uid!r} is not a DICOM UID: only digits and dots are allowed"


class _Bundle:
    """What the imaging rules need to know about the rest of the bundle."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.known_binaries: frozenset[str] = frozenset()
        self.whole = False  # a whole Bundle, rather than one resource checked alone
        self.types: frozenset[str] = frozenset()  # the resource types of the entries
        self.heads: dict[int, bytes | None] = {}  # id(Binary) -> head_of(it)
        self.by_full_url: dict[str, dict[str, Any]] = {}
        self.by_type_id: dict[tuple[str, str], dict[str, Any]] = {}
        types: set[str] = set()
        for entry in _list(obj.get("entry")):
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                continue
            res = entry["resource"]
            if isinstance(entry.get("fullUrl"), str):
                self.by_full_url[entry["fullUrl"]] = res
                tail = entry["fullUrl"].rsplit("/", 2)
                if len(tail) == 3:
                    self.by_type_id[(tail[1], tail[2])] = res
            rtype, rid = res.get("resourceType"), res.get("id")
            if isinstance(rtype, str):
                types.add(rtype)
            if isinstance(rtype, str) and isinstance(rid, str):
                self.by_type_id[(rtype, rid)] = res
            req = entry.get("request")
            if isinstance(req, dict) and isinstance(req.get("url"), str):
                parts = req["url"].split("?", 1)[0].split("/")
                if len(parts) == 2:
                    self.by_type_id[(parts[0], parts[1])] = res
        self.types = frozenset(types)

    def head_of(self, binary: dict[str, Any]) -> bytes | None:
        """The first bytes of a Binary's data (its File Meta), decoded once per Binary."""
        key = id(binary)
        if key not in self.heads:
            self.heads[key] = _decoded(binary["data"], _META_BYTES)
        return self.heads[key]

    def resolve(self, ref: str) -> dict[str, Any] | None:
        if ref in self.by_full_url:
            return self.by_full_url[ref]
        parts = ref.split("/_history/", 1)[0].rsplit("/", 2)
        if len(parts) >= 2:
            return self.by_type_id.get((parts[-2], parts[-1]))
        return None


def _resources(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if obj.get("resourceType") == "Bundle":
        return [
            (f"Bundle.entry[{i}].resource", e["resource"])
            for i, e in enumerate(_list(obj.get("entry")))
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
    return [(str(obj.get("resourceType") or "$"), obj)]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def check(
    obj: Any,
    file: str,
    release: str,
    *,
    beside: Path | None = None,
    stem: str | None = None,
    known_binaries: Collection[str] = (),
) -> list[Finding]:
    """Imaging rules on every ImagingStudy, rendered image, DocumentReference and Binary in ``obj``.

    ``known_binaries``: ids of Binaries that exist outside this bundle (in the other part files
    of a split study, or about to be written by convert), so ``Binary/<id>`` links to them hold.
    Rules that relate resources (references, a rendered image and its study) run on Bundles only:
    a single resource (one entry convert checks before it streams it) has nothing to relate to.
    """
    out = RuleCollector(file, Layer.IMAGING, release)
    if not isinstance(obj, dict):
        return out.findings
    in_bundle = obj.get("resourceType") == "Bundle"
    bundle = _Bundle(obj) if in_bundle else _Bundle({})
    bundle.known_binaries = frozenset(known_binaries)
    bundle.whole = in_bundle
    binaries_dir = beside / f"{stem}.binaries" if beside is not None and stem else None
    rendered = rules.rendered_type(release)
    for loc, res in _resources(obj):
        rtype = res.get("resourceType")
        if rtype == "ImagingStudy":
            _study(res, loc, out, release, bundle, binaries_dir)
        elif rtype == rendered and _is_image(res):
            _rendered(res, loc, out, release, bundle)
        if rtype == "DocumentReference" and out.applies("r5-docref-1"):
            _docref_invariants(res, loc, out, bundle)
        if isinstance(rtype, str) and rtype in measurement_checks.TYPES:  # SR measurements
            measurement_checks.check(res, loc, out, bundle.resolve, bundle.types, obj)
        # Attachments (and Binary) where the table says they sit in this release.
        for a_loc, att in rules.read("img-attachment-content-type", release, res, loc):
            if rtype == "Binary":
                _binary(res, loc, out)
            elif isinstance(att, dict):
                _attachment(att, a_loc, out, bundle)
    return out.findings


def _is_image(res: dict[str, Any]) -> bool:
    """Whether a Media / DocumentReference is a rendered image: ``type`` media-type#image."""
    concept = res.get("type")
    codings = _list(concept.get("coding")) if isinstance(concept, dict) else []
    return any(
        isinstance(c, dict) and c.get("system") == MEDIA_TYPE_SYSTEM and c.get("code") == "image"
        for c in codings
    )


def _coding_key(coding: Any) -> tuple[Any, Any] | None:
    return (coding.get("system"), coding.get("code")) if isinstance(coding, dict) else None


def _modalities(res: dict[str, Any], loc: str, out: RuleCollector, release: str) -> None:
    """img-modality-coding and img-series-modality-in-study, on the paths of ``release``."""
    for m_loc, coding in rules.read("img-modality-coding", release, res, loc):
        if not isinstance(coding, dict):
            continue
        if coding.get("system") != DCM_SYSTEM:
            out.fail(
                "img-modality-coding",
                f"{m_loc}.system",
                f"modality codings use the DICOM system {DCM_SYSTEM}",
            )
        code = coding.get("code")
        if not isinstance(code, str) or not code:
            out.fail("img-modality-coding", f"{m_loc}.code", "modality coding has no code")
    if not _list(res.get("modality")):
        return  # ImagingStudy.modality is 0..*: no list, nothing to be missing from
    rule_id = "img-series-modality-in-study"
    listed = {_coding_key(c) for _, c in rules.read(rule_id, release, res, loc, under="modality")}
    for s_loc, coding in rules.read(rule_id, release, res, loc, under="series.modality"):
        key = _coding_key(coding)
        if release == "r4" and key is not None and key[1] in NON_ACQUISITION_MODALITIES:
            continue  # R4 lists acquisition modalities only (CID 29): SR, KO ... are not there
        if key is not None and key not in listed:
            out.fail(
                rule_id,
                s_loc,
                f"series modality {key[1]!r} is not in the study's modality list "
                "(Modalities in Study)",
            )


def _study(
    res: dict[str, Any],
    loc: str,
    out: RuleCollector,
    release: str,
    bundle: _Bundle,
    binaries_dir: Path | None,
) -> None:
    # (0020,000D) Study Instance UID as identifier.
    found = False
    for i, ident in enumerate(_list(res.get("identifier"))):
        if not isinstance(ident, dict):
            continue
        value = ident.get("value")
        here = f"{loc}.identifier[{i}]"
        if ident.get("system") == DICOM_UID_SYSTEM:
            found = True
            if not isinstance(value, str) or not value.startswith("urn:oid:"):
                out.fail(
                    "img-study-uid-identifier",
                    f"{here}.value",
                    f"a {DICOM_UID_SYSTEM} identifier value is urn:oid:<uid>",
                )
            else:
                problem = uid_problem(value[len("urn:oid:") :])
                if problem:
                    out.fail("img-uid-syntax", f"{here}.value", problem)
        elif isinstance(value, str) and value.startswith("urn:oid:"):
            out.fail(
                "img-study-uid-identifier",
                f"{here}.system",
                f"a Study Instance UID identifier uses system {DICOM_UID_SYSTEM}",
            )
            found = True
    if not found:
        out.fail(
            "img-study-uid-identifier",
            f"{loc}.identifier",
            "no Study Instance UID identifier (system urn:dicom:uid)",
            Severity.WARNING,
        )
    _modalities(res, loc, out, release)
    if bundle.whole:
        _local_ref(res.get("subject"), f"{loc}.subject", "img-subject-ref", out, bundle, _SUBJECTS)
        _endpoint_entry(res, loc, out, bundle)
    series = _list(res.get("series"))
    seen_series: dict[str, str] = {}
    seen_instances: dict[str, str] = {}
    total = 0
    for s_i, s in enumerate(series):
        if not isinstance(s, dict):
            continue
        s_loc = f"{loc}.series[{s_i}]"
        _unique_uid(
            s.get("uid"), f"{s_loc}.uid", seen_series, out, "series uid", "img-series-uid-unique"
        )
        instances = _list(s.get("instance"))
        total += len(instances)
        _count(
            s.get("numberOfInstances"),
            len(instances),
            f"{s_loc}.numberOfInstances",
            out,
            "img-number-of-instances",
            present="instance" in s,
        )
        for i_i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                continue
            i_loc = f"{s_loc}.instance[{i_i}]"
            _unique_uid(
                inst.get("uid"),
                f"{i_loc}.uid",
                seen_instances,
                out,
                "SOP Instance UID",
                "img-instance-uid-unique",
            )
            _sop_class(inst.get("sopClass"), f"{i_loc}.sopClass", out)
            for e_i, ext in enumerate(_list(inst.get("extension"))):
                if isinstance(ext, dict) and ext.get("url") == BINARY_EXTENSION_URL:
                    link = _Link(ext, f"{i_loc}.extension[{e_i}]", inst)
                    _binary_link(link, out, bundle, binaries_dir)
    if "series" in res:
        _count(
            res.get("numberOfSeries"),
            len(series),
            f"{loc}.numberOfSeries",
            out,
            "img-number-of-series",
            present=True,
        )
        all_listed = all(isinstance(s, dict) and "instance" in s for s in series)
        _count(
            res.get("numberOfInstances"),
            total,
            f"{loc}.numberOfInstances",
            out,
            "img-number-of-instances",
            present=all_listed,
        )


def _count(
    value: Any, actual: int, loc: str, out: RuleCollector, rule_id: str, *, present: bool
) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not present:
        return
    if value < actual:
        out.fail(rule_id, loc, f"says {value} but the resource lists {actual}")
    elif value > actual:
        out.fail(
            rule_id,
            loc,
            f"says {value} but the resource lists only {actual} (partial study?)",
            Severity.WARNING,
        )


def _unique_uid(
    uid: Any, loc: str, seen: dict[str, str], out: RuleCollector, what: str, rule_id: str
) -> None:
    """A DICOM UID that must be valid and not repeat within the study (``seen``: uid -> where)."""
    if uid is None:
        return
    problem = uid_problem(uid)
    if problem:
        out.fail("img-uid-syntax", loc, problem)
    elif uid in seen:
        out.fail(rule_id, loc, f"{what} repeats {seen[uid]}")
    else:
        seen[uid] = loc.removesuffix(".uid")


def _sop_class(coding: Any, loc: str, out: RuleCollector) -> None:
    if not isinstance(coding, dict):
        return
    if coding.get("system") != RFC3986_SYSTEM:
        out.fail("img-sop-class", f"{loc}.system", f"SOP Class codings use system {RFC3986_SYSTEM}")
    code = coding.get("code")
    if not isinstance(code, str) or not code.startswith("urn:oid:"):
        out.fail("img-sop-class", f"{loc}.code", "a SOP Class code is urn:oid:<SOP Class UID>")
        return
    problem = uid_problem(code[len("urn:oid:") :])
    if problem:
        out.fail("img-sop-class", f"{loc}.code", problem)


def _local_ref(
    value: Any,
    loc: str,
    rule_id: str,
    out: RuleCollector,
    bundle: _Bundle,
    types: frozenset[str],
) -> None:
    """A reference to a resource of ``types`` that the bundle holds must resolve to an entry (its
    fullUrl, or ``Type/id`` of an entry) or be absolute. When the bundle holds no resource of
    those types (a later part of a split study), a relative or conditional reference names one on
    the server. ``urn:uuid:`` and ``#id`` references that do not resolve, and target types, are the
    bundle layer's (bdl-ref-*)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str) or ref.startswith(("urn:", "#", "http://", "https://")):
        return
    if bundle.resolve(ref) is not None or not types & bundle.types:
        return
    held = ", ".join(sorted(types & bundle.types))
    out.fail(
        rule_id,
        f"{loc}.reference",
        f"{ref} is not an entry of the bundle, which holds the {held}: refer to the entry's "
        "fullUrl (or use an absolute URL)",
    )


_SUBJECTS = frozenset({"Patient", "Device", "Group"})  # ImagingStudy.subject targets


def _endpoint_entry(res: dict[str, Any], loc: str, out: RuleCollector, bundle: _Bundle) -> None:
    """img-endpoint-ref: a bundle that holds an Endpoint is read through it, so the study's
    ``endpoint`` list refers to that entry. Other endpoints may stay (a merge keeps the server's
    ``Endpoint/<id>``): a study may be reachable in several places. A study without an
    ``endpoint`` list (0..*) is not checked: the bundle's Endpoint may serve its series."""
    if "Endpoint" not in bundle.types or not _list(res.get("endpoint")):
        return
    for value in _list(res.get("endpoint")):
        ref = value.get("reference") if isinstance(value, dict) else None
        target = bundle.resolve(ref) if isinstance(ref, str) else None
        if target is not None and target.get("resourceType") == "Endpoint":
            return
    out.fail(
        "img-endpoint-ref",
        f"{loc}.endpoint",
        "the bundle holds an Endpoint but the study's endpoint list does not refer to it",
    )


class _Link:
    """One instance-binary extension and the instance it sits on."""

    __slots__ = ("ext", "loc", "instance")

    def __init__(self, ext: dict[str, Any], loc: str, instance: dict[str, Any]) -> None:
        self.ext, self.loc, self.instance = ext, loc, instance


def _binary_link(
    link: _Link, out: RuleCollector, bundle: _Bundle, binaries_dir: Path | None
) -> None:
    ref_obj = link.ext.get("valueReference")
    ref = ref_obj.get("reference") if isinstance(ref_obj, dict) else None
    if not isinstance(ref, str):
        out.fail(
            "img-binary-link",
            f"{link.loc}.valueReference",
            "the instance-binary extension needs valueReference.reference",
        )
        return
    where = f"{link.loc}.valueReference.reference"
    target = bundle.resolve(ref)
    if target is not None:
        if target.get("resourceType") != "Binary":
            out.fail(
                "img-binary-link", where, f"{ref} is a {target.get('resourceType')}, not a Binary"
            )
        elif isinstance(target.get("data"), str):
            ctype = target.get("contentType")
            if isinstance(ctype, str) and _mime(ctype) != "application/dicom":
                out.fail(
                    "img-binary-sop-instance",
                    where,
                    f"{ref} holds {ctype}, not a DICOM Part 10 file (application/dicom)",
                )
            else:
                _same_instance(bundle.head_of(target), link, where, ref, out)
        return
    if ref.startswith("urn:uuid:"):
        out.fail(
            "img-binary-link", where, f"{ref} is not the fullUrl of a Binary entry in the bundle"
        )
        return
    parts = ref.split("/")
    if len(parts) != 2 or parts[0] != "Binary":
        out.fail(
            "img-binary-link",
            where,
            f"{ref!r} is neither a Binary entry's fullUrl nor 'Binary/<id>'",
        )
        return
    if parts[1] in bundle.known_binaries:
        return  # in another part file, or not written yet: its content is checked where it is
    if binaries_dir is not None:
        path = binaries_dir / f"{parts[1]}.dcm"
        if path.is_file():
            _same_instance(_head(path), link, where, f"{binaries_dir.name}/{path.name}", out)
            return
    beside = f" nor {binaries_dir.name}/{parts[1]}.dcm beside it" if binaries_dir else ""
    out.fail("img-binary-link", where, f"{ref} is not in the bundle{beside}")


_META_BYTES = 16384
"""How much of a linked DICOM file is read for its File Meta Information (group 0002, PS3.10
section 7.1), which is a few hundred bytes in practice."""
# File Meta elements are Explicit VR Little Endian; these VRs have a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


def file_meta(head: bytes) -> dict[int, bytes] | None:
    """The File Meta elements (group 0002) in the first bytes of a DICOM Part 10 file, by element
    number, or None when ``head`` has no ``DICM`` prefix at offset 128 (PS3.10 section 7.1).

    >>> meta = file_meta(bytes(128) + b"DICM" + b"\\x02\\x00\\x03\\x00UI\\x06\\x001.2.3\\x00")
    >>> meta[3]
    b'1.2.3\\x00'
    """
    span = meta_span(head)
    return span[0] if span is not None else None


def meta_span(head: bytes) -> tuple[dict[int, bytes], int] | None:
    """:func:`file_meta` and the offset where the dataset starts (after the last group 0002
    element read), or None without ``DICM`` at offset 128.

    >>> meta_span(bytes(128) + b"DICM" + b"\\x02\\x00\\x03\\x00UI\\x06\\x001.2.3\\x00" + b"\\x08\\x00")
    ({3: b'1.2.3\\x00'}, 146)
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    out: dict[int, bytes] = {}
    pos = 132
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        if head[pos + 4 : pos + 6] in _LONG_VRS:
            if pos + 12 > len(head):
                break
            (length,) = struct.unpack_from("<I", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        if start + length > len(head):
            break
        out[element] = head[start : start + length]
        pos = start + length
    return out, pos


def _uid_text(value: bytes | None) -> str | None:
    # UI values are padded to even length with a NUL (PS3.5 section 9.1).
    return value.rstrip(b"\0 ").decode("ascii", "replace") if value is not None else None


def _same_instance(
    head: bytes | None, link: _Link, where: str, what: str, out: RuleCollector
) -> None:
    """img-binary-sop-instance: the linked file is Part 10 and names this instance."""
    rule_id = "img-binary-sop-instance"
    if head is None:
        return  # not base64 or not readable: the schema layer / img-binary-link say so
    meta = file_meta(head)
    if meta is None:
        if not what.endswith(".dcm"):
            return  # application/dicom data without DICM: img-dicom-preamble says so
        out.fail(rule_id, where, f"{what} is not a DICOM Part 10 file (no DICM at offset 128)")
        return
    # (0002,0003) Media Storage SOP Instance UID = (0008,0018); (0002,0002) = (0008,0016).
    sop_instance = _uid_text(meta.get(0x0003))
    uid = link.instance.get("uid")
    if sop_instance != uid:
        out.fail(
            rule_id,
            where,
            f"{what} holds SOP Instance {sop_instance or '(none)'}, not this instance's {uid}",
        )
    sop_class = _uid_text(meta.get(0x0002))
    coding = link.instance.get("sopClass")
    code = coding.get("code") if isinstance(coding, dict) else None
    if isinstance(code, str) and sop_class is not None and code != f"urn:oid:{sop_class}":
        out.fail(rule_id, where, f"{what} holds SOP Class {sop_class}, not {code}")


def _head(path: Path) -> bytes | None:
    try:
        with path.open("rb") as fh:
            return fh.read(_META_BYTES)
    except OSError:
        return None


def _rendered(
    res: dict[str, Any], loc: str, out: RuleCollector, release: str, bundle: _Bundle
) -> None:
    """The rules of a rendered image (R4 Media, R5 DocumentReference) on the release's paths."""
    types = list(rules.read("img-rendered-content-type", release, res, loc, under="content"))
    with_data = any(
        isinstance(a, dict) and "data" in a
        for _, a in rules.read("img-attachment-size", release, res, loc)
    )
    if not types and not with_data:  # data without a contentType: img-attachment-content-type
        out.fail(
            "img-rendered-content-type",
            f"{loc}.content",
            "a rendered image needs an attachment with an image/* contentType",
        )
    for t_loc, ctype in types:
        # Not a MIME type at all: img-attachment-content-type says so.
        if isinstance(ctype, str) and _MIME.match(ctype) and not _mime(ctype).startswith("image/"):
            out.fail("img-rendered-content-type", t_loc, f"is {ctype!r}, not an image/* type")
    if out.applies("r5-rendered-docref"):
        _r5_shape(res, loc, out, release)
    study: dict[str, Any] | None = None
    named = False
    for _, ref_obj in rules.read("img-rendered-study", release, res, loc):
        ref = ref_obj.get("reference") if isinstance(ref_obj, dict) else None
        if not isinstance(ref, str):
            continue
        target = bundle.resolve(ref)
        if target is not None:
            if target.get("resourceType") == "ImagingStudy":
                study, named = target, True
        elif _names_type(ref, "ImagingStudy") or (ref.startswith("urn:") and not bundle.whole):
            named = True  # resolved by the server, or by the rest of a bundle not seen here
    if not named:
        what = "partOf" if release == "r4" else "event.reference"
        out.fail(
            "img-rendered-study",
            f"{loc}.{what}",
            f"a rendered image refers to its ImagingStudy ({rules.rendered_type(release)}.{what})",
        )
    if bundle.whole:
        _local_ref(res.get("subject"), f"{loc}.subject", "img-subject-ref", out, bundle, _SUBJECTS)
    if study is not None:
        _of_study(res, loc, out, release, study)


def _names_type(ref: str, rtype: str) -> bool:
    """Whether a relative, absolute or conditional reference names a resource of ``rtype``."""
    path = ref.split("?", 1)[0].split("/_history/", 1)[0].rstrip("/").split("/")
    return path[-1] == rtype if "?" in ref else len(path) >= 2 and path[-2] == rtype


def _of_study(
    res: dict[str, Any], loc: str, out: RuleCollector, release: str, study: dict[str, Any]
) -> None:
    """img-rendered-instance: the rendered SOP Instance is one of the study's; same subject."""
    rule_id = "img-rendered-instance"
    uids = {
        inst.get("uid")
        for s in _list(study.get("series"))
        if isinstance(s, dict)
        for inst in _list(s.get("instance"))
        if isinstance(inst, dict)
    }
    for i_loc, ident in rules.read(rule_id, release, res, loc, under="identifier"):
        if not isinstance(ident, dict) or ident.get("system") != DICOM_UID_SYSTEM:
            continue
        value = ident.get("value")
        uid = value[len("urn:oid:") :] if isinstance(value, str) else None
        if uids and uid not in uids:
            out.fail(
                rule_id,
                f"{i_loc}.value",
                f"SOP Instance {uid} is not an instance of the ImagingStudy it refers to",
            )
    mine = res.get("subject")
    theirs = study.get("subject")
    if isinstance(mine, dict) and isinstance(theirs, dict):
        if mine.get("reference") != theirs.get("reference"):
            out.fail(
                rule_id,
                f"{loc}.subject",
                f"is {mine.get('reference')} but its ImagingStudy's subject is "
                f"{theirs.get('reference')}",
            )


def _r5_shape(res: dict[str, Any], loc: str, out: RuleCollector, release: str) -> None:
    """r5-rendered-docref: one attachment with data or url, and its height and width."""
    rule_id = "r5-rendered-docref"
    attachments = list(rules.read(rule_id, release, res, loc, under="content.attachment"))
    attachments = [(a_loc, a) for a_loc, a in attachments if isinstance(a, dict)]
    if len(attachments) != 1:
        out.fail(
            rule_id,
            f"{loc}.content",
            f"a rendered image has one content.attachment, not {len(attachments)}",
        )
    for a_loc, att in attachments:
        if "data" not in att and "url" not in att:
            out.fail(rule_id, a_loc, "the attachment holds neither data nor url")
        for name in ("height", "width"):
            if name not in att:
                out.fail(
                    rule_id,
                    f"{a_loc}.{name}",
                    f"R5 keeps the image {name} on the attachment (Media.{name} in R4)",
                )


def _docref_invariants(res: dict[str, Any], loc: str, out: RuleCollector, bundle: _Bundle) -> None:
    """R5 docRef-1 / docRef-2, whose FHIRPath needs resolve(): no facilityType or
    practiceSetting when a context is an Encounter."""
    encounter = False
    for ref_obj in _list(res.get("context")):
        if not isinstance(ref_obj, dict):
            continue
        ref = ref_obj.get("reference")
        target = bundle.resolve(ref) if isinstance(ref, str) else None
        if target is not None:
            encounter = encounter or target.get("resourceType") == "Encounter"
        elif ref_obj.get("type") == "Encounter" or (
            isinstance(ref, str) and _names_type(ref, "Encounter")
        ):
            encounter = True
    if not encounter:
        return
    for rule_id, name in (("r5-docref-1", "facilityType"), ("r5-docref-2", "practiceSetting")):
        if name in res:
            out.fail(
                rule_id,
                f"{loc}.{name}",
                f"{rule_id[3:]}: {name} SHALL only be present if context is not an Encounter",
            )


def _mime(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _decoded(data: str, limit: int | None = None) -> bytes | None:
    if limit is None:
        # Well-formed base64 decodes to the same bytes strictly or not; the schema layer's
        # check decoded it already (the same string: its bytes are reused).
        raw = strict_decode(data)
        if raw is not None:
            return raw
    try:
        text = data if limit is None else data[: (limit + 2) // 3 * 4]
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _content_type(value: Any, loc: str, out: RuleCollector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MIME.match(value):
        out.fail("img-attachment-content-type", loc, f"{value!r} is not a MIME type (type/subtype)")
        return None
    return value.split(";", 1)[0].strip().lower()


def _dicom_magic(data: str, ctype: str | None, loc: str, out: RuleCollector) -> None:
    if ctype != "application/dicom":
        return
    head = _decoded(data, 132)
    if head is not None and len(head) >= 132 and head[128:132] != b"DICM":
        out.fail(
            "img-dicom-preamble",
            loc,
            "contentType is application/dicom but the data has no DICM preamble",
        )


def _binary(res: dict[str, Any], loc: str, out: RuleCollector) -> None:
    ctype = _content_type(res.get("contentType"), f"{loc}.contentType", out)
    data = res.get("data")
    if isinstance(data, str):
        _dicom_magic(data, ctype, f"{loc}.data", out)


def _attachment(att: dict[str, Any], loc: str, out: RuleCollector, bundle: _Bundle) -> None:
    ctype = _content_type(att.get("contentType"), f"{loc}.contentType", out)
    data = att.get("data")
    size = att.get("size")
    raw: bytes | None = None
    if isinstance(data, str):
        if ctype is None and "contentType" not in att:
            out.fail(
                "img-attachment-content-type",
                f"{loc}.contentType",
                "an attachment with data needs a contentType (att-1)",
            )
        _dicom_magic(data, ctype, f"{loc}.data", out)
        raw = _decoded(data)
    url = att.get("url")
    target = bundle.resolve(url) if isinstance(url, str) else None
    if target is not None and target.get("resourceType") == "Binary":
        b_type = target.get("contentType")
        if ctype and isinstance(b_type, str) and b_type.split(";", 1)[0].strip().lower() != ctype:
            out.fail(
                "img-attachment-binary-type",
                f"{loc}.contentType",
                f"is {ctype} but the Binary at {url} is {b_type}",
            )
        if raw is None and isinstance(target.get("data"), str):
            raw = _decoded(target["data"])
    if raw is not None:
        # Attachment.size is unsignedInt in R4, integer64 (a JSON string) in R5.
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, int) and not isinstance(size, bool) and size != len(raw):
            out.fail(
                "img-attachment-size",
                f"{loc}.size",
                f"says {size} bytes but the data holds {len(raw)}",
            )
        digest = att.get("hash")
        if isinstance(digest, str):
            expected = base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")
            if digest != expected:
                out.fail(
                    "img-attachment-hash", f"{loc}.hash", "is not the base64 SHA-1 of the data"
                )
