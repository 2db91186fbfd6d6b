"""Every finding of the validate corpora, as JSON lines: to show a change to the validator keeps
its answers.

Runs each layer alone, the fast layers and all layers (auto release detection, and the release
the manifest names) over ``tests/data/validate/corpus``, the golden bundles and any folders given,
and writes one line per finding (file, layers, severity, layer, location, message), sorted.
Take a dump before a change and one after, and compare them::

    .venv/bin/python bench/findings_dump.py > /tmp/before.jsonl
    ... change ...
    .venv/bin/python bench/findings_dump.py > /tmp/after.jsonl && cmp /tmp/before.jsonl /tmp/after.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fhirimg.validate import ALL_LAYERS, parse_layers, validate_bytes

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "validate"


def main() -> None:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    folders = [CORPUS / "corpus", REPO / "tests" / "golden", *map(Path, sys.argv[1:])]
    files = sorted({p for f in folders for p in f.rglob("*.json") if ".binaries" not in p.parts})
    layer_sets = {x.value: frozenset({x}) for x in ALL_LAYERS}
    layer_sets |= {"fast": parse_layers("fast"), "all": ALL_LAYERS}
    lines = set()
    for path in files:
        data = path.read_bytes()
        versions = {"auto"} | {str(manifest.get(path.name, {}).get("fhirVersion", "auto"))}
        for version in sorted(versions):
            for name, layers in layer_sets.items():
                result = validate_bytes(
                    data,
                    source=str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
                    fhir_version=version,
                    layers=layers,
                    beside=path.parent,
                )
                for f in result.findings:
                    row = [f.file, version, name, result.release, f.severity, f.layer]
                    lines.add(json.dumps([*row, f.location, f.message]))
    sys.stdout.write("".join(line + "\n" for line in sorted(lines)))
    print(f"{len(files)} files, {len(lines)} findings", file=sys.stderr)  # noqa: T201


if __name__ == "__main__":
    main()
