"""Server edges against the real servers (issue 11 items 14, 15, 16).

- 14: a bundle's FHIR release must match the server's before the first request: R5 bundles land
  on the FHIR test server in R5 mode (and a re-push creates nothing new), R5 bundles to the R4
  server and R4 bundles to the R5 one exit 3 with nothing sent; ``convert --push`` and
  ``watch --once --push`` check the same before converting anything.
- 15: a wrong base path (404, an HTML page, JSON that is no CapabilityStatement, one without
  ``fhirVersion``) is fatal before sending, naming the URL, unless ``--no-capability-check``.
- 16: ``verify`` with a PACS or FHIR server it cannot reach exits 3 naming it, not "differs".

The servers are real (tools/fhir-test-server, Orthanc); the fault proxy only rewrites answers.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.convert import ConvertOptions, convert
from fhirimg.dicomweb.store import store_instances
from fhirimg.dicomweb.store_results import StoreOptions
from fhirimg.http import RetryPolicy
from fhirimg.mapping import MapOptions
from tests.conftest import _start, count, search
from tests.helpers import SAMPLE, orthanc_or_skip
from tests.servers.faultproxy import Fault, FaultProxy
from tests.servers.fhir_server import FhirTestServer
from tests.servers.orthanc_server import OrthancServer

pytestmark = pytest.mark.server

FAST = ["--backoff", "0.01", "--retries", "0", "--quiet"]
STUDIES = ["study_a_ct", "study_b_mr"]  # two clean studies of the sample data


def _cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _json(result: Any) -> dict[str, Any]:
    data: dict[str, Any] = jsonio.loads(result.stdout)["summary"]
    return data


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def fhir_r5() -> Iterator[FhirTestServer]:
    """The FHIR test server in R5 mode (``--fhir-version 5.0.0``)."""
    yield from _start(fhir_version="5.0.0")


@pytest.fixture
def clean_r5(fhir_r5: FhirTestServer) -> FhirTestServer:
    fhir_r5.reset()
    return fhir_r5


def _converted(tmp_path: Path, release: str, dicomweb_url: str | None = None) -> Path:
    out = tmp_path / f"out-{release}"
    options = ConvertOptions(
        out_dir=out, jobs=1, fhir_version=release, mapping=MapOptions(dicomweb_url=dicomweb_url)
    )
    report = convert([SAMPLE / name for name in STUDIES], options)
    assert report.exit_code == 0, report.summary()
    return out


@pytest.fixture(scope="module")
def r5_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tmp_path_factory.mktemp("r5"), "r5")


@pytest.fixture(scope="module")
def r4_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _converted(tmp_path_factory.mktemp("r4"), "r4")


# --------------------------------------------------------------------------- item 14: releases
def test_the_r5_mode_server_announces_r5(fhir_r5: FhirTestServer) -> None:
    import httpx

    statement = httpx.get(f"{fhir_r5.base_url}/metadata").json()
    assert statement["fhirVersion"] == "5.0.0"
    assert fhir_r5.base_url.endswith("/fhir/R5")


def test_r5_bundles_land_on_an_r5_server_and_a_repush_adds_nothing(
    clean_r5: FhirTestServer, r5_out: Path, tmp_path: Path
) -> None:
    base = clean_r5.base_url
    first = _cli("push", r5_out, "--server", base, *FAST, "--json", "--journal", tmp_path / "j")
    assert first.exit_code == 0, first.output
    assert _json(first)["pushed"] == len(STUDIES)
    studies = search(base, "ImagingStudy?_count=100")
    assert len(studies) == len(STUDIES)
    # R5 shapes as sent: ImagingStudy.modality is a list of CodeableConcepts (R4: Codings).
    assert all("coding" in m for s in studies for m in s["modality"])
    before = {s["id"]: s["meta"]["versionId"] for s in studies}
    # Again, journal ignored: every conditional create finds its resource; the merge changes
    # nothing, so no new version and no duplicate.
    again = _cli("push", r5_out, "--server", base, *FAST, "--json", "--force")
    assert again.exit_code == 0, again.output
    after = search(base, "ImagingStudy?_count=100")
    assert {s["id"]: s["meta"]["versionId"] for s in after} == before
    assert count(base, "Patient") == len(STUDIES)
    assert count(base, "Endpoint") == 0  # converted without --dicomweb-url


def test_r5_bundles_to_the_r4_server_exit_3_with_nothing_sent(
    clean_fhir: FhirTestServer, r5_out: Path
) -> None:
    with FaultProxy(clean_fhir.base_url) as proxy:
        result = _cli("push", r5_out, "--server", proxy.base_url, *FAST, "--no-auto-split")
        assert result.exit_code == 3, result.output
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in proxy.log] == [("GET", "metadata")]
    message = " ".join(result.output.split())
    assert proxy.base_url in message
    assert "FHIR 4.0.1" in message
    assert "FHIR R5 (5.0.0)" in message
    assert "nothing was sent" in message
    assert count(clean_fhir.base_url, "ImagingStudy") == 0


def test_a_folder_mixing_releases_pushes_the_servers_and_refuses_the_others(
    clean_fhir: FhirTestServer, r4_out: Path, r5_out: Path, tmp_path: Path
) -> None:
    """One R5 bundle among R4 ones, to an R4 server: the R4 bundles land, the R5 one is refused
    by name with the reason (exit 1), and nothing of it reaches the server."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    r4_names = sorted(p.name for p in r4_out.glob("study-*.json"))
    for name in r4_names[1:]:
        shutil.copy(r4_out / name, mixed / name)
    odd = sorted(r5_out.glob("study-*.json"))[0]
    shutil.copy(odd, mixed / "zz-r5.json")
    result = _cli("push", mixed, "--server", clean_fhir.base_url, *FAST, "--json")
    assert result.exit_code == 1, result.output
    doc = _json(result)
    by_file = {r["file"]: r for r in doc["bundles"]}
    assert by_file["zz-r5.json"]["status"] == "failed"
    assert "FHIR R5 (5.0.0) bundle" in by_file["zz-r5.json"]["error"]
    assert "FHIR 4.0.1" in by_file["zz-r5.json"]["error"]
    assert all(by_file[n]["status"] == "pushed" for n in r4_names[1:])
    assert count(clean_fhir.base_url, "ImagingStudy") == len(r4_names) - 1


def test_r4_bundles_to_the_r5_server_exit_3(clean_r5: FhirTestServer, r4_out: Path) -> None:
    result = _cli("push", r4_out, "--server", clean_r5.base_url, *FAST)
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert clean_r5.base_url in message
    assert "FHIR 5.0.0" in message
    assert "FHIR R4 (4.0.1)" in message
    assert count(clean_r5.base_url, "ImagingStudy") == 0


def test_convert_push_checks_the_release_before_converting(
    clean_fhir: FhirTestServer, clean_r5: FhirTestServer, tmp_path: Path
) -> None:
    inputs = [SAMPLE / name for name in STUDIES]
    wrong = _cli(
        "convert", *inputs, "--out", tmp_path / "a", "--fhir-version", "r5",
        "--push", clean_fhir.base_url, *FAST, "-j1",
    )  # fmt: skip
    assert wrong.exit_code == 3, wrong.output
    assert clean_fhir.base_url in " ".join(wrong.output.split())
    assert not (tmp_path / "a" / "report.json").exists()  # nothing was converted
    assert count(clean_fhir.base_url, "ImagingStudy") == 0
    right = _cli(
        "convert", *inputs, "--out", tmp_path / "b", "--fhir-version", "r5",
        "--push", clean_r5.base_url, *FAST, "-j1", "--json",
    )  # fmt: skip
    assert right.exit_code == 0, right.output
    assert _json(right)["pushed"]["pushed"] == len(STUDIES)
    assert count(clean_r5.base_url, "ImagingStudy") == len(STUDIES)


def test_watch_once_push_checks_the_release(clean_r5: FhirTestServer, tmp_path: Path) -> None:
    result = _cli(
        "watch", *[SAMPLE / name for name in STUDIES], "--out", tmp_path / "w", "--once",
        "--push", clean_r5.base_url, *FAST, "-j1",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "FHIR 5.0.0" in " ".join(result.output.split())
    assert count(clean_r5.base_url, "ImagingStudy") == 0


# --------------------------------------------------------------------------- item 15: base path
def test_a_wrong_base_path_is_fatal_before_sending(
    clean_fhir: FhirTestServer, r4_out: Path, tmp_path: Path
) -> None:
    wrong = clean_fhir.base_url + "/nope"
    result = _cli("push", r4_out, "--server", wrong, *FAST)
    assert result.exit_code == 3, result.output
    message = " ".join(result.output.split())
    assert f"is {wrong} the FHIR base URL?" in message
    assert "HTTP 404" in message
    assert "--no-capability-check" in message

    # With the option, push goes on and reports each bundle's refusal, as before.
    going_on = _cli(
        "push", r4_out, "--server", wrong, *FAST, "--json", "--no-capability-check",
        "--journal", tmp_path / "j",
    )  # fmt: skip
    assert going_on.exit_code == 1, going_on.output
    bundles = _json(going_on)["bundles"]
    assert len(bundles) == len(STUDIES)
    assert all(b["status"] == "failed" and b["httpStatus"] == 404 for b in bundles), bundles
    assert count(clean_fhir.base_url, "ImagingStudy") == 0


CAPABILITY_FAULTS = {
    "html": (b"<html><body>Sign in</body></html>", {"Content-Type": "text/html"}, "not JSON"),
    "other-json": (b'{"status": "up"}', {}, "JSON without a resourceType"),
    "no-fhir-version": (
        b'{"resourceType": "CapabilityStatement", "status": "active"}',
        {},
        "without fhirVersion",
    ),
    "patient": (b'{"resourceType": "Patient"}', {}, "'Patient', not a CapabilityStatement"),
}


@pytest.mark.parametrize("fault", sorted(CAPABILITY_FAULTS))
def test_no_capability_statement_is_fatal_unless_skipped(
    clean_fhir: FhirTestServer, r4_out: Path, tmp_path: Path, fault: str
) -> None:
    body, headers, why = CAPABILITY_FAULTS[fault]

    def metadata(method: str, path: str) -> bool:
        return path.endswith("/metadata")

    with FaultProxy(clean_fhir.base_url) as proxy:
        proxy.script(
            Fault("status", status=200, body=body, headers=headers, times=5, match=metadata)
        )
        result = _cli("push", r4_out, "--server", proxy.base_url, *FAST)
        assert result.exit_code == 3, result.output
        assert why in " ".join(result.output.split())
        assert proxy.base_url in " ".join(result.output.split())
        assert [r.path.rsplit("/", 1)[-1] for r in proxy.log] == ["metadata"]

        # --no-capability-check: /metadata is not asked for, the bundles go up.
        proxy.log.clear()
        skipped = _cli(
            "push", r4_out, "--server", proxy.base_url, *FAST, "--no-capability-check",
            "--journal", tmp_path / "j",
        )  # fmt: skip
        assert skipped.exit_code == 0, skipped.output
        assert not any(r.path.endswith("/metadata") for r in proxy.log)
    assert count(clean_fhir.base_url, "ImagingStudy") == len(STUDIES)


def test_convert_push_with_a_wrong_base_path(clean_fhir: FhirTestServer, tmp_path: Path) -> None:
    wrong = clean_fhir.base_url + "/nope"
    inputs = [SAMPLE / name for name in STUDIES]
    result = _cli("convert", *inputs, "--out", tmp_path / "o", "--push", wrong, *FAST, "-j1")
    assert result.exit_code == 3, result.output
    assert wrong in " ".join(result.output.split())
    assert not (tmp_path / "o" / "report.json").exists()


# --------------------------------------------------------------------------- item 16: verify
def test_verify_exits_3_when_the_pacs_port_is_closed(tmp_path: Path) -> None:
    pacs = f"http://127.0.0.1:{_closed_port()}/dicom-web"
    out = _converted(tmp_path, "r4", dicomweb_url=pacs)
    result = _cli("verify", out, *FAST, "--json")
    assert result.exit_code == 3, result.output
    summary = _json(result)
    assert summary["exitCode"] == 3
    assert summary["unreachable"] == [pacs]
    assert all(s["unreachable"] and not s["contacted"] for s in summary["studies"])
    assert len(summary["studies"]) == len(STUDIES)
    assert f"cannot reach the PACS {pacs}" in " ".join(result.stderr.split())
    assert "differs" not in result.stderr


def test_verify_exits_3_when_the_fhir_server_port_is_closed() -> None:
    fhir = f"http://127.0.0.1:{_closed_port()}/fhir/R4"
    result = _cli("verify", "--server", fhir, *FAST)
    assert result.exit_code == 3, result.output
    assert fhir in " ".join(result.output.split())


@pytest.mark.dicomweb
def test_verify_against_orthanc_then_orthanc_stopped(tmp_path: Path) -> None:
    orthanc: OrthancServer = orthanc_or_skip(tmp_path / "orthanc")
    with orthanc:
        out = _converted(tmp_path, "r4", dicomweb_url=orthanc.dicomweb_url)
        fast = RetryPolicy(max_attempts=2, backoff_base=0.05, jitter=False)
        stored = store_instances([out], StoreOptions(orthanc.dicomweb_url, retry=fast))
        assert stored.ok, stored.to_json()
        agree = _cli("verify", out, *FAST, "--json")
        assert agree.exit_code == 0, agree.output
        assert _json(agree)["checked"] == len(STUDIES)
        # The same PACS, asked at a port it does not listen on.
        port = orthanc.dicomweb_url.split(":")[2].split("/")[0]
        wrong = orthanc.dicomweb_url.replace(f":{port}/", f":{_closed_port()}/")
        other = _converted(tmp_path / "wrong-port", "r4", dicomweb_url=wrong)
        result = _cli("verify", other, *FAST)
        assert result.exit_code == 3, result.output
        assert wrong in " ".join(result.stderr.split())
    # Orthanc stopped: the PACS the bundles name no longer answers.
    gone = _cli("verify", out, *FAST, "--json")
    assert gone.exit_code == 3, gone.output
    assert _json(gone)["unreachable"] == [orthanc.dicomweb_url]
