"""Fuzzing in the suite (issue 11, "How it is shown"): nothing breaks, nothing is lost.

Bounded to about a minute in all, with fixed seeds (``FHIRIMG_FUZZ_SEED`` picks others, to
reproduce a ``bench/fuzz.py`` campaign batch or to explore): mutated DICOM headers through
:func:`fhirimg.convert` (library, many files in one call) and through ``fhirimg convert`` as a
user runs it; mutated pixel data with Binaries inline and rendered images; mutated bundles
through ``fhirimg push --dry-run`` and against the real FHIR test server. The mutators and the
checks are :mod:`tests.fuzzing`, shared with ``bench/fuzz.py``; the fuzzer of ``validate`` is
``tests/test_validate_fuzz.py``, whose strategy lives there too (not repeated here).

Each check asserts: no exception escapes (never exit 70, no traceback on stderr), every input
is in report.json exactly once (with a reason unless converted), every bundle written validates
with all layers of :mod:`fhirimg.validate`, and ``push`` reports every file. The regression tests
at the end pin the distinct failures the campaigns found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests import fuzzing
from tests.fuzzing import Failure

# pydicom warns about every odd element the mutants hold: expected, and thousands of lines.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = int(os.environ.get("FHIRIMG_FUZZ_SEED", "20261129"))


def _assert_none(failures: list[Failure]) -> None:
    assert not failures, "\n".join(f"{f}\n{f.trace}" for f in failures[:5])


def _batch(kind: str, count: int, folder: Path, seed: int = SEED) -> list[Path]:
    return fuzzing.write_batch(kind, seed, count, folder)


def test_mutators_are_deterministic(tmp_path: Path) -> None:
    # A CI failure is reproduced from its seed: the same seed, the same bytes.
    for kind in fuzzing.KINDS:
        first = fuzzing.make_batch(kind, SEED, 8)
        assert first == fuzzing.make_batch(kind, SEED, 8), kind
        assert len(set(first)) > 1, kind
    assert fuzzing.make_batch("headers", SEED, 8) != fuzzing.make_batch("headers", SEED + 1, 8)


def test_mutated_headers_through_the_library(tmp_path: Path) -> None:
    inputs = _batch("headers", 200, tmp_path / "in")
    _assert_none(fuzzing.check_convert(inputs, tmp_path / "out", pixels=False))


@pytest.mark.parametrize("variant", range(len(fuzzing.PIXEL_VARIANTS)))
def test_mutated_pixels_with_binaries_and_media(tmp_path: Path, variant: int) -> None:
    # Binaries inline and beside; PNG and JPEG, per instance and per series, frames, thumbnails.
    inputs = _batch("pixels", 30, tmp_path / "in", seed=SEED + variant)
    _assert_none(fuzzing.check_convert(inputs, tmp_path / "out", pixels=True, variant=variant))


def test_mutants_through_the_command_line(tmp_path: Path) -> None:
    # Two worker processes (-j 2), headers and pixels together, Binaries and rendered images.
    inputs = _batch("headers", 40, tmp_path / "in" / "h")
    inputs += _batch("pixels", 20, tmp_path / "in" / "p")
    _assert_none(fuzzing.check_convert_cli(inputs, tmp_path / "out", pixels=True))


def _push_fuzz(folder: Path, server: str | None) -> None:
    inputs = _batch("push", 30, folder)
    _assert_none(fuzzing.check_inputs("push", inputs, folder.parent / "unused", server))


def test_mutated_bundles_through_push_dry_run(tmp_path: Path) -> None:
    _push_fuzz(tmp_path / "in", None)


@pytest.mark.server
def test_mutated_bundles_pushed_to_the_fhir_server(tmp_path: Path, clean_fhir: Any) -> None:
    _push_fuzz(tmp_path / "in", clean_fhir.base_url)


# --------------------------------------------------------------------------- what campaigns found
# Reproducers of the distinct failures of the bench/fuzz.py campaign (issue 11 note), all in push:
# each was exit 70, also with --dry-run; now each odd file is refused with its reason.
_GOOD = sorted(fuzzing.GOLDEN_BUNDLES)[0]


def _push_dry_run(folder: Path) -> Any:
    from typer.testing import CliRunner

    from fhirimg.cli import app

    args = ["push", str(folder), "--dry-run", "--json", "-q", "--journal", str(folder / ".j")]
    return CliRunner().invoke(app, args)


def _transaction(entries: Any) -> bytes:
    import orjson

    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def _study(series: Any) -> list[Any]:
    return [{"resource": {"resourceType": "ImagingStudy", "series": series}}]


def _instance(instance: Any) -> list[Any]:
    return _study([{"instance": [instance]}])


_EXT = "https://fhirimg.dev/fhir/StructureDefinition/instance-binary"
# Each shape the campaign found, one per line of push/files.py binaries_beside it crashed on.
_SHAPES = {
    "entry-true": True,
    "entry-null": [None],
    "entry-int": [1],
    "entry-str": ["x"],
    "entry-list": [[]],
    "resource-list": [{"resource": [1]}],
    "request-list": [{"resource": {"resourceType": "Binary"}, "request": [1]}],
    "series-float": _study(1.5),
    "series-item-list": _study([[]]),
    "instance-str": _study([{"instance": ["x"]}]),
    "extension-list": _instance({"extension": [[]]}),
    "valueReference-list": _instance({"extension": [{"url": _EXT, "valueReference": [1]}]}),
}


@pytest.mark.parametrize("entries", list(_SHAPES.values()), ids=list(_SHAPES))
def test_push_regression_entry_shapes(tmp_path: Path, entries: Any) -> None:
    # push/files.py binaries_beside calls .get() on whatever an entry, resource, request, series,
    # instance, extension or valueReference holds, and iterates "entry" and "series" as lists:
    # AttributeError / TypeError out of discover(), exit 70 (also with --dry-run).
    (tmp_path / "good.json").write_bytes(_GOOD.read_bytes())
    (tmp_path / "bad.json").write_bytes(_transaction(entries))
    result = _push_dry_run(tmp_path)
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)["summary"]
    files = [b["file"] for b in doc["bundles"]] + [Path(i["file"]).name for i in doc["ignored"]]
    assert sorted(files) == ["bad.json", "good.json"]


def test_push_regression_nesting_past_the_json_writer(tmp_path: Path) -> None:
    # jsonio.loads reads 300 levels; push_bundle's jsonio.dumps (orjson, 254 levels at most)
    # raises TypeError "Recursion limit reached" out of push_paths.
    deep = b"[" * 300 + b"]" * 300
    resource = b'{"resourceType":"Patient","x":' + deep + b"}"
    entry = b'{"resource":' + resource + b',"request":{"method":"POST","url":"Patient"}}'
    (tmp_path / "good.json").write_bytes(_GOOD.read_bytes())
    (tmp_path / "deep.json").write_bytes(
        b'{"resourceType":"Bundle","type":"transaction","entry":[' + entry + b"]}"
    )
    result = _push_dry_run(tmp_path)
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)["summary"]
    files = {b["file"]: b for b in doc["bundles"]} | {
        Path(i["file"]).name: i for i in doc["ignored"]
    }
    assert sorted(files) == ["deep.json", "good.json"]
