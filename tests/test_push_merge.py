"""Push merges, never replaces (issue 10 items 1 and 5), against the real FHIR test server.

Study A of the sample data arrives in pieces: its CT folder (series 2, 5 instances) and its
localizer folder (series 1, 1 instance) are separate folders, converted in separate runs. Each
test checks the server's ImagingStudy afterwards: the union, one Endpoint reference per source,
no duplicate Patient. Version conflicts are forced through a client whose ImagingStudy search lets
another writer in between the read and the write (:class:`HookedClient`), never left to chance.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg import jsonio
from fhirimg.cli import app
from fhirimg.convert import ConvertOptions, convert
from fhirimg.dicomweb.store import store_and_push
from fhirimg.dicomweb.store_results import StoreOptions
from fhirimg.http import FhirClient, RetryPolicy
from fhirimg.mapping import MapOptions
from fhirimg.push import PushOptions, push_bundle
from fhirimg.push.transaction import MERGE_ATTEMPTS
from tests.conftest import count, search
from tests.helpers import SAMPLE, bundles, orthanc_or_skip, resources
from tests.servers.orthanc_server import OrthancServer

pytestmark = pytest.mark.server

STUDY_A = "2.25.85155649098386921766494752360926339228"
LOCALIZER = "2.25.237230857875412936371788046942937139886"
AXIAL = "2.25.137196912647313919851362867594050943633"
STUDY_QUERY = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{STUDY_A}"
PACS_A = "http://pacs-a.example.org/dicom-web"
PACS_B = "http://pacs-b.example.org/dicom-web"
FAST = RetryPolicy(max_attempts=2, backoff_base=0.01, jitter=False)
CLI_FAST = ["--backoff", "0.01", "--retries", "2", "--quiet"]


def _convert(folder: Path, *parts: str, pacs: str | None = PACS_A) -> Path:
    options = ConvertOptions(out_dir=folder, jobs=1, mapping=MapOptions(dicomweb_url=pacs))
    convert([SAMPLE / p for p in parts], options)
    return folder


def _only_bundle(folder: Path) -> dict[str, Any]:
    (bundle,) = bundles(folder).values()
    return bundle


def _push_cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["push", *map(str, args)])


def _server_study(base: str) -> dict[str, Any]:
    (study,) = search(base, STUDY_QUERY)
    return study


def _instances(study: Mapping[str, Any]) -> dict[str, set[str]]:
    return {s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in study["series"]}


def _versions(base: str, study: Mapping[str, Any]) -> int:
    history = httpx.get(f"{base}/ImagingStudy/{study['id']}/_history").json()
    return len(history.get("entry") or [])


def _check_union(base: str) -> dict[str, Any]:
    """The server holds all of study A once: 2 series, 6 instances, counts consistent, one
    Patient, its Endpoint referenced once."""
    study = _server_study(base)
    assert {k: len(v) for k, v in _instances(study).items()} == {LOCALIZER: 1, AXIAL: 5}
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 6)
    assert [s["numberOfInstances"] for s in study["series"]] == [1, 5]
    assert count(base, "Patient") == 1
    refs = [e["reference"] for e in study.get("endpoint", [])]
    assert len(refs) == len(set(refs)) == count(base, "Endpoint")
    assert all(r.startswith("Endpoint/") for r in refs)
    return study


@pytest.fixture(scope="module")
def pieces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Study A converted three ways (all with PACS A as Endpoint): CT folder, localizer, both."""
    root = tmp_path_factory.mktemp("study-a")
    return {
        "ct": _convert(root / "ct", "study_a_ct"),
        "localizer": _convert(root / "localizer", "study_a_ct_localizer"),
        "all": _convert(root / "all", "study_a_ct", "study_a_ct_localizer"),
    }


class HookedClient(FhirClient):
    """A FhirClient that calls ``hook`` once, right after its first ImagingStudy search answered:
    another writer acts between this client's read and its write."""

    def __init__(self, base_url: str, hook: Callable[[], object]) -> None:
        super().__init__(base_url, retry=FAST)
        self._hook: Callable[[], object] | None = hook
        self.searches = 0

    def get_json(self, url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        answer = super().get_json(url, *args, **kwargs)
        if url.startswith("ImagingStudy?"):
            self.searches += 1
            hook, self._hook = self._hook, None
            if hook is not None:
                hook()
        return answer


def _push(client: FhirClient, bundle: dict[str, Any]) -> Any:
    result = push_bundle(client, bundle)
    assert result.status == "pushed", (result.error, result.issues)
    return result


# --------------------------------------------------------------------------- push, run after run


def test_late_series_then_old_bundle_again(clean_fhir: Any, pieces: dict[str, Path]) -> None:
    base = clean_fhir.base_url
    first = _push_cli(pieces["ct"], "--server", base, *CLI_FAST, "--json")
    assert first.exit_code == 0, first.output
    assert jsonio.loads(first.stdout)["summary"]["bundles"][0]["merge"] == "created"
    assert _server_study(base)["numberOfInstances"] == 5

    # The late localizer, converted and pushed in a second run: the union, not 1 instance.
    late = _push_cli(pieces["localizer"], "--server", base, *CLI_FAST, "--json")
    assert late.exit_code == 0, late.output
    assert jsonio.loads(late.stdout)["summary"]["bundles"][0]["merge"] == "merged"
    study = _check_union(base)
    assert study == jsonio.loads(jsonio.dumps(study))
    assert study["series"][0]["uid"] == LOCALIZER  # ordered by Series Number
    versions = _versions(base, study)

    # The old CT bundle pushed again (journal ignored): loses nothing, writes nothing.
    again = _push_cli(pieces["ct"], "--server", base, *CLI_FAST, "--json", "--force")
    assert again.exit_code == 0, again.output
    assert jsonio.loads(again.stdout)["summary"]["bundles"][0]["merge"] == "unchanged"
    assert _check_union(base) == study
    assert _versions(base, study) == versions

    # The whole study converted at once, pushed on top: the same study, nothing to change.
    whole = _push_cli(pieces["all"], "--server", base, *CLI_FAST, "--json")
    assert whole.exit_code == 0, whole.output
    assert jsonio.loads(whole.stdout)["summary"]["bundles"][0]["merge"] == "unchanged"
    assert _versions(base, study) == versions

    # A journaled bundle is still skipped, as before: the server holds a superset.
    skipped = _push_cli(pieces["localizer"], "--server", base, *CLI_FAST, "--json")
    assert jsonio.loads(skipped.stdout)["summary"]["bundles"][0]["status"] == "skipped"


def test_newer_values_win_and_nothing_is_rolled_back(
    clean_fhir: Any, pieces: dict[str, Path]
) -> None:
    base = clean_fhir.base_url
    with FhirClient(base, retry=FAST) as client:
        _push(client, _only_bundle(pieces["all"]))
        # A corrected re-conversion of the whole study: its values win.
        corrected = _only_bundle(pieces["all"])
        (study,) = resources(corrected, "ImagingStudy")
        study["description"] = "CT chest, corrected"
        _push(client, corrected)
        assert _server_study(base)["description"] == "CT chest, corrected"
        # The old CT-only bundle again: a proper subset, so older: it changes nothing.
        assert push_bundle(client, _only_bundle(pieces["ct"])).merge == "unchanged"
    assert _check_union(base)["description"] == "CT chest, corrected"


# --------------------------------------------------------------------------- forced conflicts


def test_conflict_on_the_versioned_write_is_re_merged(
    clean_fhir: Any, pieces: dict[str, Path]
) -> None:
    """The study exists; between our read and our ifMatch write another writer adds a note to
    it. The server refuses our write (412); we re-read, merge again and keep both."""
    base = clean_fhir.base_url
    with FhirClient(base, retry=FAST) as client:
        _push(client, _only_bundle(pieces["ct"]))

    def other_writer() -> None:
        study = _server_study(base)
        study["note"] = [{"text": "read by the other writer"}]
        answer = httpx.put(
            f"{base}/ImagingStudy/{study['id']}",
            json=study,
            headers={"Content-Type": "application/fhir+json"},
        )
        assert answer.status_code == 200, answer.text

    with HookedClient(base, other_writer) as client:
        result = _push(client, _only_bundle(pieces["localizer"]))
        assert (result.conflicts, result.merge, client.searches) == (1, "merged", 2)
    study = _check_union(base)
    assert study["note"] == [{"text": "read by the other writer"}]


def test_conflict_on_the_create_is_re_merged(clean_fhir: Any, pieces: dict[str, Path]) -> None:
    """No study yet; between our read and our conditional create another writer creates it.
    The server answers 200 instead of 201 to our create; we re-read, merge and write."""
    base = clean_fhir.base_url
    other = _only_bundle(pieces["ct"])

    def other_writer() -> None:
        with FhirClient(base, retry=FAST) as client:
            _push(client, other)

    with HookedClient(base, other_writer) as client:
        result = _push(client, _only_bundle(pieces["localizer"]))
        assert (result.conflicts, result.merge, client.searches) == (1, "merged", 2)
    _check_union(base)


def test_two_writers_at_once_end_with_the_union(clean_fhir: Any, pieces: dict[str, Path]) -> None:
    """Two threads, two clients, two halves of one study: both read (nothing) before either
    writes (a barrier), so one of them must meet the other's write, and both end merged."""
    base = clean_fhir.base_url
    barrier = threading.Barrier(2, timeout=30)
    results: dict[str, Any] = {}

    def writer(name: str) -> None:
        with HookedClient(base, barrier.wait) as client:
            results[name] = push_bundle(client, _only_bundle(pieces[name]))

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("ct", "localizer")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {n: r.status for n, r in results.items()} == {"ct": "pushed", "localizer": "pushed"}
    assert sorted(r.conflicts for r in results.values()) == [0, 1]
    _check_union(base)


def test_conflicts_that_never_end_fail_clearly(clean_fhir: Any, pieces: dict[str, Path]) -> None:
    base = clean_fhir.base_url
    with FhirClient(base, retry=FAST) as client:
        _push(client, _only_bundle(pieces["ct"]))

    class AlwaysLate(FhirClient):
        """Someone writes the study after every one of our reads."""

        def get_json(self, url: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
            answer = super().get_json(url, *args, **kwargs)
            if url.startswith("ImagingStudy?"):
                study = _server_study(base)
                study["description"] = f"v{study['meta']['versionId']}"
                httpx.put(
                    f"{base}/ImagingStudy/{study['id']}",
                    json=study,
                    headers={"Content-Type": "application/fhir+json"},
                ).raise_for_status()
            return answer

    with AlwaysLate(base, retry=FAST) as client:
        result = push_bundle(client, _only_bundle(pieces["localizer"]))
    assert result.status == "failed"
    assert result.conflicts == MERGE_ATTEMPTS
    assert result.http_status == 412
    assert f"each of {MERGE_ATTEMPTS} attempts" in str(result.error)
    assert _server_study(base)["numberOfInstances"] == 5  # nothing lost, nothing half-written


# --------------------------------------------------------------------------- the other paths


def test_convert_push_merges(clean_fhir: Any, tmp_path: Path) -> None:
    base = clean_fhir.base_url
    for n, folder in enumerate(("study_a_ct", "study_a_ct_localizer")):
        result = CliRunner().invoke(
            app,
            [
                "convert", str(SAMPLE / folder), "--out", str(tmp_path / str(n)),
                "--dicomweb-url", PACS_A, "--push", base, "--json", "-q",
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    _check_union(base)


def test_two_pacs_give_two_endpoints(clean_fhir: Any, tmp_path: Path) -> None:
    """Issue 10 item 5: the CT series from PACS A, the localizer from PACS B, then the whole
    study from PACS B too."""
    base = clean_fhir.base_url
    ct = _only_bundle(_convert(tmp_path / "a", "study_a_ct", pacs=PACS_A))
    localizer = _only_bundle(_convert(tmp_path / "b", "study_a_ct_localizer", pacs=PACS_B))
    with FhirClient(base, retry=FAST) as client:
        _push(client, ct)
        _push(client, localizer)
        study = _check_union(base)
        addresses = {
            httpx.get(f"{base}/{e['reference']}").json()["address"]: e["reference"]
            for e in study["endpoint"]
        }
        assert set(addresses) == {PACS_A, PACS_B}
        where = {s["uid"]: s.get("endpoint") for s in study["series"]}
        assert where == {
            AXIAL: [{"reference": addresses[PACS_A]}],
            LOCALIZER: [{"reference": addresses[PACS_B]}],
        }
        # PACS B receives the CT series too: it then lives at both.
        _push(client, _only_bundle(_convert(tmp_path / "b2", "study_a_ct", pacs=PACS_B)))
    study = _check_union(base)
    where = {s["uid"]: s.get("endpoint") for s in study["series"]}
    assert where[AXIAL] == [{"reference": addresses[PACS_A]}, {"reference": addresses[PACS_B]}]
    assert where[LOCALIZER] == [{"reference": addresses[PACS_B]}]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.mark.dicomweb
def test_push_dicomweb_merges(clean_fhir: Any, orthanc: OrthancServer, tmp_path: Path) -> None:
    base = clean_fhir.base_url
    for name, folder in (("ct", "study_a_ct"), ("localizer", "study_a_ct_localizer")):
        converted = _convert(tmp_path / name, folder, pacs=orthanc.dicomweb_url)
        report = store_and_push(
            [converted],
            StoreOptions(orthanc.dicomweb_url, retry=FAST),
            PushOptions(server=base, retry=FAST),
        )
        assert report.ok, report.to_json()
    study = _check_union(base)
    assert len(study["endpoint"]) == 1
    assert all("endpoint" not in s for s in study["series"])
