"""Layer 5, Bundle integrity: what a server checks across entries before it runs a transaction.

Rules and their sources (FHIR R4 http.html#transaction, bundle.html#references):
``fullUrl`` unique (bdl-7) and a ``urn:uuid:``/``urn:oid:`` or absolute URL; every ``urn:uuid:``
reference resolves to an entry's fullUrl; every ``#id`` reference resolves to a contained
resource (ref-1); a reference points at a resource type the element allows
(``ElementDefinition.type.targetProfile``, shipped in ``references.json``); transaction and batch
entries carry ``request.method`` and ``request.url`` (bdl-3), whose type matches the resource;
``PUT Type/id`` carries the same ``id`` in the resource; conditional URLs (``Type?query``,
``ifNoneExist``) are well-formed query strings and name an identifier the resource has. Each
finding carries the id of its rule in :mod:`.rules`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any
from urllib.parse import unquote

from fhirimg.validate import _data
from fhirimg.validate.findings import Finding, Layer
from fhirimg.validate.rules import RuleCollector

_UUID_URL = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_OID_URL = re.compile(r"^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$")
_ABS_URL = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# A search parameter name, with optional chain (subject.name) and modifier (identifier:exact).
_PARAM = re.compile(r"^_?[A-Za-z][A-Za-z0-9_\-]*([.:][A-Za-z0-9_\-.:]+)*$")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}


@cache
def reference_targets(release: str) -> dict[str, frozenset[str]]:
    """Allowed target types by element path (``ImagingStudy.subject``: Patient, Device, Group)."""
    raw: dict[str, list[str]] = _data.load(release, "references.json")
    return {k: frozenset(v) for k, v in raw.items()}


def query_problem(query: str) -> str | None:
    """Why ``query`` (the part after ``?``) is not a well-formed FHIR search, or None.

    >>> query_problem("identifier=urn:dicom:uid|urn:oid:1.2.3") is None
    True
    >>> query_problem("identifier")
    "parameter 'identifier' has no '=value'"
    """
    if not query:
        return "empty query"
    if any(c.isspace() for c in query):
        return "contains whitespace (percent-encode it)"
    if "#" in query:
        return "contains '#' (percent-encode it)"
    if _BAD_PERCENT.search(query):
        return "has a '%' that is not followed by two hex digits"
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq:
            return f"parameter {name!r} has no '=value'"
        if not _PARAM.match(name):
            return f"{name!r} is not a search parameter name"
        if not value:
            return f"parameter {name!r} has an empty value"
    return None


def _type_of(reference: str, by_full_url: dict[str, dict[str, Any]]) -> str | None:
    """The resource type a reference string names, when it can be told."""
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        target = by_full_url.get(reference)
        rtype = target.get("resourceType") if target else None
        return rtype if isinstance(rtype, str) else None
    path = reference.split("?", 1)[0].split("/_history/", 1)[0]
    parts = path.rstrip("/").split("/")
    if "?" in reference and len(parts) >= 1 and _TYPE.match(parts[-1]):
        return parts[-1]
    if len(parts) >= 2 and _TYPE.match(parts[-2]):
        return parts[-2]
    return None


def _references(
    node: Any, loc: str, element: str
) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(location, element path, Reference object, reference string) for every reference."""
    # Scalars hold no reference: not walked into (two thirds of the calls on a bundle).
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield f"{loc}.reference", element, node, ref
        for key, value in node.items():
            if key == "contained" or not isinstance(value, dict | list):
                continue  # contained resources are walked on their own
            yield from _references(value, f"{loc}.{key}", f"{element}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict | list):
                yield from _references(item, f"{loc}[{i}]", element)


def check_resource_references(
    res: dict[str, Any],
    loc: str,
    out: RuleCollector,
    release: str,
    by_full_url: dict[str, dict[str, Any]],
    container: dict[str, Any] | None = None,
) -> None:
    """Reference checks inside one resource (and its contained resources).

    ``container`` is the resource that holds ``res`` in its ``contained``: a ``#id`` reference
    resolves against the container's contained resources (ref-1: ``%rootResource.contained.id``),
    so contained resources may refer to each other, and ``#`` alone is the container.
    """
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        return
    root = container if container is not None else res
    targets = reference_targets(release)
    local_types: dict[str, Any] = {
        c["id"]: c.get("resourceType") for c in _contained(root) if isinstance(c.get("id"), str)
    }
    if container is None:
        contained = res.get("contained")
        for i, c in enumerate(contained if isinstance(contained, list) else []):
            if isinstance(c, dict):
                check_resource_references(
                    c, f"{loc}.contained[{i}]", out, release, by_full_url, res
                )
    for where, element, ref_obj, ref in _references(res, loc, rtype):
        target_type: str | None
        if ref.startswith("#"):
            if ref == "#":
                target_type = root.get("resourceType") if container is not None else None
            elif ref[1:] in local_types:
                target_type = local_types[ref[1:]]
            else:
                out.fail(
                    "bdl-ref-contained",
                    where,
                    f"{ref} does not match the id of a contained resource (ref-1)",
                )
                continue
        else:
            if ref.startswith("urn:uuid:"):
                if ref not in by_full_url:
                    out.fail(
                        "bdl-ref-resolves",
                        where,
                        f"{ref} does not resolve to any entry's fullUrl in the bundle",
                    )
                    continue
            elif "?" in ref:
                rt, _, query = ref.partition("?")
                problem = query_problem(query) if _TYPE.match(rt) else f"{rt!r} is not a type"
                if problem:
                    out.fail("bdl-ref-form", where, f"conditional reference {ref!r}: {problem}")
                    continue
            elif not ref.startswith(("http://", "https://", "urn:")):
                parts = ref.split("/_history/", 1)[0].split("/")
                if len(parts) != 2 or not _TYPE.match(parts[0]) or not _ID.match(parts[1]):
                    out.fail(
                        "bdl-ref-form", where, f"{ref!r} is not a relative reference 'Type/id'"
                    )
                    continue
            target_type = _type_of(ref, by_full_url)
        if not isinstance(target_type, str):
            target_type = None
        declared = ref_obj.get("type")
        if isinstance(declared, str) and target_type and declared != target_type:
            out.fail(
                "bdl-ref-target-type",
                where,
                f"Reference.type is {declared} but {ref} is a {target_type}",
            )
        allowed = targets.get(element)
        if allowed and target_type and "Resource" not in allowed and target_type not in allowed:
            out.fail(
                "bdl-ref-target-type",
                where,
                f"{element} may point at {', '.join(sorted(allowed))}, not {target_type}",
            )


def _contained(res: dict[str, Any]) -> list[dict[str, Any]]:
    contained = res.get("contained")
    if not isinstance(contained, list):
        return []
    return [c for c in contained if isinstance(c, dict)]


def check(obj: Any, file: str, release: str) -> list[Finding]:
    """Bundle-wide checks on a Bundle, reference checks on any other resource."""
    out = RuleCollector(file, Layer.BUNDLE, release)
    if not isinstance(obj, dict):
        return out.findings
    if obj.get("resourceType") != "Bundle":
        check_resource_references(obj, str(obj.get("resourceType") or "$"), out, release, {})
        return out.findings
    btype = obj.get("type")
    entries = obj.get("entry")
    if not isinstance(entries, list):
        return out.findings
    needs_request = btype in ("transaction", "batch")
    by_full_url: dict[str, dict[str, Any]] = {}
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        loc = f"Bundle.entry[{i}]"
        full_url = entry.get("fullUrl")
        res = entry.get("resource")
        if isinstance(full_url, str):
            # bdl-7: unique, or with different meta.versionId, except in history bundles. A
            # transaction or batch resolves references by fullUrl, so there it is unique outright.
            key = full_url if needs_request else f"{full_url}|{_version_id(res)}"
            if btype == "history":
                pass
            elif key in first_seen:
                out.fail(
                    "bdl-fullurl-unique",
                    f"{loc}.fullUrl",
                    f"fullUrl {full_url} is already used by Bundle.entry[{first_seen[key]}]",
                )
            else:
                first_seen[key] = i
            if full_url.startswith("urn:uuid:"):
                if not _UUID_URL.match(full_url):
                    out.fail(
                        "bdl-fullurl-form",
                        f"{loc}.fullUrl",
                        f"{full_url!r} is not urn:uuid: + a lowercase UUID",
                    )
            elif full_url.startswith("urn:oid:"):
                if not _OID_URL.match(full_url):
                    out.fail(
                        "bdl-fullurl-form",
                        f"{loc}.fullUrl",
                        f"{full_url!r} is not urn:oid: + an OID",
                    )
            elif not _ABS_URL.match(full_url):
                out.fail(
                    "bdl-fullurl-form",
                    f"{loc}.fullUrl",
                    f"{full_url!r} is not an absolute URL or urn:uuid:",
                )
            if isinstance(res, dict):
                by_full_url.setdefault(full_url, res)
        elif needs_request and isinstance(res, dict):
            out.fail(
                "bdl-fullurl-missing",
                loc,
                "entry has no fullUrl: nothing in the bundle can refer to it",
            )
        if needs_request:
            _check_request(entry, loc, out)
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            check_resource_references(
                entry["resource"], f"Bundle.entry[{i}].resource", out, release, by_full_url
            )
    return out.findings


def _version_id(res: Any) -> str:
    meta = res.get("meta") if isinstance(res, dict) else None
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else ""


def _check_request(entry: dict[str, Any], loc: str, out: RuleCollector) -> None:
    request = entry.get("request")
    res = entry.get("resource")
    if not isinstance(request, dict):
        out.fail(
            "bdl-request", f"{loc}.request", "transaction and batch entries need a request (bdl-3)"
        )
        return
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str):
        out.fail("bdl-request", f"{loc}.request.method", "request.method is missing")
    elif method not in _METHODS:
        out.fail(
            "bdl-request", f"{loc}.request.method", f"{method!r} is not an HTTP verb FHIR knows"
        )
    if not isinstance(url, str) or not url:
        out.fail("bdl-request", f"{loc}.request.url", "request.url is missing")
        return
    if method in ("POST", "PUT", "PATCH") and not isinstance(res, dict):
        out.fail("bdl-request-resource", f"{loc}.resource", f"a {method} entry needs a resource")
    if url.startswith(("http://", "https://")):
        out.fail(
            "bdl-request-url-relative",
            f"{loc}.request.url",
            "request.url should be relative to the server base",
        )
        return
    path, q, query = url.partition("?")
    parts = path.split("/")
    if parts[0] == "metadata" and len(parts) == 1:
        return  # the capability statement (http.html#capabilities)
    if not _TYPE.match(parts[0]) and not parts[0].startswith(("$", "_")):
        out.fail(
            "bdl-request-url", f"{loc}.request.url", f"{url!r} does not start with a resource type"
        )
        return
    if q:
        problem = query_problem(query)
        if problem:
            out.fail(
                "bdl-conditional-query", f"{loc}.request.url", f"conditional URL {url!r}: {problem}"
            )
        elif isinstance(res, dict) and method in ("PUT", "POST", "PATCH"):
            _same_identifier(query, res, f"{loc}.request.url", out)
    if any(p.startswith("$") for p in parts):
        return  # an operation (Type/$op, Type/id/$op): its resource is its Parameters
    rtype = res.get("resourceType") if isinstance(res, dict) else None
    if method in ("POST", "PUT") and isinstance(rtype, str) and parts[0] != rtype:
        out.fail(
            "bdl-request-url-type",
            f"{loc}.request.url",
            f"request.url names {parts[0]} but the resource is {rtype}",
        )
    if method == "POST" and len(parts) > 1:
        out.fail(
            "bdl-request-url", f"{loc}.request.url", "a POST url is the resource type only (no id)"
        )
    if method == "PUT" and not q:
        if len(parts) != 2 or not _ID.match(parts[1]):
            out.fail(
                "bdl-request-url",
                f"{loc}.request.url",
                f"a PUT url is 'Type/id' or 'Type?query', not {url!r}",
            )
        elif isinstance(res, dict) and res.get("id") != parts[1]:
            have = res.get("id")
            out.fail(
                "bdl-put-id",
                f"{loc}.resource.id",
                f"PUT {url} needs resource.id {parts[1]!r}, the resource has {have!r}",
            )
    none_exist = request.get("ifNoneExist")
    if isinstance(none_exist, str):
        if method != "POST":
            out.fail(
                "bdl-ifnoneexist-post",
                f"{loc}.request.ifNoneExist",
                "ifNoneExist only applies to POST",
            )
        if "?" in none_exist:
            out.fail(
                "bdl-conditional-query",
                f"{loc}.request.ifNoneExist",
                "ifNoneExist is the query part only (no 'Type?' and no leading '?')",
            )
        else:
            problem = query_problem(none_exist)
            if problem:
                out.fail(
                    "bdl-conditional-query",
                    f"{loc}.request.ifNoneExist",
                    f"ifNoneExist {none_exist!r}: {problem}",
                )
            elif isinstance(res, dict):
                _same_identifier(none_exist, res, f"{loc}.request.ifNoneExist", out)


def _same_identifier(query: str, res: dict[str, Any], loc: str, out: RuleCollector) -> None:
    """Each ``identifier=[system]|value`` of a (well-formed) conditional ``query`` matches an
    identifier of ``res`` (one of its comma-separated values does), so that the server finds on
    the next run the resource this entry creates or updates (http.html#cond-update: the search
    decides which resource is updated)."""
    identifiers = [i for i in _as_list(res.get("identifier")) if isinstance(i, dict)]
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name != "identifier":
            continue
        tokens = _split_unescaped(unquote(value), ",")
        if not any(_matches(token, identifiers) for token in tokens):
            out.fail(
                "bdl-conditional-identifier",
                loc,
                f"names identifier {unquote(value)!r} but the {res.get('resourceType')} has no "
                "such identifier",
            )


def _split_unescaped(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` not escaped by a backslash (search.html "Escaping Search
    Parameters": ``\\``, ``\\,``, ``\\$``, ``\\|`` stand for the character); escapes are kept.

    >>> _split_unescaped("a\\,b,c", ","), _split_unescaped("s|v\\|w", "|")
    (['a\\\\,b', 'c'], ['s', 'v\\\\|w'])
    """
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    """A search value with its backslash escapes resolved (``\\|`` -> ``|``)."""
    out, escaped = [], False
    for char in text:
        if escaped or char != "\\":
            out.append(char)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def _matches(token: str, identifiers: list[dict[str, Any]]) -> bool:
    """Whether the search token ``[system|]value`` (search.html#token) matches an identifier."""
    pieces = _split_unescaped(token, "|")
    if len(pieces) >= 2:
        system, bar, value = _unescape(pieces[0]), "|", _unescape("|".join(pieces[1:]))
    else:
        system, bar, value = "", "", _unescape(token)
    for ident in identifiers:
        if bar and system and ident.get("system") != system:
            continue
        if bar and not system and "system" in ident:
            continue  # "|value": an identifier without a system
        if value and ident.get("value") != value:
            continue
        return True
    return False


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
