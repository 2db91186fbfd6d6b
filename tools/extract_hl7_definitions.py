#!/usr/bin/env python3
"""Regenerate ``fhirimg/data/validate/`` from the HL7 FHIR npm packages (CC0).

Usage (from the repository root)::

    mkdir -p /tmp/hl7 && cd /tmp/hl7
    npm pack hl7.fhir.r4.examples@4.0.1 hl7.fhir.r4b.core@4.3.0 hl7.fhir.r5.core@5.0.0
    cd - && python tools/extract_hl7_definitions.py /tmp/hl7

The folder given may hold the ``.tgz`` files as ``npm pack`` leaves them or already unpacked
folders. For each release (r4, r5) it writes three small JSON files:

``fhir.schema.json``
    The official HL7 FHIR JSON Schema (``package/openapi/fhir.schema.json``), pruned to the
    definitions reachable from the resource types fhirimg reads and writes, descriptions removed,
    ``ResourceList`` cut down to those types, and ``enum`` added on ``code`` elements that have a
    *required* binding to a value set that can be expanded from the package (the schema in the npm
    packages carries no enums; the one published on hl7.org does, derived the same way).
``references.json``
    For each element of type Reference (or CodeableReference), the resource types it may point at
    (``ElementDefinition.type.targetProfile``), keyed by element path (``ImagingStudy.subject``).
``invariants.json``
    The ``ElementDefinition.constraint`` entries (key, severity, human, FHIRPath expression), keyed
    by the schema definition they apply to (``ImagingStudy_Series``) and the property, if any.

R4 takes its StructureDefinitions and value sets from ``hl7.fhir.r4.examples@4.0.1`` (R4 4.0.1)
and its JSON Schema from ``hl7.fhir.r4b.core@4.3.0`` (no R4 package carries it; R4B left the
resources fhirimg uses as in R4). R5 takes everything from ``hl7.fhir.r5.core@5.0.0``.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "fhirimg" / "data" / "validate"

RESOURCES = {
    "r4": [
        "Bundle",
        "Patient",
        "ImagingStudy",
        "Endpoint",
        "Binary",
        "Media",
        "DocumentReference",
        "OperationOutcome",
    ],
    "r5": [
        "Bundle",
        "Patient",
        "ImagingStudy",
        "Endpoint",
        "Binary",
        "DocumentReference",
        "ImagingSelection",
        "OperationOutcome",
    ],
}
PACKAGES = {
    "r4": {"schema": "hl7.fhir.r4b.core-4.3.0", "defs": "hl7.fhir.r4.examples-4.0.1"},
    "r5": {"schema": "hl7.fhir.r5.core-5.0.0", "defs": "hl7.fhir.r5.core-5.0.0"},
}
# Keywords the runtime interpreter (fhirimg/validate/schema_layer.py) understands.
KNOWN_KEYWORDS = {
    "$ref",
    "type",
    "items",
    "properties",
    "additionalProperties",
    "pattern",
    "required",
    "const",
    "enum",
    "oneOf",
}
SKIPPED_INVARIANTS = {"ele-1"}  # checked natively by the JSON layer (no empty elements)


def package_dir(root: Path, name: str) -> Path:
    unpacked = root / name / "package"
    if unpacked.is_dir():
        return unpacked
    tgz = root / f"{name}.tgz"
    if not tgz.is_file():
        sys.exit(f"missing {tgz} (run npm pack, see the docstring)")
    with tarfile.open(tgz) as tf:
        tf.extractall(root / name, filter="data")
    return unpacked


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def strip(node: Any) -> Any:
    """Drop descriptions; keep only keywords the interpreter understands (and fail on others)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "description":
                continue
            if key not in KNOWN_KEYWORDS:
                raise SystemExit(f"schema keyword {key!r} is not understood by schema_layer.py")
            if key == "properties":
                out[key] = {k: strip(v) for k, v in value.items()}
            else:
                out[key] = strip(value)
        return out
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs_in(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value.rsplit("/", 1)[-1])
            else:
                found |= refs_in(value)
    elif isinstance(node, list):
        for v in node:
            found |= refs_in(v)
    return found


def prune_schema(schema: dict[str, Any], resources: list[str]) -> dict[str, Any]:
    defs = schema["definitions"]
    keep: set[str] = set()
    todo = [*resources, "Element", "Extension"]
    while todo:
        name = todo.pop()
        if name in keep or name == "ResourceList":
            continue
        keep.add(name)
        todo.extend(refs_in(defs[name]))
    out = {name: strip(defs[name]) for name in sorted(keep)}
    out["ResourceList"] = {"oneOf": [{"$ref": f"#/definitions/{r}"} for r in resources]}
    return {
        "$schema": schema["$schema"],
        "id": schema["id"],
        "discriminator": {
            "propertyName": "resourceType",
            "mapping": {r: f"#/definitions/{r}" for r in resources},
        },
        "oneOf": [{"$ref": f"#/definitions/{r}"} for r in resources],
        "definitions": out,
    }


def ref_name(prop: dict[str, Any]) -> str | None:
    target = prop.get("items", prop)
    ref = target.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def locate(defs: dict[str, Any], path: str) -> tuple[str, str | None] | None:
    """Map an element path (``ImagingStudy.series.uid``) to (definition, property or None)."""
    parts = path.split(".")
    if parts[0] not in defs:
        return None
    current = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        props = defs[current].get("properties", {})
        if part not in props:
            return None
        target = ref_name(props[part])
        last = i == len(parts) - 1
        if last:
            # A backbone element (own definition named Type_Part) owns its constraints itself.
            if target and "_" in target and target.split("_", 1)[0] == parts[0]:
                return target, None
            return current, part
        if target is None:
            return None
        current = target
    return current, None


class ValueSets:
    def __init__(self, pkg: Path) -> None:
        self.value_sets: dict[str, Any] = {}
        self.code_systems: dict[str, Any] = {}
        for f in pkg.glob("ValueSet-*.json"):
            vs = load(f)
            self.value_sets[vs["url"]] = vs
        for f in pkg.glob("CodeSystem-*.json"):
            cs = load(f)
            self.code_systems[cs["url"]] = cs

    def expand(self, url: str, depth: int = 0) -> list[str] | None:
        """All codes of a value set, or None when it cannot be expanded from the package alone."""
        vs = self.value_sets.get(url.split("|", 1)[0])
        if vs is None or depth > 5:
            return None
        compose = vs.get("compose", {})
        if compose.get("exclude"):
            return None
        codes: list[str] = []
        for inc in compose.get("include", []):
            if inc.get("filter"):
                return None
            for sub in inc.get("valueSet", []):
                more = self.expand(sub, depth + 1)
                if more is None:
                    return None
                codes.extend(more)
            if "concept" in inc:
                codes.extend(c["code"] for c in inc["concept"])
            elif "system" in inc:
                cs = self.code_systems.get(inc["system"])
                if cs is None or cs.get("content") != "complete":
                    return None
                codes.extend(flatten(cs.get("concept", [])))
        return sorted(set(codes)) or None


def flatten(concepts: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for c in concepts:
        out.append(c["code"])
        out.extend(flatten(c.get("concept", [])))
    return out


def structure_definitions(pkg: Path, names: set[str]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(names):
        f = pkg / f"StructureDefinition-{name}.json"
        if f.is_file():
            sd = load(f)
            if sd.get("derivation") == "specialization" or sd.get("kind") == "resource":
                out.append(sd)
    return out


def extract(root: Path, release: str) -> None:
    names = PACKAGES[release]
    schema_pkg = package_dir(root, names["schema"])
    defs_pkg = package_dir(root, names["defs"])
    schema = prune_schema(load(schema_pkg / "openapi" / "fhir.schema.json"), RESOURCES[release])
    defs = schema["definitions"]
    value_sets = ValueSets(defs_pkg)
    type_names = {n for n in defs if "_" not in n and n[:1].isupper() and n != "ResourceList"}
    references: dict[str, list[str]] = {}
    invariants: dict[str, list[dict[str, Any]]] = {}
    skipped: list[str] = []
    for sd in structure_definitions(defs_pkg, type_names):
        root_path = sd["type"]
        for el in sd["snapshot"]["element"]:
            path: str = el["path"]
            where = locate(defs, path) if "[x]" not in path else None
            # Required bindings on code elements become schema enums.
            binding = el.get("binding", {})
            types = [t["code"] for t in el.get("type", [])]
            if binding.get("strength") == "required" and types == ["code"] and where:
                codes = value_sets.expand(binding.get("valueSet", ""))
                d, prop = where
                if codes is None:
                    skipped.append(f"{path}: {binding.get('valueSet')}")
                elif prop is not None and prop in defs[d].get("properties", {}):
                    defs[d]["properties"][prop]["enum"] = codes
            # The schema types Resource.id as `string` because the StructureDefinition gives it the
            # FHIRPath type System.String; its fhir-type extension says it is an `id` (1..64 chars).
            for t in el.get("type", []):
                for x in t.get("extension", []):
                    fhir_type = x.get("valueUrl") or x.get("valueUri")
                    if (
                        x.get("url", "").endswith("structuredefinition-fhir-type")
                        and fhir_type in defs
                        and "properties" not in defs[fhir_type]
                        and where
                        and where[1] is not None
                        and where[1] in defs[where[0]].get("properties", {})
                    ):
                        defs[where[0]]["properties"][where[1]]["$ref"] = (
                            f"#/definitions/{fhir_type}"
                        )
            # Reference targets.
            for t in el.get("type", []):
                if t["code"] in ("Reference", "CodeableReference") and t.get("targetProfile"):
                    key = path.replace("[x]", "Reference")
                    if t["code"] == "CodeableReference":
                        key += ".reference"
                    references[key] = sorted(p.rsplit("/", 1)[-1] for p in t["targetProfile"])
            # Invariants owned by this definition (inherited copies are evaluated at their owner).
            for c in el.get("constraint", []):
                if c["key"] in SKIPPED_INVARIANTS or "expression" not in c:
                    continue
                source = c.get("source")
                inherited_root = (
                    path == root_path
                    and source
                    and source.endswith(("/DomainResource", "/Resource"))
                )
                if source not in (None, sd["url"]) and not inherited_root:
                    continue
                if where is None:
                    if path == root_path and root_path in defs:
                        where = (root_path, None)
                    else:
                        continue
                d, prop = where
                best = any(
                    x.get("url", "").endswith("elementdefinition-bestpractice")
                    and x.get("valueBoolean")
                    for x in c.get("extension", [])
                )
                invariants.setdefault(d, []).append(
                    {
                        "key": c["key"],
                        "severity": c["severity"],
                        "human": c["human"],
                        "expression": c["expression"],
                        "property": prop,
                        "path": path,
                        "bestPractice": best,
                    }
                )
    # Resource.id is an `id` (1..64 characters): R4 resource.html#Resource, and the fhir-type
    # extension of R4B/R5; the R4 4.0.1 StructureDefinitions still say `string` there.
    for rtype in RESOURCES[release]:
        defs[rtype]["properties"]["id"]["$ref"] = "#/definitions/id"
    for d, items in invariants.items():
        # ext-1 shows up on Extension and again on Extension.extension: keep the owner's copy.
        at_root = {i["key"] for i in items if i["property"] is None}
        invariants[d] = [i for i in items if i["property"] is None or i["key"] not in at_root]
    out = OUT / release
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (
        ("fhir.schema.json", schema),
        ("references.json", dict(sorted(references.items()))),
        ("invariants.json", dict(sorted(invariants.items()))),
    ):
        text = json.dumps(data, indent=1, sort_keys=False, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    print(  # noqa: T201 - a tool's report
        f"{release}: {len(defs)} schema definitions, {len(references)} reference elements, "
        f"{sum(len(v) for v in invariants.values())} invariants; required bindings left "
        f"unexpanded: {len(skipped)}"
    )
    for s in skipped:
        print(f"  not expandable: {s}")  # noqa: T201


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    for release in ("r4", "r5"):
        extract(root, release)
    # Compile every pattern once so a regex Python cannot read fails here, not at run time.
    for release in ("r4", "r5"):
        schema = load(OUT / release / "fhir.schema.json")
        for d in schema["definitions"].values():
            if "pattern" in d:
                re.compile(d["pattern"])


if __name__ == "__main__":
    main()
