"""Layer 4, FHIR invariants: the ``constraint`` FHIRPath expressions of the core definitions.

The constraints (``fhirimg/data/validate/<release>/invariants.json``, see its SOURCE.md) are keyed
by the schema definition they apply to, so the schema walk hands over every typed node and the
expressions run on exactly the nodes of their type: bdl-* on the Bundle and its entries, ref-1 on
each Reference, per-1 on each Period, att-1 on each Attachment, ext-1 on each Extension, dom-* on
each resource. Expressions are compiled once per process (fhirpathpy, with its R4/R5 model so that
choice elements such as ``Extension.value[x]`` resolve), when first needed: most invariants are
answered directly (:mod:`.invariant_fast`) on the shapes convert writes, and compiling all of
them up front cost ~0.35 s of every run's start (profile of ``validate``: 69 ANTLR parses). ``ele-1`` is checked natively by the JSON
layer. Best-practice constraints (dom-6, "a resource should have narrative") are reported as
information, as the HL7 validator does by default with ``-best-practice hint``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhirimg.validate import _data
from fhirimg.validate.findings import Collector, Finding, Layer, Severity
from fhirimg.validate.invariant_fast import Fast, fast_for
from fhirimg.validate.schema_layer import TypedNode, schema_for

log = logging.getLogger(__name__)

# Functions fhirpathpy does not implement, or that need a terminology or profile server.
_UNSUPPORTED = ("htmlChecks", "conformsTo", "memberOf", "resolve()")


@dataclass(frozen=True)
class Invariant:
    key: str
    severity: Severity
    human: str
    expression: str
    prop: str | None
    release: str
    supported: bool
    """False for an expression that needs a function fhirimg does not evaluate (never compiled)."""
    fast: Fast | None = None
    """The direct answer on plain shapes (:mod:`.invariant_fast`), FHIRPath otherwise."""

    def compiled(self) -> Callable[..., list[Any]] | None:
        """The compiled FHIRPath of the expression (compiled on first use, once per process), or
        None when it cannot be evaluated here."""
        if not self.supported:
            return None
        return _compile(self.release, self.expression)


# The function form as(type) on a collection: R4 writes dom-3 with `descendants().as(uri)`, which
# fhirpathpy rejects ("expected singleton") so dom-3 never ran on a resource with contained
# resources. R5 restates the same constraint with ofType(), the filter the HL7 Java validator
# applies; on a single item the two are the same.
_AS_FUNCTION = re.compile(r"(?<![\w])as\(")


def _portable(expression: str) -> str:
    """``expression`` with the function ``as(type)`` written as ``ofType(type)``.

    >>> _portable("descendants().as(uri) | where(as(canonical) = '#')")
    "descendants().ofType(uri) | where(ofType(canonical) = '#')"
    """
    return _AS_FUNCTION.sub("ofType(", expression)


def _quiet(label: str, value: Any) -> None:
    """trace() in an expression (dom-3, ref-1) must not print on stdout, which carries data."""


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue(), which fhirpathpy lacks: one primitive with a value."""
    return [len(inputs) == 1 and isinstance(inputs[0], str | int | float | bool)]


@cache
def _compile(release: str, expression: str) -> Callable[..., list[Any]] | None:
    """``expression`` compiled by fhirpathpy with the model of ``release``; None when it does not
    parse (not checkable here)."""
    import fhirpathpy
    from fhirpathpy.models import models

    options = {
        "traceFn": _quiet,
        "userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}},
    }
    try:
        run: Callable[..., list[Any]] = fhirpathpy.compile(
            _portable(expression), models[release], options
        )
    except Exception:  # noqa: BLE001 - a parser error means: not checkable here
        log.debug("cannot compile %s", expression)
        return None
    return run


@cache
def invariants_for(release: str) -> dict[str, tuple[Invariant, ...]]:
    """The invariants of ``release`` by schema definition, built once per process (their
    FHIRPath compiled when first needed: :meth:`Invariant.compiled`)."""
    raw: dict[str, list[dict[str, Any]]] = _data.load(release, "invariants.json")
    out: dict[str, tuple[Invariant, ...]] = {}
    for definition, items in raw.items():
        compiled = []
        for item in items:
            expr = item["expression"]
            supported = not any(u in expr for u in _UNSUPPORTED)
            severity = (
                Severity.INFORMATION
                if item.get("bestPractice")
                else Severity.ERROR
                if item["severity"] == "error"
                else Severity.WARNING
            )
            # A direct answer only for an expression FHIRPath can evaluate, as before compiling
            # was put off: tests/test_invariant_fast.py checks each one compiles.
            fast = fast_for(expr) if supported and item["property"] is None else None
            compiled.append(
                Invariant(
                    item["key"],
                    severity,
                    item["human"],
                    expr,
                    item["property"],
                    release,
                    supported,
                    fast,
                )
            )
        out[definition] = tuple(compiled)
    return out


def _fhir_type(node: TypedNode, release: str) -> str:
    """The FHIRPath type name of a node: a resource or datatype name, or a backbone element path."""
    if "_" in node.definition:
        return node.element_path
    return node.definition


def check(typed: list[TypedNode], file: str, release: str) -> list[Finding]:
    """Evaluate every invariant on every node of its type."""
    from fhirpathpy.engine.nodes import ResourceNode

    out = Collector(file, Layer.INVARIANT)
    table = invariants_for(release)
    schema_for(release)  # the walk that produced `typed` used it already; keeps the cache warm
    not_checked: dict[str, str] = {}
    for node in typed:
        invariants = table.get(node.definition)
        if not invariants:
            continue
        type_name = _fhir_type(node, release)
        env = {"resource": node.resource, "rootResource": node.root_resource}
        for inv in invariants:
            if not inv.supported:
                not_checked.setdefault(inv.key, node.location)
                continue
            if inv.fast is not None:
                answer = inv.fast(node.node, node.resource)
                if answer is True:
                    continue
                if answer is False:
                    out.add(inv.severity, node.location, f"{inv.key}: {inv.human}")
                    continue
            run = inv.compiled()
            if run is None:  # does not parse: not checkable here
                not_checked.setdefault(inv.key, node.location)
                continue
            targets: list[tuple[str, Any, str]]
            if inv.prop is None:
                targets = [(node.location, node.node, type_name)]
            else:
                value = node.node.get(inv.prop)
                if value is None:
                    continue
                values = value if isinstance(value, list) else [value]
                targets = [
                    (
                        f"{node.location}.{inv.prop}"
                        + (f"[{i}]" if isinstance(value, list) else ""),
                        v,
                        f"{type_name}.{inv.prop}",
                    )
                    for i, v in enumerate(values)
                ]
            for loc, data, tname in targets:
                try:
                    result = run(ResourceNode.create_node(data, tname), env)  # type: ignore[no-untyped-call]
                except Exception as exc:  # noqa: BLE001 - report, do not crash the run
                    out.info(loc, f"{inv.key} could not be evaluated: {exc}")
                    continue
                # Only a false result violates the invariant. An empty one (e.g. ref-1 on a
                # Reference with only a display: `{}.startsWith('#').not()` is empty) passes, as
                # in the HL7 Java validator, where not() of an empty collection is true.
                if result and result != [True]:
                    out.add(inv.severity, loc, f"{inv.key}: {inv.human}")
    for key, where in sorted(not_checked.items()):
        out.info(where, f"{key} not checked (needs a FHIRPath function fhirimg does not evaluate)")
    return out.findings
