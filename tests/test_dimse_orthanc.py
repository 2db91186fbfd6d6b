"""``convert --from-pacs``: DIMSE against a real Orthanc (its DICOM port), compared with files.

Run inside a private network namespace:
    tools/run-in-netns.sh .venv/bin/python -m pytest tests/test_dimse_orthanc.py -q
Skipped outside one, failed instead when FHIRIMG_REQUIRE_DICOMWEB=1.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from fhirimg.cli import app
from fhirimg.convert import ConvertOptions, convert
from fhirimg.dicomweb import StudyQuery
from fhirimg.dimse import PacsAddress
from fhirimg.dimse.records import convert_from_pacs, find_studies
from fhirimg.dimse.scu import DimseClient
from fhirimg.model import InstanceRecord
from fhirimg.scan import read_file
from tests.helpers import SAMPLE, bundles, load, orthanc_or_skip, resources
from tests.servers.orthanc_server import OrthancServer

pytestmark = pytest.mark.dicomweb
runner = CliRunner()


def upload(orthanc: OrthancServer, files: list[Path]) -> None:
    """Store files in Orthanc through its REST API (the bytes as they are)."""
    with orthanc.client() as c:
        for path in files:
            assert c.post("/instances", content=path.read_bytes()).status_code == 200, path


def source_files(out: Path) -> dict[str, Path]:
    """SOP Instance UID -> source file, of a file conversion's report.json."""
    found = {}
    for item in load(out / "report.json")["files"]:
        if item["status"] == "converted":
            rec = read_file(item["path"])
            assert isinstance(rec, InstanceRecord)
            found[rec.sop_instance_uid] = Path(item["path"])
    return found


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_or_skip(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def converted(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample data converted from files, every converted file stored in Orthanc."""
    out = tmp_path_factory.mktemp("from-files")
    convert([SAMPLE], ConvertOptions(out_dir=out, jobs=1))
    upload(orthanc, sorted(source_files(out).values()))
    return out


def _key_entries(bundle: dict[str, Any]) -> dict[str, Any]:
    return {
        e["resource"]["resourceType"]: e
        for e in bundle["entry"]
        if e["resource"]["resourceType"] in ("Patient", "Endpoint", "ImagingStudy")
    }


def _assert_same(got: Any, want: Any, where: str) -> None:
    """Equal, or an assertion naming the first differing path (bundles are large)."""
    if isinstance(want, dict) and isinstance(got, dict):
        assert sorted(got) == sorted(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert got == want, where


def _client(orthanc: OrthancServer, **kwargs: Any) -> DimseClient:
    return DimseClient(PacsAddress.parse(orthanc.pacs_address), **kwargs)


def test_conversion_over_dimse_equals_conversion_of_files(
    orthanc: OrthancServer, converted: Path, tmp_path: Path
) -> None:
    events: list[tuple[str, int, int | None]] = []
    report = convert_from_pacs(
        _client(orthanc),
        StudyQuery(),
        ConvertOptions(out_dir=tmp_path, jobs=1),
        lambda *event: events.append(event),
    )
    assert report.exit_code == 0, report.summary()
    assert [e for e in events if e[0] == "read"] == [("read", 1, 5)] * 5  # studies queried
    from_files, from_pacs = bundles(converted), bundles(tmp_path)
    assert sorted(from_pacs) == sorted(from_files)
    for name, bundle in from_files.items():
        _assert_same(_key_entries(from_pacs[name]), _key_entries(bundle), name)
    paths = [f["path"] for f in load(tmp_path / "report.json")["files"]]
    assert len(paths) == 20
    assert all(p.startswith(f"dicom://{orthanc.pacs_address}/studies/") for p in paths)


def test_series_by_series_when_relational_queries_are_refused(
    orthanc: OrthancServer, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PACS that answers only hierarchical queries (fault injected: instance level without a
    Series Instance UID fails) gets series level, then instance level per series."""
    from fhirimg.errors import DimseError

    real_find = DimseClient.find
    asked: list[str] = []

    def hierarchical(self: DimseClient, identifier: Any) -> Iterator[Any]:
        level = identifier.QueryRetrieveLevel
        asked.append(level)
        if level == "IMAGE" and not identifier.SeriesInstanceUID:
            raise DimseError("status 0xC000 (fault injected)")
        return real_find(self, identifier)

    monkeypatch.setattr(DimseClient, "find", hierarchical)
    report = convert_from_pacs(
        _client(orthanc), StudyQuery(), ConvertOptions(out_dir=tmp_path, jobs=1)
    )
    assert report.exit_code == 0, report.summary()
    assert "SERIES" in asked
    from_files, from_pacs = bundles(converted), bundles(tmp_path)
    for name, bundle in from_files.items():
        assert _key_entries(from_pacs[name]) == _key_entries(bundle), name


def test_query_options_select_studies(orthanc: OrthancServer, converted: Path) -> None:
    client = _client(orthanc)
    every = find_studies(client, StudyQuery())
    assert len(every) == 5
    assert find_studies(client, StudyQuery(study_uids=(every[0], "1.2.3.999"))) == [every[0]]
    assert find_studies(client, StudyQuery(since="2999-01-01")) == []
    assert find_studies(client, StudyQuery(modality="CT"))
    assert len(find_studies(client, StudyQuery(modality="CT"))) < 5


def _binaries(out: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the bytes of its inline Binary, over every bundle of ``out``."""
    found: dict[str, bytes] = {}
    for bundle in bundles(out).values():
        study = resources(bundle, "ImagingStudy")[0]
        by_ref = {
            e["fullUrl"]: base64.b64decode(e["resource"]["data"])
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Binary"
        }
        for series in study["series"]:
            for instance in series["instance"]:
                refs = [
                    e["valueReference"]["reference"]
                    for e in instance.get("extension", [])
                    if "valueReference" in e
                ]
                assert len(refs) == 1, instance
                found[instance["uid"]] = by_ref[refs[0]]
    return found


def _dataset_part(data: bytes) -> bytes:
    """The bytes after the File Meta Information group (PS3.10 7.1: preamble, DICM, group 2)."""
    import struct

    assert data[128:132] == b"DICM"
    pos = 132
    # (0002,0000) File Meta Information Group Length, explicit VR UL
    assert data[pos : pos + 6] == b"\x02\x00\x00\x00UL"
    (length,) = struct.unpack("<I", data[pos + 8 : pos + 12])
    return data[pos + 12 + length :]


@pytest.mark.parametrize("how", ["c-get", "c-move"])
def test_binary_inline_over_dimse_has_the_sources_bytes(
    orthanc: OrthancServer, converted: Path, tmp_path: Path, how: str
) -> None:
    """``--binary inline`` over C-GET (default) and C-MOVE: each Binary holds the instance's
    dataset exactly as its source file has it; the File Meta group is the receiver's own (PS3.10
    7.1), so it is compared apart: same SOP Class, SOP Instance and Transfer Syntax UIDs."""
    import pydicom

    args = ["convert", "--from-pacs", orthanc.pacs_address, "-o", str(tmp_path / "out")]
    args += ["--binary", "inline", "-q", "-j", "1"]
    if how == "c-move":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        orthanc.add_modality("fhirimg", "FHIRIMGMOVE", port)
        args += ["--move-dest", "FHIRIMGMOVE", "--move-port", str(port)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    sources = source_files(converted)
    got = _binaries(tmp_path / "out")
    assert sorted(got) == sorted(sources)
    for uid, data in got.items():
        source = sources[uid].read_bytes()
        if source[128:132] == b"DICM":
            assert _dataset_part(data) == _dataset_part(source), sources[uid].name
            meta, source_meta = (
                pydicom.dcmread(__import__("io").BytesIO(b)).file_meta for b in (data, source)
            )
            for keyword in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
                assert meta[keyword].value == source_meta[keyword].value
            assert meta.TransferSyntaxUID == source_meta.TransferSyntaxUID, sources[uid].name
        else:  # a bare dataset (no meta): Orthanc stored it as implicit VR little endian
            assert data.endswith(source[-1024:]), sources[uid].name
    # the temporary storage is gone once the run ends
    assert not list((tmp_path / "out" / ".fhirimg").glob("fetch-*"))


def test_pacs_down_exits_3_within_seconds(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    started = time.monotonic()
    result = runner.invoke(
        app, ["convert", "--from-pacs", f"PACS@127.0.0.1:{port}", "-o", str(tmp_path), "-q"]
    )
    assert result.exit_code == 3, result.output
    assert time.monotonic() - started < 5
    assert f"PACS@127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from-pacs", "nope"], "not AET@HOST:PORT"),
        (["--from-pacs", "A@h:1", "--calling-aet", "X" * 17], "longer than 16"),
        (["--move-dest", "X"], "--move-dest needs --from-pacs"),
        (["--from-pacs", "A@h:1", "--from-dicomweb", "http://h/dw"], "only one"),
        (["--from-pacs", "A@h:1", "--qido", "NoSuchKeyword=1"], "not a DICOM keyword"),
    ],
)
def test_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert", *args, "-o", str(tmp_path), "-q"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_cli_convert_from_pacs_json(
    orthanc: OrthancServer, converted: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app,
        ["convert", "--from-pacs", orthanc.pacs_address, "-o", str(tmp_path), "--json", "-q"],
    )
    assert result.exit_code == 0, result.output
    summary = httpx.Response(200, content=result.stdout).json()["summary"]
    assert summary["files"]["converted"] == 20
    assert summary["studies"]["written"] == 5


def test_from_dicomweb_binary_and_media_equal_file_conversion(
    orthanc: OrthancServer, converted: Path, tmp_path: Path
) -> None:
    """``--from-dicomweb --binary inline --media``: the instances come by WADO-RS (streamed), and
    the Binary bytes and rendered images are those of a file conversion."""
    files, web = tmp_path / "files", tmp_path / "web"
    common = ["--binary", "inline", "--media", "-q", "-j", "1"]
    result = runner.invoke(app, ["convert", str(SAMPLE), "-o", str(files), *common])
    assert result.exit_code == 1, result.output  # the sample data's truncated file, on purpose
    result = runner.invoke(
        app, ["convert", "--from-dicomweb", orthanc.dicomweb_url, "-o", str(web), *common]
    )
    assert result.exit_code == 0, result.output
    from_files, from_web = _binaries(files), _binaries(web)
    assert len(from_web) == 20
    assert from_web == from_files  # byte for byte: WADO-RS gives the stored Part 10 files

    def images(out: Path) -> dict[str, str]:
        found = {}
        for bundle in bundles(out).values():
            for media in resources(bundle, "Media"):
                found[media["identifier"][0]["value"]] = media["content"]["data"]
        return found

    assert images(web) == images(files)
    assert len(images(web)) >= 10
    assert not list((web / ".fhirimg").glob("fetch-*"))


def test_verify_against_the_pacs_over_dimse(
    orthanc: OrthancServer, converted: Path, tmp_path: Path
) -> None:
    """``verify --pacs``: the bundles agree with Orthanc; an instance deleted from it is
    reported missing (exit 1), and a PACS that is down exits 3."""
    result = runner.invoke(
        app, ["verify", str(converted), "--pacs", orthanc.pacs_address, "--json"]
    )
    assert result.exit_code == 0, result.output
    report = httpx.Response(200, content=result.stdout).json()["summary"]
    assert (report["checked"], report["differing"]) == (5, 0)
    victim_sop, victim = sorted(source_files(converted).items())[0]
    with orthanc.client() as c:
        hits = c.post("/tools/lookup", content=victim_sop).json()
        instance_id = next(h["ID"] for h in hits if h["Type"] == "Instance")
        assert c.delete(f"/instances/{instance_id}").status_code == 200
    try:
        result = runner.invoke(
            app, ["verify", str(converted), "--pacs", orthanc.pacs_address, "--json", "-q"]
        )
        assert result.exit_code == 1, result.output
        report = httpx.Response(200, content=result.stdout).json()["summary"]
        missing = [m["instance"] for s in report["studies"] for m in s["missingInPacs"]]
        assert missing == [victim_sop]
    finally:
        upload(orthanc, [victim])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["verify", str(converted), "--pacs", f"P@127.0.0.1:{port}"])
    assert result.exit_code == 3, result.output
    assert f"P@127.0.0.1:{port}" in result.output
