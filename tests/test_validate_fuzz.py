"""``validate`` over arbitrary JSON: nothing escapes, every file gets a result (issue 11, item 9).

Hypothesis mutates real fhirimg bundles (``tests/golden/``): random subtrees become arbitrary JSON
values (numbers, strings, nulls, arrays, objects, wrong or unknown resourceTypes, nesting far past
the depth limit, numbers no 64-bit type holds, broken bytes; the strategy is
:func:`tests.fuzzing.mutated_bundles`, which ``bench/fuzz.py`` draws from too for its long
campaigns), and the result goes through the
library (:func:`validate_bytes`, :func:`validate_resource`) and through ``fhirimg validate`` on a
folder of them. The explicit tests below pin each crash the fuzzer outside the repo found, and the
files that are not files (FIFOs, devices), too large, or named in bytes that are not UTF-8.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.validate import (
    ALL_LAYERS,
    FAST_LAYERS,
    FileResult,
    Finding,
    Layer,
    Severity,
    bundle_layer,
    iter_validate,
    json_layer,
    validate_bytes,
    validate_resource,
)
from fhirimg.validate import runner as validate_runner
from fhirimg.validate.findings import CANNOT_CHECK
from fhirimg.validate.json_layer import MAX_DEPTH
from fhirimg.validate.runner import display_name, findings_json
from tests.fuzzing import mutated_bundles

CORPUS = Path(__file__).parent / "data" / "validate" / "corpus"
cli = CliRunner()


def _check_result(result: FileResult, source: str) -> None:
    assert result.file == source
    assert result.release in (None, "r4", "r5")
    for f in result.findings:
        assert isinstance(f, Finding)
        assert f.severity in tuple(Severity)
        assert f.layer in {layer.value for layer in Layer}
        assert isinstance(f.location, str)
        assert f.location
        assert isinstance(f.message, str)
        assert f.message
    findings_json([result])  # the --json document can always be written


_FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_FUZZ
@given(mutated_bundles(), st.sampled_from([FAST_LAYERS, ALL_LAYERS]))
def test_validate_bytes_is_total(data: bytes, layers: frozenset[Layer]) -> None:
    result = validate_bytes(data, source="fuzz.json", layers=layers)
    _check_result(result, "fuzz.json")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        assert result.release is None
        return
    if isinstance(obj, dict):
        # The library API on the parsed object, with each release forced.
        for release in ("r4", "r5"):
            for f in validate_resource(obj, fhir_version=release, layers=layers, source="o"):
                assert isinstance(f, Finding)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(mutated_bundles(), min_size=1, max_size=4))
def test_cli_on_a_folder_of_mutants(files: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, data in enumerate(files):
            path = Path(tmp) / f"m{i}.json"
            path.write_bytes(data)
            names.append(str(path))
        result = cli.invoke(app, ["validate", "-j", "1", "--json", "-q", tmp])
        assert result.exit_code in (0, 1), result.output
        doc = json.loads(result.stdout)
        assert sorted(f["file"] for f in doc["files"]) == sorted(names)


# --------------------------------------------------------------------------- the crashes seen


def _study_bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = orjson.loads((CORPUS / "valid_r4.json").read_bytes())
    return bundle


def _entry(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def _errors(data: bytes | dict[str, Any], layers: frozenset[Layer] = ALL_LAYERS) -> list[Finding]:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    result = validate_bytes(raw, source="case.json", layers=layers)
    _check_result(result, "case.json")
    assert not any(f.message.startswith(CANNOT_CHECK) for f in result.findings), result.findings
    return [f for f in result.findings if f.severity is Severity.ERROR]


def test_unknown_entry_resource_type_is_a_finding_not_a_key_error() -> None:
    bundle = _study_bundle()
    bundle["entry"][0]["resource"]["resourceType"] = "Foo"
    errors = _errors(bundle)
    assert any(
        f.layer == "model"
        and f.location == "Bundle.entry[0].resource.resourceType"
        and "'Foo' is not a resource type" in f.message
        for f in errors
    ), errors


def test_unknown_contained_resource_type_is_a_finding() -> None:
    bundle = _study_bundle()
    _entry(bundle, "ImagingStudy")["contained"] = [{"resourceType": "Foo", "id": "a"}]
    errors = _errors(bundle)
    assert any("contained[0].resourceType" in f.location for f in errors), errors


@pytest.mark.parametrize("where", ["root", "entry"])
def test_resource_type_as_a_list_is_a_finding(where: str) -> None:
    bundle = _study_bundle()
    if where == "root":
        bundle["resourceType"] = ["Bundle"]
        errors = _errors(bundle)
        assert [f.message for f in errors] == ["resourceType must be a JSON string, not an array"]
    else:
        bundle["entry"][1]["resource"]["resourceType"] = ["Patient"]
        assert any(f.location.startswith("Bundle.entry[1]") for f in _errors(bundle))


@pytest.mark.parametrize("where", ["study", "series"])
def test_modality_as_a_number_is_a_finding(where: str) -> None:
    bundle = _study_bundle()
    study = _entry(bundle, "ImagingStudy")
    target = study if where == "study" else study["series"][0]
    target["modality"] = 5
    errors = _errors(bundle)
    assert any(f.location.endswith("modality") for f in errors), errors


def test_entry_as_an_int_is_a_finding() -> None:
    bundle = _study_bundle()
    bundle["entry"] = 5
    errors = _errors(bundle)
    assert any(f.layer == "json" and f.location == "Bundle.entry" for f in errors), errors


def test_contained_as_an_int_is_a_finding() -> None:
    bundle = _study_bundle()
    _entry(bundle, "ImagingStudy")["contained"] = 5
    errors = _errors(bundle)
    assert any(f.location.endswith(".contained") for f in errors), errors


def test_description_twin_as_a_string_is_a_finding() -> None:
    bundle = _study_bundle()
    study = _entry(bundle, "ImagingStudy")
    study["_description"] = "x"
    study["series"][0]["_description"] = "x"
    errors = _errors(bundle)
    assert any(f.location.endswith("._description") for f in errors), errors


def test_non_ascii_base64_is_a_schema_error() -> None:
    binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk\u00e9"}
    errors = _errors(binary)
    assert any(
        f.layer == "schema" and f.message == "data is not well-formed base64" for f in errors
    ), errors


def test_non_ascii_base64_exits_1_not_2(tmp_path: Path) -> None:
    path = tmp_path / "binary.json"
    path.write_text('{"resourceType": "Binary", "contentType": "text/plain", "data": "é"}')
    result = cli.invoke(app, ["validate", "-j", "1", str(path)])
    assert result.exit_code == 1, result.output


def _nested(depth: int) -> bytes:
    """A Patient whose ``x`` holds arrays nested so that the deepest is at ``depth``."""
    inner = depth - 1  # the Patient object is level 1
    return b'{"resourceType":"Patient","x":' + b"[" * inner + b"]" * inner + b"}"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 1024])
def test_deep_nesting_is_refused_with_one_finding(depth: int) -> None:
    result = validate_bytes(_nested(depth), source="deep.json", layers=ALL_LAYERS)
    assert result.release is None
    [finding] = result.findings
    assert finding.layer == "json"
    assert finding.severity is Severity.ERROR
    assert f"nested deeper than {MAX_DEPTH} levels" in finding.message
    assert finding.location.startswith("Patient.x[0][0]")


def test_nesting_at_the_limit_is_checked() -> None:
    result = validate_bytes(_nested(MAX_DEPTH), source="deep.json", layers=ALL_LAYERS)
    assert result.release == "r4"
    assert not any("nested deeper" in f.message for f in result.findings)


def test_deep_dict_through_the_library_is_refused() -> None:
    obj: dict[str, Any] = {"resourceType": "Patient"}
    node = obj
    for _ in range(5000):  # built iteratively: deeper than any recursion could walk
        node["extension"] = [{"url": "http://x"}]
        node = node["extension"][0]
    [finding] = validate_resource(obj, layers=ALL_LAYERS)
    assert "nested deeper" in finding.message


def test_a_layer_that_raises_costs_one_finding_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a.json", "boom.json", "c.json"):
        (tmp_path / name).write_bytes((CORPUS / "valid_r4.json").read_bytes())
    real = bundle_layer.check

    def flaky(obj: Any, file: str, release: str) -> list[Finding]:
        if file.endswith("boom.json"):
            raise RuntimeError("boom")
        return real(obj, file, release)

    monkeypatch.setattr(bundle_layer, "check", flaky)
    result = cli.invoke(app, ["validate", "-j", "1", "--json", str(tmp_path)])
    assert result.exit_code == 1, result.output
    files = {Path(f["file"]).name: f["findings"] for f in json.loads(result.stdout)["files"]}
    assert sorted(files) == ["a.json", "boom.json", "c.json"]
    [bad] = [f for f in files["boom.json"] if f["severity"] == "error"]
    assert bad["layer"] == "bundle"
    assert bad["message"] == f"{CANNOT_CHECK}: RuntimeError: boom"
    assert not [f for f in files["a.json"] + files["c.json"] if f["severity"] == "error"]


def test_validate_bytes_survives_a_failing_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes | str, file: str) -> Any:
        raise MemoryError

    monkeypatch.setattr(json_layer, "parse", broken)
    [finding] = validate_bytes(b"{}", source="m.json").findings
    assert finding.message == f"{CANNOT_CHECK}: out of memory"


# --------------------------------------------------------------------------- files that are not


def test_fifo_is_reported_not_opened(tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_bytes((CORPUS / "valid_r4.json").read_bytes())
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    results: list[FileResult] = []
    # Opening a FIFO blocks until a writer comes: run in a thread so a regression fails, not hangs.
    worker = threading.Thread(
        target=lambda: results.extend(iter_validate([tmp_path], layers=FAST_LAYERS)), daemon=True
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "validate hangs on a FIFO"
    by_name = {Path(r.file).name: r for r in results}
    [finding] = by_name["pipe.json"].findings
    assert finding.severity is Severity.WARNING  # found in a folder: skipped
    assert finding.message == "a FIFO (named pipe), not a regular file: skipped"
    named = cli.invoke(app, ["validate", "-j", "1", str(fifo)])  # named: an error
    assert named.exit_code == 1, named.output
    assert "FIFO" in named.stdout


def test_symlink_to_dev_zero_is_not_read(tmp_path: Path) -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    result = cli.invoke(app, ["validate", "-j", "1", "--json", str(tmp_path)])
    assert result.exit_code == 0, result.output  # a warning: skipped
    [entry] = json.loads(result.stdout)["files"]
    assert entry["findings"][0]["message"] == "a character device, not a regular file: skipped"


def test_file_over_the_size_limit_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate_runner, "MAX_FILE_BYTES", 100)
    big = tmp_path / "big.json"
    big.write_bytes((CORPUS / "valid_r4.json").read_bytes())
    result = cli.invoke(app, ["validate", "-j", "1", "--json", str(tmp_path)])
    assert result.exit_code == 1, result.output
    [entry] = json.loads(result.stdout)["files"]
    message = entry["findings"][0]["message"]
    assert message.startswith("larger than the limit of 100 bytes"), message


def test_non_utf8_file_name_is_shown_escaped(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path)
    try:
        with open(os.path.join(folder, b"bad\xff.json"), "wb") as fh:
            fh.write((CORPUS / "imaging_uid_leading_zero.json").read_bytes())
    except OSError:
        pytest.skip("the file system refuses names that are not UTF-8")
    shown = str(tmp_path / "bad\\xff.json")
    result = cli.invoke(app, ["validate", "-j", "1", "--json", str(tmp_path)])
    assert result.exit_code == 1, result.output
    [entry] = json.loads(result.stdout)["files"]
    assert entry["file"] == shown
    assert {f["file"] for f in entry["findings"]} == {shown}
    table = cli.invoke(app, ["validate", "-j", "1", str(tmp_path)])
    assert table.exit_code == 1, table.output
    assert "bad\\xff.json" in table.stdout.replace("\n", "")


def test_display_name_escapes_control_codes_and_bytes() -> None:
    assert display_name(os.fsdecode(b"a\xffb\x1b.json")) == "a\\xffb\\x1b.json"
    assert display_name("plain/é.json") == "plain/é.json"


def test_walk_reports_symlinked_folders_and_survives_deep_trees(tmp_path: Path) -> None:
    # Deeper than os.walk (recursive in Python 3.11) could go; built and removed with loops,
    # as pathlib's mkdir(parents=True) and shutil.rmtree recurse too.
    levels = [str(tmp_path / "d")]
    for _ in range(1099):
        levels.append(os.path.join(levels[-1], "d"))
    for level in levels:
        os.mkdir(level)
    try:
        (Path(levels[-1]) / "x.json").write_bytes((CORPUS / "valid_r4.json").read_bytes())
        (tmp_path / "link").symlink_to(tmp_path / "d")
        results = list(iter_validate([tmp_path], layers={Layer.JSON}))
    finally:
        Path(levels[-1], "x.json").unlink(missing_ok=True)
        for level in reversed(levels):
            os.rmdir(level)
    by_name = {Path(r.file).name: r for r in results}
    assert by_name["x.json"].release == "r4"
    [note] = by_name["link"].findings
    assert note.severity is Severity.INFORMATION
    assert "not followed" in note.message


def test_a_folder_of_every_broken_case_in_parallel(tmp_path: Path) -> None:
    cases: dict[str, bytes] = {
        "ok.json": (CORPUS / "valid_r4.json").read_bytes(),
        "deep.json": _nested(990),
        "entry.json": b'{"resourceType": "Bundle", "type": "transaction", "entry": 5}',
        "type.json": b'{"resourceType": ["Bundle"]}',
        "b64.json": '{"resourceType": "Binary", "contentType": "a/b", "data": "é"}'.encode(),
        "truncated.json": (CORPUS / "valid_r4.json").read_bytes()[:100],
        "report.json": b'{"files": []}',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "pipe.json")
    result = cli.invoke(app, ["validate", "-j", "2", "--json", str(tmp_path)])
    assert result.exit_code == 1, result.output
    files = {Path(f["file"]).name for f in json.loads(result.stdout)["files"]}
    assert files == set(cases) | {"pipe.json"}
