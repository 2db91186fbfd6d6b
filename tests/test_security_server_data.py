"""Flows driven by server data cannot be turned against the user (issue 18 items 1, 2, 6, 9, 14, 15,
16): every scenario runs fhirimg's CLI against :class:`~tests.servers.hostile.HostileServer` and
asserts, from the shared :class:`~tests.servers.hostile.RequestLog`, which requests reached which
origin with which credentials.

- ``verify --server`` follows a search page's ``next`` link only under the FHIR base URL, never to a
  page already read and for at most ``--max-pages`` pages; an absolute ``ImagingStudy.endpoint``
  reference elsewhere is reported, not fetched.
- The PACS credentials go only to the origins named by ``--dicomweb-url``; an Endpoint elsewhere is
  reported naming both origins and not contacted.
- ``convert --from-dicomweb`` pages QIDO-RS within bounds (a repeated page, too many results), and
  a QIDO answer that is not JSON, or nested too deep, or of the wrong shape is exit 3 naming the
  server; ``-v`` logs hold no PatientID or AccessionNumber.
- ``validate --server`` on a non-JSON or deeply nested ``$validate`` answer: exit 3 naming it.
- Escape sequences in server text never reach the terminal, nor ``--json``.
"""

from __future__ import annotations

import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner, Result

from fhirimg.cli import app
from fhirimg.dicomweb import StudyQuery, find_studies
from fhirimg.dicomweb.client import QIDO_MAX_RESULTS, QIDO_PAGE, DicomwebClient
from fhirimg.errors import DicomwebError
from fhirimg.http import RetryPolicy
from tests.helpers import GOLDEN
from tests.servers import hostile
from tests.servers.hostile import (
    DICOM_JSON,
    STUDY_UID,
    HostileServer,
    RequestLog,
    control_characters,
)

runner = CliRunner()

TOKEN = "fhir-TOKEN-s3cret-18"
PACS_TOKEN = "pacs-TOKEN-s3cret-18"
PACS_PASSWORD = "pacs-PW-s3cret-18"
SECRETS = [TOKEN, PACS_TOKEN, PACS_PASSWORD]
PATIENT_ID = "PID-4711-secret"
ACCESSION = "ACC-0815-secret"
_CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def log() -> RequestLog:
    return RequestLog()


@pytest.fixture
def fhir(log: RequestLog) -> Iterator[HostileServer]:
    with HostileServer(log=log) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def pacs(log: RequestLog) -> Iterator[HostileServer]:
    """The PACS the user names (``--dicomweb-url``)."""
    with HostileServer(log=log) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def elsewhere(log: RequestLog) -> Iterator[HostileServer]:
    """A host that server data names and the user did not."""
    with HostileServer(log=log) as server:
        yield server
    assert server.errors == []


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, args, env=env)


def verify_args(fhir: HostileServer, *more: str) -> list[str]:
    return ["verify", "--server", fhir.base_url, "--retries", "0", "--timeout", "5", *more]


def qido_instances(study_uid: str = STUDY_UID) -> list[dict[str, Any]]:
    """The QIDO-RS answer that agrees with :func:`hostile.imaging_study_resource`."""
    return [
        {
            "0020000D": {"vr": "UI", "Value": [study_uid]},
            "0020000E": {"vr": "UI", "Value": [f"{study_uid}.1"]},
            "00080018": {"vr": "UI", "Value": [f"{study_uid}.1.1"]},
            "00080016": {"vr": "UI", "Value": [_CT]},
        }
    ]


def serve_pacs(server: HostileServer) -> None:
    server.route(
        "GET", "/dicom-web/studies/*", hostile.json(qido_instances(), content_type=DICOM_JSON)
    )


def no_credentials_elsewhere(log: RequestLog, *allowed: HostileServer) -> None:
    leaked = log.with_credentials(origin_not=list(allowed), secrets=SECRETS)
    assert leaked == [], log.describe()


def assert_clean(result: Result) -> None:
    """No terminal control code in anything fhirimg printed, stdout or stderr."""
    assert control_characters(result.stdout) == [], result.stdout
    assert control_characters(result.stderr) == [], result.stderr


# --------------------------------------------------------------------------- verify: paging
def test_next_link_to_another_origin_is_not_followed(
    log: RequestLog, fhir: HostileServer, elsewhere: HostileServer
) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.search_page(next_url=elsewhere.url("/steal?p=2")))
    result = invoke(verify_args(fhir, "--token", TOKEN))
    assert result.exit_code == 3, result.output
    assert "next link" in result.stderr
    assert fhir.origin in result.stderr
    assert elsewhere.origin in result.stderr
    assert TOKEN not in result.output
    assert log.requests(origin=elsewhere) == [], log.describe()
    no_credentials_elsewhere(log, fhir)


def test_next_link_downgraded_to_http_is_not_followed(log: RequestLog) -> None:
    """A proxy writing ``http://`` into the next links of an https server: another origin."""
    with HostileServer(log=log, tls=True) as fhir:
        fhir.route(
            "GET", "/fhir/ImagingStudy", hostile.search_page(next_url=fhir.http_url + "/fhir/p2")
        )
        args = ["verify", "--server", fhir.url("/fhir"), "--retries", "0", "--token", TOKEN]
        result = invoke([*args, "--ca-bundle", str(fhir.ca_pem)])
    assert result.exit_code == 3, result.output
    assert "next link" in result.stderr
    assert fhir.http_url in result.stderr
    assert [r.origin for r in log] == [fhir.origin], log.describe()
    no_credentials_elsewhere(log, fhir)


def test_next_link_outside_the_base_path_is_not_followed(log: RequestLog) -> None:
    with HostileServer(log=log) as fhir:
        fhir.route("GET", "/fhir/ImagingStudy", hostile.search_page(next_url=fhir.url("/admin/x")))
        result = invoke(verify_args(fhir, "--token", TOKEN)[:2] + [fhir.url("/fhir")])
    assert result.exit_code == 3, result.output
    assert "leaves it" in result.stderr
    assert [r.path for r in log] == ["/fhir/ImagingStudy"], log.describe()


def test_next_link_to_the_same_page_stops(log: RequestLog, fhir: HostileServer) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.search_page(next_url=hostile.same_page))
    result = invoke(verify_args(fhir, "--token", TOKEN))
    assert result.exit_code == 3, result.output
    assert "repeats a page already read" in result.stderr
    assert fhir.origin in result.stderr
    assert len(log.requests(path="/ImagingStudy")) == 1, log.describe()


def test_endless_next_links_stop_at_max_pages(log: RequestLog, fhir: HostileServer) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.search_page(next_url=hostile.following_page))
    result = invoke(verify_args(fhir, "--max-pages", "7"))
    assert result.exit_code == 3, result.output
    assert "more than 7 search pages" in result.stderr
    assert len(log.requests(path="/ImagingStudy")) == 7, log.describe()


# --------------------------------------------------------------------------- verify: Endpoints
def test_absolute_endpoint_reference_elsewhere_is_not_fetched(
    log: RequestLog, fhir: HostileServer, elsewhere: HostileServer
) -> None:
    elsewhere.route("GET", "/Endpoint/x", hostile.endpoint(elsewhere.url("/dicom-web")))
    fhir.route("GET", "/ImagingStudy", hostile.imaging_study_bundle(elsewhere.url("/Endpoint/x")))
    result = invoke(verify_args(fhir, "--token", TOKEN, "--json"))
    assert result.exit_code == 1, result.output
    assert "not fetched" in result.stderr
    assert elsewhere.origin in result.stderr
    assert fhir.origin in result.stderr
    (study,) = orjson.loads(result.stdout)["summary"]["studies"]
    assert study["contacted"] is False
    assert not study["ok"]
    assert log.requests(origin=elsewhere) == [], log.describe()
    no_credentials_elsewhere(log, fhir)


def test_absolute_endpoint_reference_under_the_base_is_read(
    log: RequestLog, fhir: HostileServer, pacs: HostileServer
) -> None:
    serve_pacs(pacs)
    fhir.route("GET", "/Endpoint/hostile-pacs", hostile.endpoint(pacs.url("/dicom-web")))
    fhir.route(
        "GET", "/ImagingStudy", hostile.imaging_study_bundle(fhir.url("/Endpoint/hostile-pacs"))
    )
    result = invoke(verify_args(fhir, "--token", TOKEN))
    assert result.exit_code == 0, result.output
    assert len(log.requests(origin=pacs)) == 1
    no_credentials_elsewhere(log, fhir)


@pytest.mark.parametrize(
    "reference", ["Endpoint/../../admin", "urn:uuid:0a1b", "Endpoint/x?_format=xml"]
)
def test_odd_endpoint_references_are_not_requested(
    log: RequestLog, fhir: HostileServer, reference: str
) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.imaging_study_bundle(reference))
    result = invoke(verify_args(fhir, "--token", TOKEN))
    assert result.exit_code == 1, result.output
    assert "not fetched" in result.stderr
    assert [r.path for r in log] == ["/ImagingStudy"], log.describe()


def _fhir_with_endpoint(fhir: HostileServer, address: str) -> None:
    fhir.route("GET", "/Endpoint/hostile-pacs", hostile.endpoint(address))
    fhir.route("GET", "/ImagingStudy", hostile.imaging_study_bundle("Endpoint/hostile-pacs"))


@pytest.mark.parametrize("pacs_auth", ["token", "basic"])
def test_endpoint_elsewhere_is_reported_not_contacted(
    log: RequestLog,
    fhir: HostileServer,
    pacs: HostileServer,
    elsewhere: HostileServer,
    pacs_auth: str,
) -> None:
    serve_pacs(elsewhere)
    _fhir_with_endpoint(fhir, elsewhere.url("/dicom-web"))
    credentials = (
        ["--dicomweb-token", PACS_TOKEN] if pacs_auth == "token" else ["--dicomweb-user", "bob"]
    )
    result = invoke(
        verify_args(
            fhir, "--token", TOKEN, "--dicomweb-url", pacs.url("/dicom-web"), *credentials, "--json"
        ),
        env={"FHIRIMG_DICOMWEB_PASSWORD": PACS_PASSWORD},
    )
    assert result.exit_code == 1, result.output
    assert "not contacted" in result.stderr
    assert elsewhere.origin in result.stderr
    assert pacs.origin in result.stderr
    report = orjson.loads(result.stdout)["summary"]
    assert report["notContacted"] == 1
    assert report["studies"][0]["contacted"] is False
    assert elsewhere.origin in report["studies"][0]["error"]
    assert log.requests(origin=elsewhere) == [], log.describe()
    assert log.requests(origin=pacs) == []
    no_credentials_elsewhere(log, fhir, pacs)
    assert not any(secret in result.output for secret in SECRETS)


def test_endpoint_at_a_named_pacs_gets_the_credentials(
    log: RequestLog, fhir: HostileServer, pacs: HostileServer, elsewhere: HostileServer
) -> None:
    """Naming a second origin (comma list or repeated) allows it; nothing else is contacted."""
    serve_pacs(elsewhere)
    _fhir_with_endpoint(fhir, elsewhere.url("/dicom-web"))
    named = f"{pacs.url('/dicom-web')},{elsewhere.url('/dicom-web')}"
    result = invoke(
        verify_args(fhir, "--token", TOKEN, "--dicomweb-url", named, "--dicomweb-token", PACS_TOKEN)
    )
    assert result.exit_code == 0, result.output
    (qido,) = log.requests(origin=elsewhere)
    assert qido.headers.get("authorization") == f"Bearer {PACS_TOKEN}"
    assert TOKEN not in str(qido.headers)  # the FHIR token never goes to a PACS
    no_credentials_elsewhere(log, fhir, pacs, elsewhere)


def test_without_dicomweb_url_endpoints_get_no_credentials(
    log: RequestLog, fhir: HostileServer, elsewhere: HostileServer
) -> None:
    serve_pacs(elsewhere)
    _fhir_with_endpoint(fhir, elsewhere.url("/dicom-web"))
    result = invoke(verify_args(fhir, "--token", TOKEN))
    assert result.exit_code == 0, result.output
    assert len(log.requests(origin=elsewhere)) == 1
    no_credentials_elsewhere(log, fhir)


def test_pacs_credentials_need_dicomweb_url(log: RequestLog, fhir: HostileServer) -> None:
    result = invoke(verify_args(fhir, "--dicomweb-token", PACS_TOKEN))
    assert result.exit_code == 2, result.output
    assert "--dicomweb-url" in result.stderr
    assert len(log) == 0


def test_dicomweb_url_with_a_password_is_refused(log: RequestLog, fhir: HostileServer) -> None:
    result = invoke(verify_args(fhir, "--dicomweb-url", f"http://bob:{PACS_PASSWORD}@pacs/dw"))
    assert result.exit_code == 2, result.output
    assert PACS_PASSWORD not in result.output
    assert len(log) == 0


def test_bundle_endpoint_elsewhere_is_not_contacted(
    tmp_path: Path, log: RequestLog, pacs: HostileServer, elsewhere: HostileServer
) -> None:
    """``verify BUNDLES``: the bundle is input, not trusted either."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:ep", "resource": hostile.endpoint_resource(elsewhere.url("/dw"))},
            {"fullUrl": "urn:uuid:st", "resource": hostile.imaging_study_resource("urn:uuid:ep")},
        ],
    }
    (tmp_path / "study-x.json").write_bytes(orjson.dumps(bundle))
    args = ["verify", str(tmp_path), "--dicomweb-url", pacs.url("/dw")]
    result = invoke([*args, "--dicomweb-token", PACS_TOKEN, "--retries", "0"])
    assert result.exit_code == 1, result.output
    assert "not contacted" in result.stderr
    assert elsewhere.origin in result.stderr
    assert len(log) == 0, log.describe()


# --------------------------------------------------------------------------- escape sequences
def test_verify_escape_sequences_do_not_reach_the_terminal(
    log: RequestLog, fhir: HostileServer
) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.escape_outcome(422))
    result = invoke(verify_args(fhir, "--json"))
    assert result.exit_code == 3, result.output
    assert "invalid resource" in result.stderr
    assert "rich markup" in result.stderr
    assert "[bold red]rich markup" in result.stderr  # shown, not interpreted
    assert_clean(result)


def test_verify_findings_and_json_are_cleaned(
    log: RequestLog, fhir: HostileServer, elsewhere: HostileServer
) -> None:
    study = hostile.imaging_study_resource("Endpoint/hostile-pacs", id="evil\x1b]0;t\x07id")
    fhir.route("GET", "/ImagingStudy", hostile.search_page(resources=[study]))
    fhir.route("GET", "/Endpoint/hostile-pacs", hostile.endpoint(elsewhere.url("/dw")))
    elsewhere.route("GET", "/dw/studies/*", hostile.escape_outcome(400))
    result = invoke(verify_args(fhir, "--json"))
    assert result.exit_code == 1, result.output
    assert "evilid" in result.stderr
    assert_clean(result)
    assert control_characters(str(orjson.loads(result.stdout)["summary"])) == []


def test_validate_server_escape_sequences_do_not_reach_the_terminal(
    log: RequestLog, fhir: HostileServer
) -> None:
    fhir.route("POST", "/Bundle/$validate", hostile.escape_outcome(200))
    for extra in ([], ["--json"]):
        result = invoke(["validate", _golden_bundle(), "--server", fhir.base_url, *extra])
        assert result.exit_code == 1, result.output
        assert "invalid resource" in result.output
        assert_clean(result)


# --------------------------------------------------------------------------- malformed JSON
def _golden_bundle() -> str:
    return str(next((GOLDEN / "sample").glob("study-*.json")))


@pytest.mark.parametrize(
    "answer",
    [hostile.not_json(), hostile.nested_json(100_000), hostile.nested_json(2000)],
    ids=["not-json", "nested-100000", "nested-2000"],
)
def test_validate_server_malformed_answer_is_exit_3(
    fhir: HostileServer, answer: hostile.Responder
) -> None:
    fhir.route("POST", "/Bundle/$validate", answer)
    result = invoke(["validate", _golden_bundle(), "--server", fhir.base_url, "-j", "1"])
    assert result.exit_code == 3, result.output
    assert fhir.origin.removeprefix("http://") in result.stderr
    assert "internal error" not in result.output


@pytest.mark.parametrize(
    "answer",
    [
        hostile.not_json(content_type=DICOM_JSON),
        hostile.nested_json(100_000, DICOM_JSON),
        hostile.json({"not": "an array"}, content_type=DICOM_JSON),
        hostile.raw(b'[{"0020000D": ', content_type=DICOM_JSON),
    ],
    ids=["not-json", "nested", "object", "cut"],
)
def test_qido_malformed_answer_is_exit_3(
    tmp_path: Path, pacs: HostileServer, answer: hostile.Responder
) -> None:
    pacs.route("GET", "/dicom-web/studies", answer)
    result = invoke(_from_dicomweb(pacs, tmp_path))
    assert result.exit_code == 3, result.output
    assert pacs.origin.removeprefix("http://") in result.stderr
    assert "internal error" not in result.output


def test_verify_malformed_search_page_is_exit_3(fhir: HostileServer) -> None:
    fhir.route("GET", "/ImagingStudy", hostile.nested_json(100_000))
    result = invoke(verify_args(fhir))
    assert result.exit_code == 3, result.output
    assert fhir.origin.removeprefix("http://") in result.stderr


# --------------------------------------------------------------------------- QIDO-RS paging
def _from_dicomweb(pacs: HostileServer, out: Path, *more: str) -> list[str]:
    url = pacs.url("/dicom-web")
    return ["convert", "--from-dicomweb", url, "-o", str(out), "-q", "--retries", "0", *more]


def test_qido_repeating_page_stops(tmp_path: Path, log: RequestLog, pacs: HostileServer) -> None:
    pacs.route("GET", "/dicom-web/studies", hostile.qido_endless())
    result = invoke(_from_dicomweb(pacs, tmp_path, "--dicomweb-token", PACS_TOKEN))
    assert result.exit_code == 3, result.output
    assert "same results as an earlier page" in result.stderr
    assert pacs.origin.removeprefix("http://") in result.stderr
    assert len(log) == 2, log.describe()
    no_credentials_elsewhere(log, pacs)


def test_qido_endless_distinct_pages_are_bounded(log: RequestLog, pacs: HostileServer) -> None:
    """New results on every page (no repeat to notice): the result bound stops it."""
    pacs.route("GET", "/dicom-web/studies", hostile.qido_endless(distinct=True))
    with DicomwebClient(pacs.url("/dicom-web"), retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(DicomwebError, match=f"more than {QIDO_MAX_RESULTS}") as raised:
            find_studies(client, StudyQuery())
    assert pacs.origin.removeprefix("http://") in str(raised.value)
    assert len(log) == QIDO_MAX_RESULTS // QIDO_PAGE + 1, log.describe()


def test_qido_paging_memory_follows_one_page(log: RequestLog, pacs: HostileServer) -> None:
    """Only the Study Instance UIDs are kept, each page is dropped once read: twenty pages of a
    thousand studies peak far below what holding their DICOM JSON would take. (tracemalloc
    slows the server thread too, hence a lower bound than the default.)"""
    pacs.route("GET", "/dicom-web/studies", hostile.qido_endless(distinct=True))
    pages = 20
    tracemalloc.start()
    try:
        with DicomwebClient(pacs.url("/dicom-web"), max_results=pages * QIDO_PAGE) as client:
            with pytest.raises(DicomwebError, match="narrow it"):
                find_studies(client, StudyQuery())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(log) == pages + 1
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_qido_pages_until_a_short_page(log: RequestLog, pacs: HostileServer) -> None:
    full = [hostile.qido_study(f"{STUDY_UID}.{i}") for i in range(QIDO_PAGE)]
    pacs.route(
        "GET",
        "/dicom-web/studies",
        hostile.sequence(
            hostile.json(full, content_type=DICOM_JSON),
            hostile.json([hostile.qido_study("1.2.3")], content_type=DICOM_JSON),
        ),
    )
    with DicomwebClient(pacs.url("/dicom-web")) as client:
        assert len(find_studies(client, StudyQuery())) == QIDO_PAGE + 1
    assert [r.query["offset"] for r in log] == [["0"], [str(QIDO_PAGE)]]


# --------------------------------------------------------------------------- logs (item 9)
def test_from_dicomweb_logs_hold_no_patient_identifiers(
    tmp_path: Path, log: RequestLog, pacs: HostileServer, caplog: pytest.LogCaptureFixture
) -> None:
    pacs.route("GET", "/dicom-web/studies", hostile.json([], content_type=DICOM_JSON))
    caplog.set_level(logging.DEBUG)
    for verbose in ("-v", "-vv"):
        args = _from_dicomweb(pacs, tmp_path, "--patient", PATIENT_ID, "--accession", ACCESSION)
        result = invoke([*args, verbose])
        assert result.exit_code == 4, result.output  # the query matched nothing (issue 11)
        for text in (caplog.text, result.output):
            assert PATIENT_ID not in text, text
            assert ACCESSION not in text, text
    assert log.requests()[0].query["PatientID"] == [PATIENT_ID]  # the query did carry it
    assert any("GET studies" in r.getMessage() for r in caplog.records)  # path only


def test_from_dicomweb_error_names_the_server_without_the_query(
    tmp_path: Path, pacs: HostileServer
) -> None:
    pacs.route("GET", "/dicom-web/studies", hostile.status(500, "boom"))
    result = invoke(_from_dicomweb(pacs, tmp_path, "--patient", PATIENT_ID))
    assert result.exit_code == 3, result.output
    assert pacs.origin.removeprefix("http://") in result.stderr
    assert PATIENT_ID not in result.output


@pytest.mark.parametrize(
    "page",
    [
        {"resourceType": "Bundle", "entry": {"resource": 1}, "link": 7},
        {"resourceType": "Bundle", "entry": ["x", {"resource": "x"}], "link": ["x"]},
        hostile.searchset(
            [{**hostile.imaging_study_resource("Endpoint/x"), "series": "x", "endpoint": ["x"]}]
        ),
        hostile.searchset([{**hostile.imaging_study_resource("#x"), "contained": {"id": "x"}}]),
    ],
    ids=["objects", "strings", "study", "contained"],
)
def test_verify_wrong_shapes_are_no_crash(fhir: HostileServer, page: dict[str, Any]) -> None:
    """A search page or ImagingStudy of the wrong shape reads as absent, never exit 70."""
    fhir.route("GET", "/ImagingStudy", hostile.json(page))
    result = invoke(verify_args(fhir))
    # Nothing usable was found, so nothing was checked: 4 (issue 11 item 17), not a crash.
    assert result.exit_code == 4, result.output
    assert "internal error" not in result.output
