"""Layer 3, the official HL7 FHIR JSON Schema, and the type-aware half of layer 1.

The schema (``fhirimg/data/validate/<release>/fhir.schema.json``, see its SOURCE.md) is pruned to
the resource types fhirimg reads and writes, with the required-binding value sets added as
``enum``. It uses only a small subset of JSON Schema draft-06 (``$ref``, ``properties``,
``additionalProperties: false``, ``items``, ``type``, ``pattern``, ``required``, ``const``,
``enum``, and ``oneOf`` for ``ResourceList``), so it is interpreted here directly: one walk over
the resource with the schema compiled once per release, dispatching ``ResourceList`` on
``resourceType`` (the schema's discriminator) so that a finding in ``Bundle.entry[3].resource``
names its exact location instead of "not valid under any of the given schemas".

The same walk knows each element's FHIR type, so it also reports, under layer ``json``, values of
the wrong JSON type (FHIR JSON has ``integer``/``decimal`` as numbers and ``boolean`` as
true/false; every other primitive is a string: http://hl7.org/fhir/R4/json.html#primitive) and
whitespace-padded codes. Walking can also hand every typed node to the invariant layer.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhirimg.validate import _data
from fhirimg.validate._base64 import strict_decode
from fhirimg.validate.findings import Collector, Finding, Layer

# Integer ranges of the FHIR primitives (http://hl7.org/fhir/R4/datatypes.html#primitive).
_INT32 = (-(2**31), 2**31 - 1)
_INT_RANGES = {"integer": _INT32, "unsignedInt": (0, 2**31 - 1), "positiveInt": (1, 2**31 - 1)}

_KIND_PRIMITIVE = 0
_KIND_COMPLEX = 1
_KIND_RESOURCE = 2
_KIND_XHTML = 3


@dataclass(frozen=True, slots=True)
class Prop:
    """One property of a definition: its type and whether it is an array."""

    kind: int
    target: str
    array: bool
    enum: frozenset[str] | None = None


@dataclass(slots=True)
class Definition:
    name: str
    props: dict[str, Prop] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    resource_type: str | None = None


@dataclass(slots=True)
class Schema:
    release: str
    definitions: dict[str, Definition]
    patterns: dict[str, re.Pattern[str]]
    resource_types: frozenset[str]


@dataclass(frozen=True, slots=True)
class TypedNode:
    """A node the walk typed: what the invariant layer needs to evaluate constraints on it."""

    definition: str
    node: dict[str, Any]
    location: str
    resource: dict[str, Any]
    root_resource: dict[str, Any]
    element_path: str


Visitor = Callable[[TypedNode], None]


def _load(release: str) -> dict[str, Any]:
    data: dict[str, Any] = _data.load(release, "fhir.schema.json")
    return data


def _inline_primitive(pname: str, node: dict[str, Any], primitives: set[str]) -> str:
    """The primitive type of a property the schema spells out inline instead of by ``$ref``.

    Codes with a fixed value set come as a bare ``enum``; choice elements as a bare pattern, and
    their name ends with the type (``valueDateTime``, ``deceasedBoolean``).
    """
    if "enum" in node:
        return "code"
    for i in range(1, len(pname)):
        if pname[i].isupper():
            candidate = pname[i].lower() + pname[i + 1 :]
            if candidate in primitives:
                return candidate
    return "string"


def _ref(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


@cache
def schema_for(release: str) -> Schema:
    """The compiled schema of ``release`` ("r4" or "r5"), loaded once per process."""
    raw = _load(release)["definitions"]
    primitives = {n for n, d in raw.items() if "properties" not in d and n != "ResourceList"}
    patterns = {n: re.compile(raw[n]["pattern"]) for n in primitives if "pattern" in raw[n]}
    definitions: dict[str, Definition] = {}
    resource_types = {_ref(r) for r in raw["ResourceList"]["oneOf"]}
    for name, d in raw.items():
        if name in primitives or name == "ResourceList":
            continue
        definition = Definition(name, required=tuple(d.get("required", ())))
        for pname, p in d["properties"].items():
            if "const" in p:
                definition.resource_type = p["const"]
                continue
            array = p.get("type") == "array"
            inner = p["items"] if array else p
            target = _ref(inner) or _inline_primitive(pname, inner, primitives)
            if target == "ResourceList":
                kind = _KIND_RESOURCE
            elif target == "xhtml":
                kind = _KIND_XHTML
            elif target in primitives:
                kind = _KIND_PRIMITIVE
            else:
                kind = _KIND_COMPLEX
            enum_values = p.get("enum", inner.get("enum"))
            enum = frozenset(enum_values) if enum_values else None
            definition.props[pname] = Prop(kind, target, array, enum)
        definitions[name] = definition
    return Schema(release, definitions, patterns, frozenset(t for t in resource_types if t))


class _Walk:
    __slots__ = ("schema", "json", "out", "visit", "visit_only")

    def __init__(
        self,
        schema: Schema,
        file: str,
        visit: Visitor | None,
        visit_only: Container[str] | None = None,
    ) -> None:
        self.schema = schema
        self.json = Collector(file, Layer.JSON)
        self.out = Collector(file, Layer.SCHEMA)
        self.visit = visit
        self.visit_only = visit_only

    def resource(self, node: Any, path: str, root: dict[str, Any] | None) -> None:
        if not isinstance(node, dict):
            self.json.error(path, f"a resource must be a JSON object, not {_jtype(node)}")
            return
        rtype = node.get("resourceType")
        if not isinstance(rtype, str):
            self.out.error(path, "resource has no resourceType")
            return
        if rtype not in self.schema.resource_types:
            self.out.info(path, f"{rtype} is not checked by the schema or invariant layers")
            return
        self.complex(node, rtype, path, node, root or node, rtype)

    def complex(
        self,
        node: dict[str, Any],
        dname: str,
        path: str,
        res: dict[str, Any],
        root: dict[str, Any],
        element_path: str,
    ) -> None:
        definition = self.schema.definitions[dname]
        props = definition.props
        if self.visit is not None and (self.visit_only is None or dname in self.visit_only):
            self.visit(TypedNode(dname, node, path, res, root, element_path))
        for key, value in node.items():
            if key == "resourceType" and definition.resource_type is not None:
                if value != definition.resource_type:
                    self.out.error(f"{path}.resourceType", f"expected {definition.resource_type}")
                continue
            prop = props.get(key)
            here = f"{path}.{key}"
            if prop is None:
                self.out.error(here, f"unknown element {key!r} in {dname.replace('_', '.')}")
                continue
            if value is None:
                continue  # reported by the JSON layer
            if prop.array:
                if not isinstance(value, list):
                    self.json.error(here, f"{key} must be a JSON array (it is 0..* in FHIR)")
                    value = [value]
                    items = [(here, value[0])]
                else:
                    items = [(f"{here}[{i}]", v) for i, v in enumerate(value) if v is not None]
            else:
                if isinstance(value, list):
                    self.json.error(here, f"{key} must not be an array (it is 0..1 in FHIR)")
                    continue
                items = [(here, value)]
            sub_path = f"{element_path}.{key}"
            for loc, item in items:
                if prop.kind == _KIND_PRIMITIVE:
                    self.primitive(item, prop, loc)
                elif prop.kind == _KIND_COMPLEX:
                    if isinstance(item, dict):
                        self.complex(item, prop.target, loc, res, root, sub_path)
                    else:
                        self.json.error(loc, f"{key} must be a JSON object ({prop.target})")
                elif prop.kind == _KIND_RESOURCE:
                    self.resource(item, loc, root if key == "contained" else None)
                elif not isinstance(item, str):
                    self.json.error(loc, "xhtml must be a JSON string")
        for name in definition.required:
            if name not in node and name != "resourceType":
                self.out.error(f"{path}.{name}", f"required element {name!r} is missing")

    def primitive(self, value: Any, prop: Prop, loc: str) -> None:
        ptype = prop.target
        if ptype == "boolean":
            if not isinstance(value, bool):
                self.json.error(loc, f"boolean expected, got {_jtype(value)} {_show(value)}")
            return
        if ptype in _INT_RANGES:
            if isinstance(value, bool) or not isinstance(value, int):
                self.json.error(loc, f"{ptype} must be a JSON integer, got {_jtype(value)}")
                return
            low, high = _INT_RANGES[ptype]
            if not low <= value <= high:
                self.out.error(loc, f"{value} is out of range for {ptype} ({low}..{high})")
            return
        if ptype == "decimal":
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.json.error(loc, f"decimal must be a JSON number, got {_jtype(value)}")
            return
        if not isinstance(value, str):
            self.json.error(loc, f"{ptype} must be a JSON string, got {_jtype(value)}")
            return
        if not value:
            return  # reported by the JSON layer
        if ptype == "code" and value != value.strip():
            self.json.error(loc, f"code {_show(value)} has leading or trailing whitespace")
            return
        pattern = self.schema.patterns.get(ptype)
        if pattern is not None and pattern.search(value) is None:
            self.out.error(loc, f"{_show(value)} is not a valid {ptype}{_hint(ptype)}")
            return
        if ptype == "base64Binary" and not _is_base64(value):
            self.out.error(loc, "data is not well-formed base64")
            return
        if prop.enum is not None and value not in prop.enum:
            allowed = ", ".join(sorted(prop.enum)) if len(prop.enum) <= 10 else "see the spec"
            self.out.error(loc, f"{_show(value)} is not in the required value set ({allowed})")


def _hint(ptype: str) -> str:
    if ptype == "id":
        return " (letters, digits, '-' and '.', 1 to 64 characters)"
    if ptype in ("dateTime", "instant"):
        return " (a time needs seconds and a time zone)"
    return ""


def _is_base64(value: str) -> bool:
    if not value.isascii():
        return False
    if strict_decode(value) is not None:
        return True
    # FHIR's base64Binary regex tolerates whitespace between the groups.
    squeezed = "".join(value.split())
    if squeezed == value:
        return False
    try:
        binascii.a2b_base64(squeezed, strict_mode=True)
        return True
    except binascii.Error:
        return False


def _jtype(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(
    obj: Any,
    file: str,
    release: str,
    *,
    visit: Visitor | None = None,
    visit_only: Container[str] | None = None,
) -> tuple[list[Finding], list[Finding]]:
    """Walk ``obj`` against the schema of ``release``; return (json findings, schema findings).

    ``visit`` gets every typed node whose definition is in ``visit_only`` (every node when None).
    """
    walk = _Walk(schema_for(release), file, visit, visit_only)
    root = obj.get("resourceType", "$") if isinstance(obj, dict) else "$"
    walk.resource(obj, root if isinstance(root, str) and root else "$", None)
    return walk.json.findings, walk.out.findings
