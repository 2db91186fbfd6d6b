"""Runs that found nothing to do exit 4 (issue 11 item 17), so that cron notices a mount that went
missing: ``convert`` of input holding no file, ``convert --from-dicomweb`` whose query matched no
study, ``push`` (and ``push --dicomweb``) of a folder holding no bundle, a ``verify`` that checked
nothing. The ``--json`` summaries say the same ``exitCode``. Not 4: an incremental re-run over
unchanged files (it checked them: 0), and ``watch --once`` over an empty folder (an idle watch
folder is normal: 0)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.convert import ConvertOptions, convert
from fhirimg.exitcodes import ExitCode
from tests.conftest import study_bundle, write_bundle
from tests.helpers import SAMPLE, orthanc_or_skip
from tests.servers.faultproxy import FaultProxy
from tests.servers.fhir_server import FhirTestServer

FAST = ["--backoff", "0.01", "--retries", "0", "--quiet"]
NOTHING = int(ExitCode.NOTHING_DONE)


def _cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _json(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = jsonio.loads(result.stdout)["summary"]
    return data


# --------------------------------------------------------------------------- convert
def test_convert_of_an_empty_folder_exits_4(tmp_path: Path) -> None:
    empty = tmp_path / "in"
    empty.mkdir()
    result = _cli("convert", empty, "--out", tmp_path / "out", "--json", "-j1")
    assert result.exit_code == NOTHING, result.output
    assert _json(result)["exitCode"] == NOTHING
    # The report is still written, and says the same.
    report = jsonio.loads((tmp_path / "out" / "report.json").read_bytes())
    assert report["summary"]["files"]["total"] == 0
    assert report["summary"]["exitCode"] == NOTHING


def test_an_unchanged_rerun_is_0_and_a_vanished_input_is_4(tmp_path: Path) -> None:
    src = tmp_path / "in"
    shutil.copytree(SAMPLE / "study_a_ct", src)
    out = tmp_path / "out"
    first = _cli("convert", src, "--out", out, "--json", "-j1", "--quiet")
    assert first.exit_code == 0, first.output
    again = _cli("convert", src, "--out", out, "--json", "-j1", "--quiet")
    assert again.exit_code == 0, again.output  # every file checked, all unchanged: work done
    assert _json(again)["run"]["files"]["unchanged"] > 0
    # The mount went missing: the folder is there, empty. The catalog still lists the files
    # (reported missing), but this run found nothing: 4, not 0 and not a quiet success.
    for child in src.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    gone = _cli("convert", src, "--out", out, "--json", "-j1", "--quiet")
    assert gone.exit_code == NOTHING, gone.output
    assert _json(gone)["exitCode"] == NOTHING
    assert _json(gone)["run"]["files"]["missing"] > 0


def test_an_input_that_cannot_be_read_is_a_failure_not_nothing(tmp_path: Path) -> None:
    """A path that is gone (the library is given it; the CLI refuses it as a usage error) or a
    dangling link is a failed file, with its reason: 1, not 4."""
    gone = convert([tmp_path / "gone"], ConvertOptions(out_dir=tmp_path / "a", jobs=1))
    assert gone.exit_code == ExitCode.PARTIAL
    assert gone.files["failed"] == 1
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.dcm").symlink_to(tmp_path / "nowhere.dcm")
    result = _cli("convert", folder, "--out", tmp_path / "b", "--json", "-j1", "--quiet")
    assert result.exit_code == 1, result.output
    assert _json(result)["files"]["failed"] == 1


def test_watch_once_over_an_empty_folder_is_0(tmp_path: Path) -> None:
    empty = tmp_path / "in"
    empty.mkdir()
    result = _cli("watch", empty, "--out", tmp_path / "out", "--once", "--json", "-j1")
    assert result.exit_code == 0, result.output


@pytest.mark.dicomweb
def test_convert_from_dicomweb_matching_nothing_exits_4(tmp_path: Path) -> None:
    with orthanc_or_skip(tmp_path / "orthanc") as orthanc:  # a real, empty PACS
        result = _cli(
            "convert", "--from-dicomweb", orthanc.dicomweb_url, "--study", "2.25.404",
            "--out", tmp_path / "out", "--json", *FAST,
        )  # fmt: skip
    assert result.exit_code == NOTHING, result.output
    assert _json(result)["exitCode"] == NOTHING
    assert _json(result)["files"]["total"] == 0


# --------------------------------------------------------------------------- push
@pytest.mark.server
def test_push_of_a_folder_without_bundles_exits_4_and_sends_nothing(
    clean_fhir: FhirTestServer, tmp_path: Path
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.json").write_bytes(jsonio.dumps({"files": []}))  # passed over
    with FaultProxy(clean_fhir.base_url) as proxy:
        for extra in ([], ["--dry-run"]):
            result = _cli("push", folder, "--server", proxy.base_url, *FAST, "--json", *extra)
            assert result.exit_code == NOTHING, result.output
            summary = _json(result)
            assert summary["exitCode"] == NOTHING
            assert summary["bundles"] == []
            assert [i["file"] for i in summary["ignored"]] == [str(folder / "report.json")]
            assert "nothing to push" in result.stderr
        assert proxy.log == []  # not even GET metadata


def test_a_folder_of_bad_files_is_not_nothing(tmp_path: Path) -> None:
    """A folder whose files are all refused did hold something: 1, not 4."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "broken.json").write_bytes(b"{")
    result = _cli("push", folder, "--dry-run", "--json")
    assert result.exit_code == 1, result.output
    assert _json(result)["exitCode"] == 1


def test_push_dicomweb_with_nothing_to_store_exits_4(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    result = _cli(
        "push", folder, "--dicomweb", "http://127.0.0.1:9/dicom-web", *FAST, "--json"
    )  # port 9 (discard): nothing is ever sent there
    assert result.exit_code == NOTHING, result.output
    assert _json(result)["exitCode"] == NOTHING
    assert "nothing to store" in result.stderr


# --------------------------------------------------------------------------- verify
def test_verify_that_checked_nothing_exits_4(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _cli("verify", empty, "--json")
    assert result.exit_code == NOTHING, result.output
    assert _json(result)["exitCode"] == NOTHING
    # Bundles whose ImagingStudy names no DICOMweb Endpoint: every study skipped, none checked.
    bundle, _ = study_bundle("2.25.4040", "MRN-4040")
    for entry in bundle["entry"]:
        entry["resource"].pop("endpoint", None)
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Endpoint"]
    folder = tmp_path / "no-endpoint"
    folder.mkdir()
    write_bundle(folder, "study", bundle, {})
    skipped = _cli("verify", folder, "--json")
    assert skipped.exit_code == NOTHING, skipped.output
    assert len(_json(skipped)["skipped"]) == 1


@pytest.mark.server
def test_verify_server_without_imaging_studies_exits_4(clean_fhir: FhirTestServer) -> None:
    result = _cli("verify", "--server", clean_fhir.base_url, *FAST, "--json")
    assert result.exit_code == NOTHING, result.output
    assert _json(result)["checked"] == 0
