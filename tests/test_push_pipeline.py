"""Push at the floor, the last steps (issue 19): new studies are created without reading first
(where the server declares conditional create), the journal's fsync runs beside the workers,
and a client of a plain http:// server reads no CA bundle. Each keeps push's guarantees: merge
safety (issue 10), "pushed" only once the journal line is on disk, TLS never unverified."""

from __future__ import annotations

import hashlib
import os
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirimg import jsonio
from fhirimg.http import ClientCredentialsAuth, FhirClient
from fhirimg.push import BundleResult, Journal, PushObserver, PushOptions, push_paths
from fhirimg.push.capability import conditional_create_types
from tests.conftest import search, study_bundle, write_bundle

REAL_FSYNC = os.fsync
ROOT = Path(__file__).resolve().parent.parent


class _Recording(httpx.BaseTransport):
    """The real server behind a transport that notes each request: (method, path?query)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.seen.append((request.method, request.url.path.rsplit("/", 1)[-1]))
        return self.inner.handle_request(request)

    def searches(self) -> int:
        return sum(1 for m, p in self.seen if m == "GET" and p == "ImagingStudy")

    def transactions(self) -> int:
        return sum(1 for m, _ in self.seen if m == "POST")


def _folder(root: Path, name: str, uids: list[int], instances: int) -> Path:
    folder = root / name
    for uid in uids:
        bundle, _ = study_bundle(f"2.25.{uid}", f"MRN{uid}", instances=instances)
        write_bundle(folder, f"study-{uid}", bundle, {})
    return folder


def _versions(base: str, study_id: str) -> int:
    history = httpx.get(f"{base}/ImagingStudy/{study_id}/_history").json()
    return len(history.get("entry") or [])


# --------------------------------------------------------------------------- create first


@pytest.mark.server
def test_new_studies_go_without_a_read_and_a_known_one_is_still_merged(
    clean_fhir: Any, tmp_path: Path
) -> None:
    base = clean_fhir.base_url
    first = _Recording()
    options = PushOptions(server=base, journal=tmp_path / "j1.jsonl", jobs=1)
    report = push_paths([_folder(tmp_path, "a", [1, 2, 3], 2)], options, transport=first)
    assert report.ok, report.to_json()
    assert [r.merge for r in report.results] == ["created"] * 3
    # metadata, then one transaction per bundle: no ImagingStudy search
    assert (first.searches(), first.transactions(), len(first.seen)) == (0, 3, 4)

    # Later conversions of studies 1-3 (a third instance each) and a new study 4. The first
    # bundle's create finds study 1 (the server writes nothing of it): it is read and merged,
    # and the rest of the run reads first, as a push did before.
    later = _Recording()
    options = PushOptions(server=base, journal=tmp_path / "j2.jsonl", jobs=1)
    report = push_paths([_folder(tmp_path, "b", [1, 2, 3, 4], 3)], options, transport=later)
    assert report.ok, report.to_json()
    assert [r.merge for r in report.results] == ["merged", "merged", "merged", "created"]
    assert [r.conflicts for r in report.results] == [0, 0, 0, 0]  # a found study is no conflict
    assert (later.searches(), later.transactions()) == (4, 1 + 4)
    studies = search(base, "ImagingStudy?_count=100")
    assert sorted(s["numberOfInstances"] for s in studies) == [3, 3, 3, 3]  # one each, merged
    first_study = next(s for s in studies if s["identifier"][0]["value"].endswith(".1"))
    assert _versions(base, first_study["id"]) == 2  # created, merged: the create wrote nothing


def _mock_server(
    conditional_create: bool, create_answers: list[str]
) -> tuple[httpx.MockTransport, list[str]]:
    """A FHIR server on a MockTransport: its CapabilityStatement (conditional create for
    ImagingStudy declared or not), no study for any search, and each transaction's ImagingStudy
    entry answered from ``create_answers`` in turn (``"412"``: the whole transaction refused)."""
    seen: list[str] = []
    answers = iter(create_answers)

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/r4").strip("/") or "[base]"
        seen.append(f"{request.method} {path}")
        if path == "metadata":
            resource = {"type": "ImagingStudy", "conditionalCreate": conditional_create}
            statement = {
                "resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
                "rest": [{"mode": "server", "resource": [resource]}],
            }  # fmt: skip
            return httpx.Response(200, json=statement)
        if request.method == "GET":
            return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
        entries = jsonio.loads(request.content)["entry"]
        study = next(a for a in answers) if any(
            e["resource"]["resourceType"] == "ImagingStudy" for e in entries
        ) else "201 Created"  # fmt: skip
        if study == "412":
            outcome = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "duplicate", "diagnostics": "2 matches"}]}  # fmt: skip
            return httpx.Response(412, json=outcome)
        statuses = [
            study if e["resource"]["resourceType"] == "ImagingStudy" else "201 Created"
            for e in entries
        ]
        response = {"resourceType": "Bundle", "type": "transaction-response",
                    "entry": [{"response": {"status": s}} for s in statuses]}  # fmt: skip
        return httpx.Response(200, json=response)

    return httpx.MockTransport(handler), seen


def test_without_declared_conditional_create_push_reads_first(tmp_path: Path) -> None:
    """A server that does not declare conditional create for ImagingStudy might ignore
    ``ifNoneExist`` and make a second study: read first there, as before."""
    folder = _folder(tmp_path, "a", [1, 2], 2)
    transport, seen = _mock_server(False, ["201 Created"] * 2)
    options = PushOptions(server="http://fhir.test/r4", use_journal=False, jobs=1)
    report = push_paths([folder], options, transport=transport)
    assert report.ok, report.to_json()
    assert seen == ["GET metadata"] + ["GET ImagingStudy", "POST [base]"] * 2
    # Without the capability check nothing is known of the server: read first too.
    transport, seen = _mock_server(True, ["201 Created"] * 2)
    unchecked = PushOptions(
        server="http://fhir.test/r4", use_journal=False, jobs=1, check_server=False
    )
    assert push_paths([folder], unchecked, transport=transport).ok
    assert seen == ["GET ImagingStudy", "POST [base]"] * 2


def test_a_create_refused_as_ambiguous_falls_back_to_reading(tmp_path: Path) -> None:
    """412 to the create (several studies match its ifNoneExist): the bundle is read like any
    other (and the run reads first from then on). A 409 stays a refusal, not retried
    (test_push_faults.py::test_4xx_is_not_retried)."""
    folder = _folder(tmp_path, "a", [1, 2], 2)
    transport, seen = _mock_server(True, ["412", "201 Created", "201 Created"])
    options = PushOptions(server="http://fhir.test/r4", use_journal=False, jobs=1)
    report = push_paths([folder], options, transport=transport)
    assert report.ok, report.to_json()
    assert seen == ["GET metadata", "POST [base]"] + ["GET ImagingStudy", "POST [base]"] * 2


def test_conditional_create_types_reads_only_server_declarations() -> None:
    statement = {
        "rest": [
            {"mode": "client", "resource": [{"type": "Patient", "conditionalCreate": True}]},
            {"mode": "server", "resource": [
                {"type": "ImagingStudy", "conditionalCreate": True},
                {"type": "Endpoint", "conditionalCreate": "true"},  # not a boolean: no
                {"type": "Media"}, None, {"conditionalCreate": True}]},
        ]
    }  # fmt: skip
    assert conditional_create_types(statement) == {"ImagingStudy"}
    assert conditional_create_types({"rest": [{"mode": "server", "resource": 3}]}) == set()


# --------------------------------------------------------------------------- the journal's fsync


class _Done(PushObserver):
    """Which bundles were reported pushed, and whether each line was on disk by then."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.advanced_count = 0
        self.durable: set[str] = set()
        self.early: list[str] = []
        self.pushed: list[str] = []
        self.lock = threading.Lock()
        self.all_sent = threading.Event()
        self.expected = 0

    def advanced(self, nbytes: int) -> None:
        with self.lock:
            self.advanced_count += 1
            if self.advanced_count >= self.expected:
                self.all_sent.set()

    def synced(self) -> None:
        with self.lock:
            for line in self.journal.read_bytes().splitlines():
                self.durable.add(jsonio.loads(line)["file"])

    def finished(self, result: BundleResult) -> None:
        with self.lock:
            if result.status == "pushed":
                self.pushed.append(result.file)
                if result.file not in self.durable:
                    self.early.append(result.file)


@pytest.mark.server
def test_workers_go_on_while_the_journal_fsync_is_pending(
    clean_fhir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first fsync hangs until every bundle has been sent: the workers (2 for 8 bundles)
    must not wait for it. No bundle is reported pushed before an fsync covered its line, and
    the fsync after the slow one covers all the lines written meanwhile."""
    n = 8
    folder = _folder(tmp_path, "a", list(range(1, n + 1)), 2)
    journal = tmp_path / "j.jsonl"
    observer = _Done(journal)
    observer.expected = n
    fsyncs: list[bool] = []

    def slow_first_fsync(fd: int) -> None:
        first = not fsyncs
        # Every bundle sent while the first fsync is pending, or a 20 s wait says they were not.
        fsyncs.append(observer.all_sent.wait(20) if first else True)
        REAL_FSYNC(fd)
        observer.synced()

    monkeypatch.setattr(os, "fsync", slow_first_fsync)
    options = PushOptions(server=clean_fhir.base_url, journal=journal, jobs=2)
    report = push_paths([folder], options, observer)
    assert report.ok, report.to_json()
    assert fsyncs[0] is True  # the workers went on during the first fsync
    assert len(fsyncs) <= 3  # the lines written meanwhile shared the next fsync
    assert observer.early == []  # never "pushed" before the line was on disk
    assert sorted(observer.pushed) == [f"study-{i}.json" for i in range(1, n + 1)]
    with Journal(journal) as reread:
        assert all(reread.bundle_done(report.server, _sha(folder / f)) for f in observer.pushed)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_written_line_counts_only_once_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        ticket = journal.write_bundle("http://s", "a", file="a.json", entries=1)
        assert path.read_bytes().count(b"\n") == 1  # written at once
        assert not journal.bundle_done("http://s", "a")  # not known to be on disk yet
        journal.commit(ticket)
        assert journal.bundle_done("http://s", "a")
        journal.write_bundle("http://s", "b", file="b.json", entries=1)
        synced: list[int] = []

        def counted(fd: int) -> None:
            synced.append(fd)
            REAL_FSYNC(fd)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "fsync", counted)
            journal.close()  # a run that stopped before committing: close makes it durable
        assert len(synced) == 1
        assert journal.bundle_done("http://s", "b")
    with Journal(path) as again:
        assert again.bundle_done("http://s", "b")


# --------------------------------------------------------------------------- TLS only when used


def test_a_plain_http_client_reads_no_ca_bundle_and_trusts_nothing() -> None:
    plain = FhirClient("http://127.0.0.1:8080/fhir")
    assert plain.tls_context.cert_store_stats()["x509_ca"] == 0
    # Never unverified: a TLS connection it might make would have to verify, and trusts no CA.
    assert plain.tls_context.verify_mode == ssl.CERT_REQUIRED
    assert plain.tls_context.check_hostname
    tls = FhirClient("https://fhir.example/r4")
    assert tls.tls_context.cert_store_stats()["x509_ca"] > 0
    # An https token URL beside an http server: its TLS is verified with the CAs as always.
    oauth = ClientCredentialsAuth("https://auth.example/token", "id", "secret")
    with_token = FhirClient("http://127.0.0.1:8080/fhir", auth=oauth)
    assert with_token.tls_context.cert_store_stats()["x509_ca"] > 0
    for client in (plain, tls, with_token):
        client.close()


# --------------------------------------------------------------------------- start-up


def test_push_json_imports_neither_package_metadata_nor_toml(tmp_path: Path) -> None:
    """``fhirimg push --json`` (here: a folder without bundles, exit 4, no request) gives its
    version from fhirimg._version, without importlib.metadata, and reads no TOML without a
    config file; the version is pyproject's."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['fhirimg', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('fhirimg', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "loaded = [m for m in ('importlib.metadata', 'tomllib') if m in sys.modules]\n"
        "sys.stderr.write(f'{code} {loaded}')\n"
    )
    args = ["push", str(tmp_path), "--server", "http://127.0.0.1:9/fhir", "--json", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FHIRIMG_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, env=env, cwd=tmp_path, check=False
    )
    assert done.stderr.decode().splitlines()[-1] == "4 []"
    with (ROOT / "pyproject.toml").open("rb") as fh:
        version = tomllib.load(fh)["project"]["version"]
    assert jsonio.loads(done.stdout)["fhirimg"] == version == metadata.version("fhirimg")


# --------------------------------------------------------------------------- discovery


def test_only_a_bundle_that_may_link_binaries_is_walked_for_them(tmp_path: Path) -> None:
    """Discovery walks a study's instances for instance-binary extensions only when the bytes
    may hold one: written as is, or with \\u escapes (which the walk must still find)."""
    from fhirimg.push.files import BundleFile, iter_discover

    plain, _ = study_bundle("2.25.1", "MRN1", instances=3)
    write_bundle(tmp_path, "a-plain", plain, {})
    linked, binaries = study_bundle("2.25.2", "MRN2", instances=2, binary_files=True)
    write_bundle(tmp_path, "b-linked", linked, binaries)
    escaped_path = write_bundle(tmp_path, "c-escaped", linked, binaries)
    text = escaped_path.read_bytes().replace(b"instance-binary", b"\\u0069nstance-binary")
    escaped_path.write_bytes(text)
    found = {f.path.name: f for f in iter_discover([tmp_path]) if isinstance(f, BundleFile)}
    assert found["a-plain.json"].binaries == ()
    assert {i for i, _ in found["b-linked.json"].binaries} == set(binaries)
    assert {i for i, _ in found["c-escaped.json"].binaries} == set(binaries)


@pytest.mark.server
def test_fsyncs_are_spaced_while_bundles_fly_and_the_last_does_not_wait(
    clean_fhir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync per SYNC_INTERVAL at most while bundles are in flight (here 5 s: the first
    bundle's at once, then one for all the others), and none waits once the run is done."""
    from fhirimg.push import run

    monkeypatch.setattr(run, "SYNC_INTERVAL", 5.0)
    starts: list[float] = []

    def timed_fsync(fd: int) -> None:
        starts.append(time.monotonic())
        REAL_FSYNC(fd)

    monkeypatch.setattr(os, "fsync", timed_fsync)
    folder = _folder(tmp_path, "a", [1, 2, 3, 4], 2)
    options = PushOptions(server=clean_fhir.base_url, journal=tmp_path / "j.jsonl", jobs=1)
    began = time.monotonic()
    report = push_paths([folder], options)
    took = time.monotonic() - began
    assert report.pushed == 4, report.to_json()
    assert len(starts) == 2  # the first bundle's, then the other three's at the end
    assert took < 4.0  # the last fsync did not wait out the 5 s
