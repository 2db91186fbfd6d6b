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
  beside the bundle file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from fhirimg.validate.findings import Collector, Finding, Layer

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
DICOM_UID_SYSTEM = "urn:dicom:uid"
RFC3986_SYSTEM = "urn:ietf:rfc:3986"
BINARY_EXTENSION_URL = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
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
        self.by_full_url: dict[str, dict[str, Any]] = {}
        self.by_type_id: dict[tuple[str, str], dict[str, Any]] = {}
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
            if isinstance(rtype, str) and isinstance(rid, str):
                self.by_type_id[(rtype, rid)] = res
            req = entry.get("request")
            if isinstance(req, dict) and isinstance(req.get("url"), str):
                parts = req["url"].split("?", 1)[0].split("/")
                if len(parts) == 2:
                    self.by_type_id[(parts[0], parts[1])] = res

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
    """Imaging rules on every ImagingStudy, Media, DocumentReference and Binary in ``obj``.

    ``known_binaries``: ids of Binaries that exist outside this bundle (in the other part files
    of a split study, or about to be written by convert), so ``Binary/<id>`` links to them hold.
    """
    out = Collector(file, Layer.IMAGING)
    if not isinstance(obj, dict):
        return out.findings
    bundle = _Bundle(obj) if obj.get("resourceType") == "Bundle" else _Bundle({})
    bundle.known_binaries = frozenset(known_binaries)
    binaries_dir = beside / f"{stem}.binaries" if beside is not None and stem else None
    for loc, res in _resources(obj):
        rtype = res.get("resourceType")
        if rtype == "ImagingStudy":
            _study(res, loc, out, release, bundle, binaries_dir)
        elif rtype == "Media":
            content = res.get("content")
            if isinstance(content, dict):
                _attachment(content, f"{loc}.content", out, bundle)
        elif rtype == "DocumentReference":
            for i, c in enumerate(_list(res.get("content"))):
                if isinstance(c, dict) and isinstance(c.get("attachment"), dict):
                    _attachment(c["attachment"], f"{loc}.content[{i}].attachment", out, bundle)
        elif rtype == "Binary":
            _binary(res, loc, out)
    return out.findings


def _codings(value: Any, release: str) -> list[tuple[str, dict[str, Any]]]:
    """Codings of a modality: a Coding in R4, a CodeableConcept in R5 (accept either shape)."""
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [
            (f".coding[{i}]", c)
            for i, c in enumerate(_list(value["coding"]))
            if isinstance(c, dict)
        ]
    return [("", value)]


def _modality(value: Any, loc: str, out: Collector, release: str) -> None:
    for suffix, coding in _codings(value, release):
        system = coding.get("system")
        if system != DCM_SYSTEM:
            out.error(
                f"{loc}{suffix}.system", f"modality codings use the DICOM system {DCM_SYSTEM}"
            )
        code = coding.get("code")
        if not isinstance(code, str) or not code:
            out.error(f"{loc}{suffix}.code", "modality coding has no code")


def _study(
    res: dict[str, Any],
    loc: str,
    out: Collector,
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
                out.error(
                    f"{here}.value", f"a {DICOM_UID_SYSTEM} identifier value is urn:oid:<uid>"
                )
            else:
                problem = uid_problem(value[len("urn:oid:") :])
                if problem:
                    out.error(f"{here}.value", problem)
        elif isinstance(value, str) and value.startswith("urn:oid:"):
            out.error(
                f"{here}.system", f"a Study Instance UID identifier uses system {DICOM_UID_SYSTEM}"
            )
            found = True
    if not found:
        out.warning(f"{loc}.identifier", "no Study Instance UID identifier (system urn:dicom:uid)")
    for i, m in enumerate(_list(res.get("modality"))):
        _modality(m, f"{loc}.modality[{i}]", out, release)
    series = _list(res.get("series"))
    seen_series: dict[str, str] = {}
    seen_instances: dict[str, str] = {}
    total = 0
    for s_i, s in enumerate(series):
        if not isinstance(s, dict):
            continue
        s_loc = f"{loc}.series[{s_i}]"
        _unique_uid(s.get("uid"), f"{s_loc}.uid", seen_series, out, "series uid")
        if "modality" in s:
            _modality(s["modality"], f"{s_loc}.modality", out, release)
        instances = _list(s.get("instance"))
        total += len(instances)
        _count(
            s.get("numberOfInstances"),
            len(instances),
            f"{s_loc}.numberOfInstances",
            out,
            present="instance" in s,
        )
        for i_i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                continue
            i_loc = f"{s_loc}.instance[{i_i}]"
            _unique_uid(inst.get("uid"), f"{i_loc}.uid", seen_instances, out, "SOP Instance UID")
            _sop_class(inst.get("sopClass"), f"{i_loc}.sopClass", out)
            for e_i, ext in enumerate(_list(inst.get("extension"))):
                if isinstance(ext, dict) and ext.get("url") == BINARY_EXTENSION_URL:
                    _binary_link(ext, f"{i_loc}.extension[{e_i}]", out, bundle, binaries_dir)
    if "series" in res:
        _count(res.get("numberOfSeries"), len(series), f"{loc}.numberOfSeries", out, present=True)
        all_listed = all(isinstance(s, dict) and "instance" in s for s in series)
        _count(
            res.get("numberOfInstances"), total, f"{loc}.numberOfInstances", out, present=all_listed
        )


def _count(value: Any, actual: int, loc: str, out: Collector, *, present: bool) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not present:
        return
    if value < actual:
        out.error(loc, f"says {value} but the resource lists {actual}")
    elif value > actual:
        out.warning(loc, f"says {value} but the resource lists only {actual} (partial study?)")


def _unique_uid(uid: Any, loc: str, seen: dict[str, str], out: Collector, what: str) -> None:
    """A DICOM UID that must be valid and not repeat within the study (``seen``: uid -> where)."""
    if uid is None:
        return
    problem = uid_problem(uid)
    if problem:
        out.error(loc, problem)
    elif uid in seen:
        out.error(loc, f"{what} repeats {seen[uid]}")
    else:
        seen[uid] = loc.removesuffix(".uid")


def _sop_class(coding: Any, loc: str, out: Collector) -> None:
    if not isinstance(coding, dict):
        return
    if coding.get("system") != RFC3986_SYSTEM:
        out.error(f"{loc}.system", f"SOP Class codings use system {RFC3986_SYSTEM}")
    code = coding.get("code")
    if not isinstance(code, str) or not code.startswith("urn:oid:"):
        out.error(f"{loc}.code", "a SOP Class code is urn:oid:<SOP Class UID>")
        return
    problem = uid_problem(code[len("urn:oid:") :])
    if problem:
        out.error(f"{loc}.code", problem)


def _binary_link(
    ext: dict[str, Any], loc: str, out: Collector, bundle: _Bundle, binaries_dir: Path | None
) -> None:
    ref_obj = ext.get("valueReference")
    ref = ref_obj.get("reference") if isinstance(ref_obj, dict) else None
    if not isinstance(ref, str):
        out.error(
            f"{loc}.valueReference", "the instance-binary extension needs valueReference.reference"
        )
        return
    where = f"{loc}.valueReference.reference"
    target = bundle.resolve(ref)
    if target is not None:
        if target.get("resourceType") != "Binary":
            out.error(where, f"{ref} is a {target.get('resourceType')}, not a Binary")
        return
    if ref.startswith("urn:uuid:"):
        out.error(where, f"{ref} is not the fullUrl of a Binary entry in the bundle")
        return
    parts = ref.split("/")
    if len(parts) != 2 or parts[0] != "Binary":
        out.error(where, f"{ref!r} is neither a Binary entry's fullUrl nor 'Binary/<id>'")
        return
    if parts[1] in bundle.known_binaries:
        return
    if binaries_dir is not None and (binaries_dir / f"{parts[1]}.dcm").is_file():
        return
    beside = f" nor {binaries_dir.name}/{parts[1]}.dcm beside it" if binaries_dir else ""
    out.error(where, f"{ref} is not in the bundle{beside}")


def _decoded(data: str, limit: int | None = None) -> bytes | None:
    try:
        text = data if limit is None else data[: (limit + 2) // 3 * 4]
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None


def _content_type(value: Any, loc: str, out: Collector) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MIME.match(value):
        out.error(loc, f"{value!r} is not a MIME type (type/subtype)")
        return None
    return value.split(";", 1)[0].strip().lower()


def _dicom_magic(data: str, ctype: str | None, loc: str, out: Collector) -> None:
    if ctype != "application/dicom":
        return
    head = _decoded(data, 132)
    if head is not None and len(head) >= 132 and head[128:132] != b"DICM":
        out.error(loc, "contentType is application/dicom but the data has no DICM preamble")


def _binary(res: dict[str, Any], loc: str, out: Collector) -> None:
    ctype = _content_type(res.get("contentType"), f"{loc}.contentType", out)
    data = res.get("data")
    if isinstance(data, str):
        _dicom_magic(data, ctype, f"{loc}.data", out)


def _attachment(att: dict[str, Any], loc: str, out: Collector, bundle: _Bundle) -> None:
    ctype = _content_type(att.get("contentType"), f"{loc}.contentType", out)
    data = att.get("data")
    size = att.get("size")
    raw: bytes | None = None
    if isinstance(data, str):
        if ctype is None and "contentType" not in att:
            out.error(f"{loc}.contentType", "an attachment with data needs a contentType (att-1)")
        _dicom_magic(data, ctype, f"{loc}.data", out)
        raw = _decoded(data)
    url = att.get("url")
    target = bundle.resolve(url) if isinstance(url, str) else None
    if target is not None and target.get("resourceType") == "Binary":
        b_type = target.get("contentType")
        if ctype and isinstance(b_type, str) and b_type.split(";", 1)[0].strip().lower() != ctype:
            out.error(f"{loc}.contentType", f"is {ctype} but the Binary at {url} is {b_type}")
        if raw is None and isinstance(target.get("data"), str):
            raw = _decoded(target["data"])
    if raw is not None:
        # Attachment.size is unsignedInt in R4, integer64 (a JSON string) in R5.
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if isinstance(size, int) and not isinstance(size, bool) and size != len(raw):
            out.error(f"{loc}.size", f"says {size} bytes but the data holds {len(raw)}")
        digest = att.get("hash")
        if isinstance(digest, str):
            expected = base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii")
            if digest != expected:
                out.error(f"{loc}.hash", "is not the base64 SHA-1 of the data")
