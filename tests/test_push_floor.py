"""Streaming discovery (issue 19): each folder listed once, each file read once and recognised
from its head when it is plainly no bundle, each bundle parsed once and pushed while the rest
are still unread, and still every file accounted for and nothing sent for an empty folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirimg import jsonio
from fhirimg.errors import PushError
from fhirimg.http import HttpClient
from fhirimg.push import BundleResult, PushObserver, PushOptions, push_paths
from fhirimg.push.files import HEAD_BYTES, BundleFile, Ignored, iter_discover, list_inputs
from tests.conftest import MakeFolder, count, study_bundle, write_bundle
from tests.servers.faultproxy import FaultProxy

_TX = {"resourceType": "Bundle", "type": "transaction"}


class _Reads:
    """Fault injection on ``Path.open`` (binary reads): which files were opened, how many bytes
    were read of each, in order; and on ``jsonio.loads``: the size of every text parsed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[str] = []
        self.read: dict[str, int] = {}
        self.parsed: list[int] = []
        self.lock = threading.Lock()
        real_open, real_loads = Path.open, jsonio.loads
        reads = self

        class Counting:
            def __init__(self, path: Path, fh: Any) -> None:
                self.name, self.fh = path.name, fh

            def __enter__(self) -> Counting:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def read(self, n: int = -1) -> bytes:
                data: bytes = self.fh.read(n)
                with reads.lock:
                    reads.read[self.name] = reads.read.get(self.name, 0) + len(data)
                return data

            def __iter__(self) -> Any:
                return iter(self.fh)

        def counting_open(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real_open(path, mode, *args, **kwargs)
            if mode != "rb":
                return fh
            with reads.lock:
                reads.opened.append(path.name)
            return Counting(path, fh)

        def counting_loads(data: bytes | str) -> Any:
            with reads.lock:
                reads.parsed.append(len(data))
            return real_loads(data)

        monkeypatch.setattr(Path, "open", counting_open)
        monkeypatch.setattr(jsonio, "loads", counting_loads)


def _garbage_after_head(head: dict[str, Any], size: int = 256 * 1024) -> bytes:
    """JSON whose first bytes say what it is and whose rest is not JSON at all: a full parse
    would fail, so a reason other than "not a readable JSON object" proves there was none."""
    start = jsonio.dumps(head).rstrip().removesuffix(b"}") + b', "more": ['
    return start + b"\x00 not json " * (size // 11)


def test_report_and_other_json_are_recognised_from_their_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, _ = study_bundle("2.25.7", "MRN7", instances=3)
    write_bundle(tmp_path, "study", bundle, {})
    odd: dict[str, dict[str, Any]] = {
        "report.json": {"fhirVersion": "4.0.1", "summary": {"files": 3}},
        "patient.json": {"resourceType": "Patient", "id": "p1"},
        "search.json": {"resourceType": "Bundle", "type": "searchset"},
    }
    for name, head in odd.items():
        (tmp_path / name).write_bytes(_garbage_after_head(head))
    reads = _Reads(monkeypatch)
    found = list(iter_discover([tmp_path]))

    assert {Path(i.file).name: i.reason for i in found if isinstance(i, Ignored)} == {
        "report.json": "fhirimg convert's report, not a FHIR Bundle",
        "patient.json": "resourceType is 'Patient', not Bundle",
        "search.json": "Bundle of type 'searchset', not a transaction",
    }
    assert all(reads.read[name] <= HEAD_BYTES for name in odd)  # 256 KiB each: the head only
    bundles = [f for f in found if isinstance(f, BundleFile)]
    assert [(f.path.name, f.problem) for f in bundles] == [("study.json", None)]
    data = (tmp_path / "study.json").read_bytes()
    assert bundles[0].data == data  # read once, handed on with its bytes
    assert bundles[0].bundle == bundle  # and parsed once, here
    assert [n for n in reads.parsed if n > 64] == [len(data)]  # no other file parsed


def test_the_head_reads_top_level_members_only(tmp_path: Path) -> None:
    """A bundle whose first member holds a Patient is a bundle; a nested ``resourceType`` or a
    ``type`` inside a string never decides."""
    bundle, _ = study_bundle("2.25.8", "MRN8", instances=2)
    reordered = {"entry": bundle["entry"], "type": "transaction", "resourceType": "Bundle"}
    (tmp_path / "a-reordered.json").write_bytes(jsonio.dumps(reordered))
    tricky = {"id": 'x", "resourceType": "Patient', **bundle}
    (tmp_path / "b-tricky.json").write_bytes(jsonio.dumps(tricky))
    found = list(iter_discover([tmp_path]))
    assert [(type(f).__name__, getattr(f, "problem", "")) for f in found] == [
        ("BundleFile", None),
        ("BundleFile", None),
    ]


def test_part_files_come_from_one_listing_of_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        bundle, _ = study_bundle(f"2.25.{20 + i}", "MRN1", instances=2)
        write_bundle(tmp_path, f"study-{i}", bundle, {})
    piece = jsonio.dumps({**_TX, "entry": []})
    for n in (2, 10, 3):  # numbered, not sorted by name: part-10 comes last
        (tmp_path / f"study-1.part-{n}.json").write_bytes(piece)
    (tmp_path / "lonely.part-2.json").write_bytes(piece)  # no lonely.json: a file of its own
    os.link(tmp_path / "study-2.json", tmp_path / "study-3.json")  # a hard link: its own file
    (tmp_path / "study-4.json").symlink_to(tmp_path / "study-0.json")  # a symbolic one: the same
    (tmp_path / "study-1.binaries").mkdir()
    (tmp_path / "study-1.binaries" / "b1.dcm").write_bytes(b"x" * 100)
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        listed.append(Path(path).name)
        return real_scandir(path)

    def no_glob(self: Path, pattern: str) -> Any:
        raise AssertionError(f"glob {pattern} in {self}")

    monkeypatch.setattr(os, "scandir", counting_scandir)
    monkeypatch.setattr(Path, "glob", no_glob)
    listing = list_inputs([tmp_path, tmp_path / "study-1.json"])  # one file given twice too
    assert listed == [tmp_path.name, "study-1.binaries"]  # the folder once, for the sizes
    names = [c.path.name for c in listing.candidates]
    assert names == [
        "lonely.part-2.json",
        "study-0.json",
        "study-1.json",
        "study-2.json",
        "study-3.json",
    ]
    parts = {c.path.name: [p.name for p in c.parts] for c in listing.candidates}
    assert parts["study-1.json"] == [f"study-1.part-{n}.json" for n in (2, 3, 10)]
    assert listing.bundles == 5
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    sizes = sum(p.stat().st_size for p in files)
    assert listing.total_bytes == sizes  # progress totals from the listing, nothing read


def test_discovery_reads_a_file_only_when_it_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        bundle, _ = study_bundle(f"2.25.{30 + i}", "MRN1", instances=2)
        write_bundle(tmp_path, f"study-{i}", bundle, {})
    reads = _Reads(monkeypatch)
    stream = iter_discover([tmp_path])
    first = next(stream)
    assert isinstance(first, BundleFile)
    assert first.path.name == "study-0.json"
    assert reads.opened == ["study-0.json"]  # the others are still unread: the push can start


ODD_ENTRIES = {
    "number": (5, "Bundle.entry is a number, not an array"),
    "object": ({"resource": {}}, "Bundle.entry is an object, not an array"),
    "scalars": ([1, "x"], "Bundle.entry[0] is a number, not an object"),
    "null": ([None], "Bundle.entry[0] is null, not an object"),
    "nested-list": ([[{"request": {}}]], "Bundle.entry[0] is an array, not an object"),
}


@pytest.mark.parametrize(("entry", "reason"), ODD_ENTRIES.values(), ids=ODD_ENTRIES)
def test_an_entry_that_is_no_list_of_objects_is_a_problem_not_an_exception(
    tmp_path: Path, entry: Any, reason: str
) -> None:
    (tmp_path / "odd.json").write_bytes(jsonio.dumps({**_TX, "entry": entry}))
    bundle, _ = study_bundle("2.25.40", "MRN1", instances=2)
    write_bundle(tmp_path, "good", bundle, {})
    found = [f for f in iter_discover([tmp_path]) if isinstance(f, BundleFile)]
    assert [(f.path.name, f.problem) for f in found] == [("good.json", None), ("odd.json", reason)]
    assert found[1].data is None  # nothing of a refused file is kept
    report = push_paths([tmp_path], PushOptions(server="http://127.0.0.1:9", dry_run=True))
    assert [(r.file, r.status, r.error) for r in report.results] == [
        ("good.json", "planned", None),
        ("odd.json", "failed", reason),
    ]
    assert report.exit_code == 1


def test_a_folder_without_a_bundle_sends_no_request(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_bytes(_garbage_after_head({"summary": {}}))
    (tmp_path / "patient.json").write_bytes(jsonio.dumps({"resourceType": "Patient"}))
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    report = push_paths(
        [tmp_path],
        PushOptions(server="http://fhir.test/r4"),
        transport=httpx.MockTransport(handler),
    )
    assert sent == []
    assert report.exit_code == 4
    assert sorted(Path(f).name for f, _ in report.ignored) == ["patient.json", "report.json"]


class _Recorder(PushObserver):
    def __init__(self) -> None:
        self.started_with: list[tuple[int, int]] = []
        self.results: list[BundleResult] = []
        self.lock = threading.Lock()

    def started(self, bundles: int, total_bytes: int) -> None:
        self.started_with.append((bundles, total_bytes))

    def finished(self, result: BundleResult) -> None:
        with self.lock:
            self.results.append(result)


@pytest.mark.server
def test_the_first_bundle_is_sent_before_the_folder_is_read(
    make_folder: MakeFolder, clean_fhir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Progress totals come from the listing before any file is read, and the first transaction
    goes out while most files are unread (``jobs`` in flight, as many read ahead)."""
    n, jobs = 12, 2
    folder = make_folder(n, binary_files=True, instances=2)
    reads = _Reads(monkeypatch)
    opened_at_first_post: list[int] = []
    real_request = HttpClient.request

    def recording_request(self: HttpClient, method: str, url: str, **kwargs: Any) -> Any:
        if method == "POST" and not opened_at_first_post:
            with reads.lock:
                opened_at_first_post.append(
                    sum(1 for name in reads.opened if name.startswith("study-"))
                )
        return real_request(self, method, url, **kwargs)

    monkeypatch.setattr(HttpClient, "request", recording_request)
    observer = _Recorder()
    options = PushOptions(server=clean_fhir.base_url, jobs=jobs, use_journal=False)
    report = push_paths([folder], options, observer)

    assert report.ok, report.to_json()
    assert report.pushed == n
    assert opened_at_first_post[0] <= 2 * jobs + 1
    bundles = sorted(folder.glob("study-*.json"))
    binaries = [p for b in folder.glob("*.binaries") for p in b.iterdir()]
    expected = sum(p.stat().st_size for p in [*bundles, *binaries])
    assert observer.started_with == [(n, expected)]  # exact from the listing: no correction
    assert reads.read["report.json"] <= HEAD_BYTES
    assert count(clean_fhir.base_url, "ImagingStudy") == n


def _r5(bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle with an R5 profile on its first resource: detected as R5 (fhirimg.fhir.detect
    decides by the first resource that tells)."""
    profile = "http://hl7.org/fhir/R5/StructureDefinition/Patient"
    bundle["entry"][0]["resource"]["meta"] = {"profile": [profile]}
    return bundle


@pytest.mark.server
def test_the_release_is_matched_before_the_first_bundle_goes(
    tmp_path: Path, clean_fhir: Any
) -> None:
    """The first files are of another release than the server's: discovery reads ahead to the
    first bundle of the server's release before anything is sent, the others are refused one
    by one; a folder holding only the other release sends nothing but the metadata read."""
    for i in range(2):
        write_bundle(tmp_path, f"a-r5-{i}", _r5(study_bundle(f"2.25.6{i}", "MRN1")[0]), {})
    for i in range(3):
        write_bundle(tmp_path, f"b-r4-{i}", study_bundle(f"2.25.7{i}", "MRN2")[0], {})
    options = PushOptions(server=clean_fhir.base_url, jobs=2, use_journal=False)
    report = push_paths([tmp_path], options)
    assert [(r.file, r.status) for r in report.results] == [
        ("a-r5-0.json", "failed"),
        ("a-r5-1.json", "failed"),
        ("b-r4-0.json", "pushed"),
        ("b-r4-1.json", "pushed"),
        ("b-r4-2.json", "pushed"),
    ]
    assert "FHIR R5 (5.0.0) bundle" in (report.results[0].error or "")
    assert count(clean_fhir.base_url, "ImagingStudy") == 3

    only_r5 = tmp_path / "r5"
    write_bundle(only_r5, "study", _r5(study_bundle("2.25.69", "MRN3")[0]), {})
    with FaultProxy(clean_fhir.base_url) as proxy:
        with pytest.raises(PushError, match="nothing was sent"):
            push_paths([only_r5], PushOptions(server=proxy.base_url, use_journal=False))
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in proxy.log] == [("GET", "metadata")]


@pytest.mark.server
def test_a_bundle_nothing_changes_goes_as_the_bytes_read(
    tmp_path: Path, clean_fhir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ImagingStudy to merge (Patient and Endpoint only): the file's bytes are the body."""
    bundle, _ = study_bundle("2.25.50", "MRN5", instances=1)
    bundle["entry"] = [
        e for e in bundle["entry"] if e["resource"]["resourceType"] != "ImagingStudy"
    ]
    path = tmp_path / "no-study.json"
    path.write_bytes(jsonio.dumps(bundle).replace(b"\n  ", b"\n    "))  # not fhirimg's layout
    bodies: list[bytes] = []
    real_request = HttpClient.request

    def recording_request(self: HttpClient, method: str, url: str, **kwargs: Any) -> Any:
        if method == "POST":
            bodies.append(kwargs["content"])
        return real_request(self, method, url, **kwargs)

    monkeypatch.setattr(HttpClient, "request", recording_request)
    report = push_paths([path], PushOptions(server=clean_fhir.base_url, use_journal=False))
    assert report.pushed == 1, report.to_json()
    assert bodies == [path.read_bytes()]
    assert count(clean_fhir.base_url, "Endpoint") == 1
