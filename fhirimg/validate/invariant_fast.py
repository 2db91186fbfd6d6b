"""The answers of the most frequent invariants on the plain shapes they meet, without FHIRPath.

fhirpathpy interprets an expression's tree on every node: the bdl-* invariants of a Bundle cost
about a millisecond each (bdl-3: 0.9 ms on a 4-entry bundle, most of it re-evaluating
``%resource.type = 'batch' or ...`` for every entry), more than the model layer spends on the
whole bundle (profile of ``validate`` on 200 bundles). Here each of them is answered directly for
the shapes convert writes and most bundles have, keyed by the *exact expression text* of the
definitions (``invariants.json``), so an expression changed there is evaluated by FHIRPath again.

Each function answers True (holds), False (violated) or None: "not a shape this knows", and then
the expression is evaluated by fhirpathpy as before. None is answered for anything unusual
(a missing or non-string ``type``, a null, an empty object or string, an element of the wrong
JSON type, contained resources, a ``#`` reference, a document or message bundle), so the
three-valued logic of FHIRPath never has to be imitated: on the shapes answered here every
sub-expression has a value. tests/test_invariant_fast.py checks the answers against fhirpathpy on
every node of the validate corpus, the golden bundles and a grid of odd bundles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Answer = bool | None
Fast = Callable[[dict[str, Any], dict[str, Any]], Answer]
"""``(node, resource) -> Answer``: the node the invariant is on and its resource (``%resource``)."""


def _present(value: Any) -> Answer:
    """Whether an element holding ``value`` exists, for a value of a plain shape: a non-empty
    object or string (None: a null, an empty value or another type, left to FHIRPath)."""
    if isinstance(value, dict | str) and value:
        return True
    return None


def _has(node: dict[str, Any], key: str) -> Answer:
    """``key.exists()`` on ``node`` for a plain shape (None otherwise)."""
    if key not in node:
        return False
    return _present(node[key])


def _type(resource: dict[str, Any]) -> str | None:
    value = resource.get("type")
    return value if isinstance(value, str) and value else None


def _entries(node: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The entries of a Bundle when each is a non-empty object (None otherwise)."""
    if "entry" not in node:
        return []
    entries = node["entry"]
    if not isinstance(entries, list) or not entries:
        return None
    if not all(isinstance(e, dict) and e for e in entries):
        return None
    return entries


def _bdl_1(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # total.empty() or (type = 'searchset') or (type = 'history')
    bundle_type = _type(node)
    if bundle_type is None:
        return None
    if "total" not in node:
        return True
    total = node["total"]
    if not isinstance(total, int) or isinstance(total, bool):
        return None
    return bundle_type in ("searchset", "history")


def _bdl_2(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # entry.search.empty() or (type = 'searchset'), in either order
    bundle_type, entries = _type(node), _entries(node)
    if bundle_type is None or entries is None:
        return None
    searched = [_has(e, "search") for e in entries]
    if None in searched:
        return None
    return not any(searched) or bundle_type == "searchset"


def _bdl_3_4(key: str, types: tuple[str, ...]) -> Fast:
    # entry.all(<key>.exists() = (%resource.type = <t1> or %resource.type = <t2> or ...))
    def check(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
        bundle_type, entries = _type(resource), _entries(node)
        if bundle_type is None or entries is None:
            return None
        expected = bundle_type in types
        present = [_has(e, key) for e in entries]
        if None in present:
            return None
        return all(p == expected for p in present)

    return check


def _bdl_7(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # (type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId)
    #     .isDistinct()
    bundle_type, entries = _type(node), _entries(node)
    if bundle_type is None or entries is None:
        return None
    if bundle_type == "history":
        return True
    keys: list[str] = []
    for e in entries:
        if "fullUrl" not in e:
            continue
        full_url = e["fullUrl"]
        if not isinstance(full_url, str) or not full_url:
            return None
        version = ""
        if "resource" in e:
            res = e["resource"]
            if not isinstance(res, dict) or not res:
                return None
            if "meta" in res:
                meta = res["meta"]
                if not isinstance(meta, dict) or not meta:
                    return None
                if "versionId" in meta:
                    version = meta["versionId"]
                    if not isinstance(version, str) or not version:
                        return None
        keys.append(full_url + version)
    return len(set(keys)) == len(keys)


def _not_of_type(*kinds: str) -> Fast:
    # type = '<kind>' implies (...): holds whenever the type is another one
    def check(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
        bundle_type = _type(node)
        if bundle_type is None or bundle_type in kinds:
            return None
        return True

    return check


def _bdl_5(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # resource.exists() or request.exists() or response.exists()
    present = [_has(node, k) for k in ("resource", "request", "response")]
    if None in present:
        return None
    return any(present)


def _bdl_8(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # fullUrl.contains('/_history/').not()  (R5: fullUrl.exists() implies ...)
    if "fullUrl" not in node:
        return None  # empty.not() is empty in R4, true in R5: left to FHIRPath
    full_url = node["fullUrl"]
    if not isinstance(full_url, str) or not full_url:
        return None
    return "/_history/" not in full_url


def _no_contained(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # dom-2, dom-3, dom-4, dom-5 read only `contained`: each holds when there is none
    return True if "contained" not in node else None


def _dom_6(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # text.`div`.exists()
    if "text" not in node:
        return False
    text = node["text"]
    if isinstance(text, dict) and text and "div" not in text:
        return False
    if isinstance(text, dict) and isinstance(text.get("div"), str) and text["div"]:
        return True
    return None


def _ref_1(node: dict[str, Any], resource: dict[str, Any]) -> Answer:
    # reference.startsWith('#').not() or (...contained...)  (R5: reference.exists() implies ...)
    reference = node.get("reference")
    if isinstance(reference, str) and reference and not reference.startswith("#"):
        return True
    return None


FAST: dict[str, Fast] = {
    "total.empty() or (type = 'searchset') or (type = 'history')": _bdl_1,
    "entry.search.empty() or (type = 'searchset')": _bdl_2,
    "(type = 'searchset') or entry.search.empty()": _bdl_2,
    "entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction' "
    "or %resource.type = 'history'))": _bdl_3_4("request", ("batch", "transaction", "history")),
    "entry.all(response.exists() = (%resource.type = 'batch-response' or %resource.type = "
    "'transaction-response' or %resource.type = 'history'))": _bdl_3_4(
        "response", ("batch-response", "transaction-response", "history")
    ),
    "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId)"
    ".isDistinct()": _bdl_7,
    "type = 'document' implies (identifier.system.exists() and identifier.value.exists())": (
        _not_of_type("document")
    ),
    "type = 'document' implies (timestamp.hasValue())": _not_of_type("document"),
    "type = 'document' implies entry.first().resource.is(Composition)": _not_of_type("document"),
    "type = 'message' implies entry.first().resource.is(MessageHeader)": _not_of_type("message"),
    "resource.exists() or request.exists() or response.exists()": _bdl_5,
    "fullUrl.contains('/_history/').not()": _bdl_8,
    "fullUrl.exists() implies fullUrl.contains('/_history/').not()": _bdl_8,
    "contained.contained.empty()": _no_contained,
    "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()": _no_contained,
    "contained.meta.security.empty()": _no_contained,
    "text.`div`.exists()": _dom_6,
    "reference.startsWith('#').not() or (reference.substring(1).trace('url') in "
    "%rootResource.contained.id.trace('ids'))": _ref_1,
    "reference.exists()  implies (reference.startsWith('#').not() or "
    "(reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids')) or "
    "(reference='#' and %rootResource!=%resource))": _ref_1,
}
"""Expression text -> its direct answer. dom-3's text differs per release; it is added below."""


def fast_for(expression: str) -> Fast | None:
    """The direct answer of ``expression`` (exact text), if there is one.

    >>> fast_for("contained.contained.empty()")({"resourceType": "Patient"}, {})
    True
    >>> fast_for("text.`div`.exists()") is not None, fast_for("1 = 1")
    (True, None)
    """
    if expression.startswith("contained.where(") and expression.endswith(".empty()"):
        # dom-3 (R4 and R5 spell it differently): contained.where(...).trace(...).empty()
        return _no_contained
    return FAST.get(expression)
