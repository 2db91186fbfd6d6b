"""Layer 1, JSON itself: well-formed, and none of the shapes FHIR JSON forbids.

FHIR JSON (http://hl7.org/fhir/R4/json.html): no ``null`` values (except inside the parallel
arrays of primitive extensions, ``"given": ["a", null], "_given": [null, {...}]``), no empty
arrays, objects or strings, and every element has a value or children (invariant ele-1). The
type-aware part of this layer (a string ``"1"`` where an integer belongs, a whitespace-padded
code) needs the element types and runs in the schema walker (:mod:`.schema_layer`), which reports
those findings under this layer's name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from fhirimg.validate.findings import Collector, Finding, Layer, Severity, child

MAX_DEPTH = 128
"""Objects and arrays nested deeper than this (the root counts as 1) are refused before any layer
walks them. The layers recurse, and so do fhir.resources and fhirpathpy, at a few Python frames a
level: 128 keeps them well inside Python's default recursion limit (1000 frames) and far above
real FHIR (fhirimg's bundles nest 12 deep; orjson itself stops parsing at 1024)."""


def parse(data: bytes | str, file: str) -> tuple[Any, Collector]:
    """Parse JSON; on failure return ``None`` and one error with the line and column."""
    out = Collector(file, Layer.JSON)
    try:
        return orjson.loads(data), out
    except orjson.JSONDecodeError as exc:
        out.error("$", f"not well-formed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
        return None, out


def _children(node: dict[str, Any] | list[Any]) -> Iterator[tuple[str | int, Any]]:
    return iter(node.items()) if isinstance(node, dict) else enumerate(node)


def too_deep(obj: Any, root: str, limit: int = MAX_DEPTH) -> str | None:
    """The location of the first object or array nested deeper than ``limit``, or None.

    Iterative (a stack of iterators, one per open level), so any depth is safe to measure.

    >>> too_deep({"a": [[1]]}, "X", limit=2)
    'X.a[0]'
    >>> too_deep({"a": [1]}, "X", limit=2) is None
    True
    """
    if not isinstance(obj, dict | list) or _within(obj, limit - 1):
        return None  # most files: no location to find
    return _deep_location(obj, root, limit)


def _deep_location(obj: dict[str, Any] | list[Any], root: str, limit: int) -> str | None:
    """:func:`too_deep`'s answer, found by a walk that can name the location."""
    keys: list[str | int] = []  # the keys leading to the level on top of ``stack``
    stack = [_children(obj)]
    while stack:
        for key, value in stack[-1]:
            if isinstance(value, dict | list):
                keys.append(key)
                if len(stack) >= limit:
                    location = root
                    for k in keys:
                        location = child(location, k)
                    return location
                stack.append(_children(value))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()
    return None


def _within(node: dict[str, Any] | list[Any], levels: int) -> bool:
    """Whether the objects and arrays inside ``node`` nest at most ``levels`` deeper than it.
    Recursive, but never deeper than ``levels`` (:data:`MAX_DEPTH`): about 1.5x faster than the
    iterative walk, which then only runs to name the location."""
    for value in node.values() if isinstance(node, dict) else node:
        if isinstance(value, dict | list) and (levels == 0 or not _within(value, levels - 1)):
            return False
    return True


def too_deep_finding(file: str, location: str) -> Finding:
    """The one finding of a file refused by :func:`too_deep`."""
    return Finding(
        Severity.ERROR,
        file,
        location,
        f"objects and arrays nested deeper than {MAX_DEPTH} levels: the file is not checked further",
        Layer.JSON.value,
    )


def check(obj: Any, file: str, root: str) -> list[Finding]:
    """Report nulls, empty arrays/objects/strings and id-only elements anywhere in ``obj``."""
    out = Collector(file, Layer.JSON)
    if not _clean(obj):  # most files are: the walk that words the findings is then not needed
        _walk(obj, root, out, nulls_ok=False)
    return out.findings


def _clean(node: Any, nulls_ok: bool = False) -> bool:
    """Whether :func:`_walk` finds nothing in ``node``: the same checks, without building a
    location for every node (half the layer's time on clean bundles; profile of validate)."""
    if isinstance(node, dict):
        if not node or (len(node) == 1 and "id" in node):
            return False
        for key, value in node.items():
            if value is None:
                return False
            if isinstance(value, list):
                if key.startswith("_"):
                    values = node.get(key[1:])
                    if isinstance(values, list) and (
                        len(values) != len(value)
                        or any(v is None and e is None for v, e in zip(values, value, strict=False))
                    ):
                        return False
                    twin = key[1:]
                else:
                    twin = f"_{key}"
                if not _clean(value, twin in node):
                    return False
            elif isinstance(value, dict | str) and not _clean(value):
                return False
        return True
    if isinstance(node, list):
        if not node:
            return False
        for item in node:
            if item is None:
                if not nulls_ok:
                    return False
            elif isinstance(item, dict | list | str) and not _clean(item):
                return False
        return True
    if isinstance(node, str):
        return bool(node) and not node.isspace()
    return True


def _walk(node: Any, path: str, out: Collector, *, nulls_ok: bool) -> None:
    if isinstance(node, dict):
        if not node:
            out.error(path, "empty object: every element needs a value or children (ele-1)")
            return
        if len(node) == 1 and "id" in node:
            out.error(path, "element has only an id: it needs a value or children (ele-1)")
        for key, value in node.items():
            if value is None:
                out.error(f"{path}.{key}", "null is not allowed in FHIR JSON: leave it out")
                continue
            # Arrays of primitives and their `_name` twins may hold nulls to keep positions aligned.
            twin = key[1:] if key.startswith("_") else f"_{key}"
            _walk(value, f"{path}.{key}", out, nulls_ok=twin in node)
            if key.startswith("_") and isinstance(value, list):
                _aligned(node.get(twin), value, path, twin, out)
    elif isinstance(node, list):
        if not node:
            out.error(path, "empty array: leave the element out instead")
            return
        for i, item in enumerate(node):
            if item is None:
                if not nulls_ok:
                    out.error(f"{path}[{i}]", "null is not allowed in FHIR JSON arrays")
                continue
            _walk(item, f"{path}[{i}]", out, nulls_ok=False)
    elif isinstance(node, str):
        if not node:
            out.error(path, "empty string: leave the element out instead")
        elif node.isspace():
            out.warning(path, "string holds only whitespace (it reads as empty in FHIR XML)")


def _aligned(values: Any, extras: list[Any], path: str, name: str, out: Collector) -> None:
    """``name`` and ``_name`` are parallel arrays (json.html#primitive): same length, and no
    position null in both (it would hold neither a value nor an id/extension: ele-1)."""
    if not isinstance(values, list):
        return
    if len(values) != len(extras):
        out.error(
            f"{path}._{name}",
            f"_{name} has {len(extras)} items but {name} has {len(values)}: they must align",
        )
    for i, (value, extra) in enumerate(zip(values, extras, strict=False)):
        if value is None and extra is None:
            out.error(f"{path}.{name}[{i}]", "null in both arrays: the item has no value (ele-1)")
