"""The DICOMweb path against a real Orthanc (DICOMweb plugin) and the strict FHIR test server.

Run inside a private network namespace:
    tools/run-in-netns.sh .venv/bin/python -m pytest tests/test_dicomweb_orthanc.py -q
Skipped outside one, failed instead when FHIRIMG_REQUIRE_DICOMWEB=1.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from fhirimg.convert import ConvertOptions, convert
from fhirimg.dicomweb import DicomwebClient, StudyQuery, convert_from_dicomweb, find_studies
from fhirimg.dicomweb import client as dicomweb_client
from fhirimg.dicomweb import store as dicomweb_store
from fhirimg.dicomweb.store import store_and_push, store_instances
from fhirimg.dicomweb.store_results import StoreOptions
from fhirimg.dicomweb.verify import VerifyOptions, verify_bundles, verify_server
from fhirimg.errors import AuthError
from fhirimg.http import BasicAuth, FhirClient, RetryPolicy
from fhirimg.mapping import MapOptions
from fhirimg.model import InstanceRecord
from fhirimg.push import PushOptions
from fhirimg.scan import read_file
from tests.helpers import SAMPLE, bundles, load, orthanc_or_skip, resources
from tests.servers.orthanc_server import OrthancServer

pytestmark = pytest.mark.dicomweb
FAST = RetryPolicy(max_attempts=2, backoff_base=0.05, jitter=False)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def converted(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data converted from files, with the PACS as Endpoint."""
    out = tmp_path_factory.mktemp("from-files")
    options = ConvertOptions(
        out_dir=out, jobs=1, mapping=MapOptions(dicomweb_url=orthanc.dicomweb_url)
    )
    convert([SAMPLE], options)
    return out


@pytest.fixture(scope="module")
def stored(orthanc: OrthancServer, converted: Path) -> Path:
    """``converted`` with every instance stored in Orthanc by fhirimg (STOW-RS)."""
    report = store_instances([converted], StoreOptions(orthanc.dicomweb_url, retry=FAST))
    assert report.ok, report.to_json()
    return converted


def _study_uids(out: Path) -> set[str]:
    return {
        resources(b, "ImagingStudy")[0]["identifier"][0]["value"].removeprefix("urn:oid:")
        for b in bundles(out).values()
    }


def _source_files(out: Path) -> dict[str, Path]:
    """SOP Instance UID -> source file, from report.json."""
    found = {}
    for item in load(out / "report.json")["files"]:
        if item["status"] == "converted":
            rec = read_file(item["path"])
            assert isinstance(rec, InstanceRecord)
            found[rec.sop_instance_uid] = Path(item["path"])
    return found


def _orthanc_id(orthanc: OrthancServer, sop_uid: str) -> str:
    with orthanc.client() as c:
        hits = c.post("/tools/lookup", content=sop_uid).json()
    return str(next(h["ID"] for h in hits if h["Type"] == "Instance"))


def test_store_every_instance_then_resume_from_journal(
    orthanc: OrthancServer, stored: Path
) -> None:
    total = sum(
        resources(b, "ImagingStudy")[0]["numberOfInstances"] for b in bundles(stored).values()
    )
    assert total == 20
    again = store_instances([stored], StoreOptions(orthanc.dicomweb_url, retry=FAST))
    assert again.ok
    assert (again.total("stored"), again.total("skipped")) == (0, total)
    assert again.requests == 1  # the reachability check only: no STOW-RS sent again


def test_qido_finds_every_study(orthanc: OrthancServer, stored: Path) -> None:
    with DicomwebClient(orthanc.dicomweb_url) as client:
        assert set(find_studies(client, StudyQuery())) == _study_uids(stored)


def test_wado_rs_returns_every_listed_instance_byte_identical(
    orthanc: OrthancServer, stored: Path
) -> None:
    sources = _source_files(stored)
    checked = 0
    with DicomwebClient(orthanc.dicomweb_url) as client:
        for bundle in bundles(stored).values():
            study = resources(bundle, "ImagingStudy")[0]
            study_uid = study["identifier"][0]["value"].removeprefix("urn:oid:")
            for series in study["series"]:
                for instance in series["instance"]:
                    data = client.retrieve_instance(study_uid, series["uid"], instance["uid"])
                    assert data == sources[instance["uid"]].read_bytes(), instance["uid"]
                    checked += 1
    assert checked == 20


def _key_entries(bundle: dict[str, Any]) -> dict[str, Any]:
    return {
        e["resource"]["resourceType"]: e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] in ("Patient", "Endpoint", "ImagingStudy")
    }


def test_conversion_from_pacs_equals_conversion_from_files(
    orthanc: OrthancServer, stored: Path, tmp_path: Path
) -> None:
    events: list[tuple[str, int, int | None]] = []
    with DicomwebClient(orthanc.dicomweb_url) as client:
        report = convert_from_dicomweb(
            client,
            StudyQuery(),
            ConvertOptions(out_dir=tmp_path, jobs=1),
            lambda *event: events.append(event),
        )
    assert report.exit_code == 0, report.summary()
    assert [e for e in events if e[0] == "read"] == [("read", 1, 5)] * 5  # studies read
    assert [e for e in events if e[0] == "write"] == [("write", 1, 5)] * 5
    from_files, from_pacs = bundles(stored), bundles(tmp_path)
    assert sorted(from_pacs) == sorted(from_files)
    for name, bundle in from_files.items():
        assert _key_entries(from_pacs[name]) == _key_entries(bundle), name
    paths = [f["path"] for f in load(tmp_path / "report.json")["files"]]
    assert len(paths) == 20
    assert all(p.startswith(orthanc.dicomweb_url + "/studies/") for p in paths)


def test_query_options_select_studies(orthanc: OrthancServer, stored: Path, tmp_path: Path) -> None:
    uid = sorted(_study_uids(stored))[0]
    with DicomwebClient(orthanc.dicomweb_url) as client:
        assert find_studies(client, StudyQuery(study_uids=(uid, "1.2.3.999"))) == [uid]
        assert find_studies(client, StudyQuery(since="2999-01-01")) == []
        everything = find_studies(client, StudyQuery(since="1900-01-01"))
        one = convert_from_dicomweb(
            client, StudyQuery(study_uids=(uid,)), ConvertOptions(out_dir=tmp_path, jobs=1)
        )
    assert set(everything) <= _study_uids(stored)
    assert [s.study_instance_uid for s in one.studies] == [uid]


def test_qido_wildcards_reach_the_server_unescaped(orthanc: OrthancServer, stored: Path) -> None:
    """'*' must go out as '*': Orthanc does not take %2A as a wildcard (PS3.18 8.3.4.6)."""
    with DicomwebClient(orthanc.dicomweb_url) as client:
        ct = find_studies(client, StudyQuery(filters=(("StudyDescription", "*CT*"),)))
        none = find_studies(client, StudyQuery(filters=(("StudyDescription", "*NO SUCH*"),)))
    assert ct  # the sample's CT study descriptions contain "CT"
    assert set(ct) <= _study_uids(stored)
    assert none == []


def _extra_instance(source: Path) -> bytes:
    """A copy of ``source`` with a new SOP Instance UID: same study, not in any ImagingStudy."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_verify_finds_deleted_and_unlisted_instances(orthanc: OrthancServer, stored: Path) -> None:
    clean = verify_bundles([stored])
    assert clean.ok, clean.to_json()
    assert len(clean.studies) == 5
    sources = _source_files(stored)
    victim_uid, victim = sorted(sources.items())[0]
    extra = _extra_instance(sorted(sources.values())[1])
    extra_uid = str(pydicom.dcmread(io.BytesIO(extra)).SOPInstanceUID)
    with orthanc.client() as c:
        assert c.delete(f"/instances/{_orthanc_id(orthanc, victim_uid)}").status_code == 200
    with DicomwebClient(orthanc.dicomweb_url) as client:
        assert client.store([extra]).failed == []
    try:
        report = verify_bundles([stored])
        assert not report.ok
        missing = [i for s in report.studies for _, i in s.missing_in_pacs]
        unlisted = [i for s in report.studies for _, i in s.missing_in_fhir]
        assert missing == [victim_uid]
        assert unlisted == [extra_uid]
    finally:
        with orthanc.client() as c:
            c.delete(f"/instances/{_orthanc_id(orthanc, extra_uid)}")
        with DicomwebClient(orthanc.dicomweb_url) as client:
            assert client.store([victim.read_bytes()]).failed == []
    assert verify_bundles([stored]).ok


def test_push_to_pacs_and_fhir_then_follow_endpoint_as_a_client(
    orthanc: OrthancServer, stored: Path, clean_fhir: Any
) -> None:
    events: list[tuple[str, int, int | None]] = []
    report = store_and_push(
        [stored],
        StoreOptions(orthanc.dicomweb_url, retry=FAST),
        PushOptions(server=clean_fhir.base_url, retry=FAST),
        progress=lambda *event: events.append(event),
    )
    assert report.ok, report.to_json()
    assert report.fhir is not None
    assert report.fhir.pushed == 5
    # Progress: every instance (here skipped: stored by the fixture), then every bundle.
    assert sum(n for stage, n, _ in events if stage == "store") == 20
    assert {total for stage, _, total in events if stage == "store"} == {20}
    assert [e for e in events if e[0] == "push"] == [("push", 1, 5)] * 5
    assert [e[0] for e in events] == ["store"] * (len(events) - 5) + ["push"] * 5

    # A client application: find the study in FHIR, follow its Endpoint, fetch one instance.
    sources = _source_files(stored)
    sop_uid = sorted(sources)[0]
    fhir = httpx.Client(headers={"Accept": "application/fhir+json"}, timeout=30)
    found = fhir.get(f"{clean_fhir.base_url}/ImagingStudy").json()
    study = next(
        e["resource"]
        for e in found["entry"]
        if any(i["uid"] == sop_uid for s in e["resource"]["series"] for i in s["instance"])
    )
    series_uid = next(
        s["uid"] for s in study["series"] if any(i["uid"] == sop_uid for i in s["instance"])
    )
    endpoint = fhir.get(f"{clean_fhir.base_url}/{study['endpoint'][0]['reference']}").json()
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    study_uid = study["identifier"][0]["value"].removeprefix("urn:oid:")
    url = f"{endpoint['address']}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    answer = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert answer.status_code == 200
    from fhirimg.dicomweb import decode_multipart

    parts = decode_multipart(answer.content, answer.headers["Content-Type"])
    assert parts[0][1] == sources[sop_uid].read_bytes()

    # verify over the FHIR server: consistent, then a deleted instance shows up.
    with FhirClient(clean_fhir.base_url, retry=FAST) as client:
        assert verify_server(client, VerifyOptions(retry=FAST)).ok
        with orthanc.client() as c:
            c.delete(f"/instances/{_orthanc_id(orthanc, sop_uid)}")
        try:
            report_after = verify_server(client, VerifyOptions(retry=FAST))
        finally:
            with DicomwebClient(orthanc.dicomweb_url) as dw:
                dw.store([sources[sop_uid].read_bytes()])
    assert [i for s in report_after.studies for _, i in s.missing_in_pacs] == [sop_uid]


def test_bundle_without_endpoint_is_stored_but_not_pushed(
    orthanc: OrthancServer, tmp_path: Path, clean_fhir: Any
) -> None:
    convert([SAMPLE / "study_b_mr"], ConvertOptions(out_dir=tmp_path, jobs=1))
    report = store_and_push(
        [tmp_path],
        StoreOptions(orthanc.dicomweb_url, retry=FAST),
        PushOptions(server=clean_fhir.base_url, retry=FAST),
    )
    assert report.store.ok
    assert report.fhir is None
    assert len(report.not_pushed) == 1
    assert "no dicom-wado-rs Endpoint" in report.not_pushed[0][1]
    assert not report.ok


def test_basic_auth(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(12)
    out = tmp_path / "out"
    with orthanc_or_skip(tmp_path / "orthanc", "fhirimg", password) as server:
        convert(
            [SAMPLE / "odd"],
            ConvertOptions(
                out_dir=out, jobs=1, mapping=MapOptions(dicomweb_url=server.dicomweb_url)
            ),
        )
        with pytest.raises(AuthError):
            store_instances([out], StoreOptions(server.dicomweb_url, retry=FAST, use_journal=False))
        auth = BasicAuth("fhirimg", password)
        report = store_instances([out], StoreOptions(server.dicomweb_url, auth=auth, retry=FAST))
        assert report.ok
        assert report.total("stored") == 2
        with DicomwebClient(server.dicomweb_url, auth=auth) as client:
            assert len(find_studies(client, StudyQuery())) == 1


def test_missing_source_falls_back_or_fails(orthanc: OrthancServer, tmp_path: Path) -> None:
    """A source file gone from its report.json path (and no Binary beside the bundle) is reported
    as failed, and the bundle is not pushable."""
    src = tmp_path / "src"
    src.mkdir()
    for f in (SAMPLE / "odd").iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    convert(
        [src],
        ConvertOptions(out_dir=out, jobs=1, mapping=MapOptions(dicomweb_url=orthanc.dicomweb_url)),
    )
    sorted(src.iterdir())[0].unlink()
    report = store_instances([out], StoreOptions(orthanc.dicomweb_url, retry=FAST))
    assert not report.ok
    assert report.total("stored") + report.total("skipped") == 1
    assert "source file not found" in report.studies[0].failed[0][1]


def test_streamed_store_is_byte_identical_with_a_boundary_clash(
    orthanc: OrthancServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """STOW-RS bodies are streamed from the files (in 1000-byte chunks here, so each file spans
    several); a file that holds the batch's boundary starts a batch with a new one; Orthanc gives
    every instance back byte-identical."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    # New UIDs: the module's Orthanc holds the sample already.
    study, series = generate_uid(), dict[str, str]()
    for i, f in enumerate(sorted((SAMPLE / "study_b_mr").iterdir())):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series.setdefault(ds.SeriesInstanceUID, generate_uid())
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if i == 1:
            ds.StudyDescription = "MR --fhirimg-clash"
        ds.save_as(src / f.name)
    convert(
        [src],
        ConvertOptions(out_dir=out, jobs=1, mapping=MapOptions(dicomweb_url=orthanc.dicomweb_url)),
    )
    monkeypatch.setattr(dicomweb_client, "CHUNK", 1000)
    boundaries = iter(["fhirimg-clash", "fhirimg-other"])
    monkeypatch.setattr(dicomweb_store, "new_boundary", lambda: next(boundaries))
    report = store_instances([out], StoreOptions(orthanc.dicomweb_url, retry=FAST))
    assert report.ok, report.to_json()
    assert report.total("stored") == 4
    assert report.requests == 3  # the reachability check, then [file 1], [files 2-4]
    with DicomwebClient(orthanc.dicomweb_url) as client:
        for path in src.iterdir():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            data = client.retrieve_instance(study, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert data == path.read_bytes(), path.name
